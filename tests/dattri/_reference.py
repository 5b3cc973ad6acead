"""Run dattri 0.2.0, the reference implementation, in a subprocess.

Our ``dattri`` package shadows the real one in this interpreter, so differential tests run the
reference in a child process whose ``PYTHONPATH`` starts with an isolated copy of dattri 0.2.0:
``$LINOP_DATTRI_REF`` if set, else ``<repo>/.ref/dattri020``, installed there on first use with
``pip install --no-deps --target <repo>/.ref/dattri020 dattri==0.2.0`` (its dependencies — torch,
numpy — are this interpreter's). A test module computes every reference output in one call of
:func:`run_reference`, to pay the child's start-up (importing torch) once.

Tests skip, with the reason printed, only when the reference cannot be found or installed; a
reference script that fails is a test error.
"""

from __future__ import annotations

import functools
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import pytest
import torch

REPO = Path(__file__).resolve().parents[2]
#: Where the reference is installed when ``$LINOP_DATTRI_REF`` is not set.
DEFAULT_TARGET = REPO / ".ref" / "dattri020"
ENV_VAR = "LINOP_DATTRI_REF"
REQUIREMENT = "dattri==0.2.0"

#: Prepended to every reference script: loads the inputs and checks the reference is imported.
_PRELUDE = """
import sys, torch
import dattri
assert "linop" not in getattr(dattri, "__version__", ""), dattri.__file__
inputs = torch.load(sys.argv[1], weights_only=False)
outputs = {"__dattri_file__": dattri.__file__}
"""
_EPILOGUE = """
torch.save(outputs, sys.argv[2])
"""


def _has_dattri(path: Path) -> bool:
    return (path / "dattri" / "func" / "projection.py").is_file()


@functools.lru_cache(maxsize=1)
def _locate() -> tuple[Path | None, str]:
    """The reference's site directory, or None and the reason it is unavailable."""
    override = os.environ.get(ENV_VAR)
    if override:
        path = Path(override)
        if _has_dattri(path):
            return path, ""
        return None, f"${ENV_VAR}={override} holds no dattri package"
    if _has_dattri(DEFAULT_TARGET):
        return DEFAULT_TARGET, ""
    command = [
        sys.executable,
        "-m",
        "pip",
        "install",
        "--quiet",
        "--no-deps",
        "--target",
        str(DEFAULT_TARGET),
        REQUIREMENT,
    ]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=300)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return None, f"cannot install {REQUIREMENT}: {exc}"
    if done.returncode != 0 or not _has_dattri(DEFAULT_TARGET):
        tail = (done.stderr or done.stdout).strip().splitlines()[-3:]
        return None, f"cannot install {REQUIREMENT} into {DEFAULT_TARGET}: {' | '.join(tail)}"
    return DEFAULT_TARGET, ""


def reference_path() -> Path:
    """The directory holding the reference dattri; skips the calling test when unavailable."""
    path, reason = _locate()
    if path is None:
        message = f"dattri 0.2.0 reference unavailable: {reason}"
        print(message)
        pytest.skip(message)
    return path


def run_reference(body: str, inputs: dict[str, Any], timeout: float = 240) -> dict[str, Any]:
    """Run ``body`` under dattri 0.2.0 in a child process and return its ``outputs`` dict.

    ``body`` sees ``inputs`` (this dict, through ``torch.save``/``torch.load``) and fills
    ``outputs`` (tensors, numbers, strings, containers of them).

    Raises:
        RuntimeError: if the child fails (its stderr is included).
    """
    path = reference_path()
    with tempfile.TemporaryDirectory() as tmp:
        src, dst = Path(tmp, "inputs.pt"), Path(tmp, "outputs.pt")
        torch.save(inputs, src)
        env = dict(os.environ)
        paths = [str(path), env.get("PYTHONPATH", "")]
        env["PYTHONPATH"] = os.pathsep.join(p for p in paths if p)
        # -P: the working directory (maybe our repo, with our dattri) is not put on sys.path
        command = [sys.executable, "-P", "-c", _PRELUDE + body + _EPILOGUE, str(src), str(dst)]
        done = subprocess.run(
            command, cwd=tmp, env=env, capture_output=True, text=True, timeout=timeout
        )
        if done.returncode != 0:
            raise RuntimeError(f"the dattri 0.2.0 reference script failed:\n{done.stderr[-4000:]}")
        outputs = torch.load(dst, weights_only=False)
    if not str(outputs["__dattri_file__"]).startswith(str(path)):
        raise RuntimeError(f"the child imported {outputs['__dattri_file__']}, not the reference")
    return outputs
