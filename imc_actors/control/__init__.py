"""Management interfaces (spec §10): MI FIFO, JSON-RPC over HTTP, metrics, status page, CLI.

- :mod:`.views`: the read-only room views every interface shares (counts, owner, lookup).
- :mod:`.fifo`: OpenSER's MI FIFO text protocol (:class:`~.fifo.FifoServer`).
- :mod:`.jsonrpc`: JSON-RPC 2.0 dispatch (``imc.list_rooms``, ``imc.list_members``).
- :mod:`.http`: the HTTP listener (Hypercorn + Starlette): ``/RPC``, ``/metrics``, ``/``.
- :mod:`.metrics`: Prometheus collectors reading ``statistics()`` records at scrape time.
- :mod:`.client`: the CLI client (stdlib urllib) and its exit codes.
- :mod:`.logs`: text and JSON log formats.
- :mod:`.listen`: ``rpc_listen`` parsing and the URLs that reach it.
- :mod:`.access`: who may use the HTTP listener (``rpc_token``, ``rpc_hosts``, ``Host``,
  ``Origin`` and ``Content-Type`` checks).

Nothing is imported here, so the CLI client does not load the HTTP server's dependencies.
"""
