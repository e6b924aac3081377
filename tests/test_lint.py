"""The code base stays ruff clean (the same check CI and developers run)."""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def test_ruff_is_clean():
    ruff = shutil.which("ruff") or str(Path(sys.executable).parent / "ruff")
    if not Path(ruff).exists():
        pytest.fail("ruff is not installed (it is in the [test] extra)")
    paths = [p for p in ("imc_actors", "tests", "examples", "bench") if (ROOT / p).is_dir()]
    result = subprocess.run(
        [ruff, "check", *paths],
        cwd=ROOT, capture_output=True, text=True, check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
