"""Load the files of ``examples/`` as modules, and run commands the way a user would."""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples"


def load_example(name: str) -> ModuleType:
    """``examples/<name>.py`` as a module (imported once per test session)."""
    module_name = f"imc_example_{name}"
    if module_name in sys.modules:
        return sys.modules[module_name]
    spec = importlib.util.spec_from_file_location(module_name, EXAMPLES / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    spec.loader.exec_module(module)
    return module


def user_env() -> dict[str, str]:
    """The environment of a user's shell: this interpreter's bin directory first on PATH.

    ``IMC_FAULT_SEED`` passes through, so a random fault the examples drew can be replayed."""
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    return env
