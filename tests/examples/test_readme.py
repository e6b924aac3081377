"""Every Python snippet in README.md runs as shown (each in a fresh directory)."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import trio

from .loader import ROOT, user_env

README = ROOT / "README.md"
BLOCK = re.compile(r"^```python\n(.*?)^```", re.MULTILINE | re.DOTALL)

#: What each snippet prints (in README order), or for a test module what pytest reports.
EXPECTED = [
    ("Embedding in a Trio app", [r"sip:alice@example.com \*\*\* Room was created", r"200 \['sip:chat@example.com'\]"]),
    ("Embedding in a Trio app", [r"b'\*\*\* \[bob\] has joined the room'", r"\['sip:alice@example.com', 'sip:bob@example.com'\] 0"]),
    ("Embedding in a Trio app", [r"SIP on udp:127\.0\.0\.1:[1-9]\d*"]),
    ("asyncio", [r"b'\*\*\* Room was created'", r"^200$"]),
    ("Fault injection", [r"\b1 passed\b"]),
]


def snippets() -> list[tuple[str, str]]:
    """``(section, code)`` for every ```python block of the README."""
    text = README.read_text()
    found = []
    for match in BLOCK.finditer(text):
        headings = re.findall(r"^## (.+)$", text[: match.start()], re.MULTILINE)
        found.append((headings[-1], match.group(1)))
    return found


def test_every_snippet_is_checked():
    assert [section for section, _ in snippets()] == [section for section, _ in EXPECTED]


@pytest.mark.parametrize("index", range(len(EXPECTED)))
async def test_readme_snippet_runs(index, tmp_path):
    section, code = snippets()[index]
    is_test = "def test_" in code
    path = tmp_path / ("test_snippet.py" if is_test else "snippet.py")
    path.write_text(code)
    ruff = shutil.which("ruff") or str(Path(sys.executable).parent / "ruff")
    lint = subprocess.run([ruff, "check", "--select", "F", "--no-cache", str(path)], capture_output=True, text=True, check=False)
    assert lint.returncode == 0, f"README snippet {index + 1} ({section}):\n{lint.stdout}"
    argv = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(path)] if is_test else [sys.executable, str(path)]
    with trio.fail_after(60):  # safety net only
        result = await trio.run_process(argv, cwd=tmp_path, env=user_env(), capture_stdout=True, capture_stderr=True, check=False)
    out = result.stdout.decode()
    assert result.returncode == 0, f"README snippet {index + 1} ({section}) failed:\n{out}\n{result.stderr.decode()}"
    for pattern in EXPECTED[index][1]:
        assert re.search(pattern, out, re.MULTILINE), f"README snippet {index + 1}: no {pattern!r} in:\n{out}"


#: A command a reader would type that needs the venv: ``imc-actors <sub>``, ``python -m ...``
#: (but ``python3 -m venv``), ``python examples/...``, ``pip install``.
VENV_COMMAND = re.compile(
    r"(?<![\w./-])(imc-actors (?:serve|db|rooms|members|rpc|chat|user)\b|python3? -m (?!venv\b)"
    r"|python3? examples/|pip install)"
)
DOCS = [README, ROOT / "examples" / "README.md", ROOT / "examples" / "kamailio" / "README.md"]


@pytest.mark.parametrize("path", DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_commands_run_from_the_venv_without_activating_it(path):
    """After README's two setup commands nothing is on PATH: every command says .venv/bin/."""
    text = path.read_text()
    bare = [
        f"line {text.count(chr(10), 0, m.start()) + 1}: {text[m.start():].splitlines()[0]}"
        for m in VENV_COMMAND.finditer(text)
    ]
    assert bare == [], "\n".join(bare)
