"""Benchmarks of imc-actors against Kamailio's imc module (``python -m bench``).

Not tests: nothing here runs under pytest or CI. See bench/RESULTS.md and the README's
"Benchmarks" section.
"""
