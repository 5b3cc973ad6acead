"""Shared helpers for the benchmarks: timing, machine description, JSON lines, references.

A speed claim in this project is a ratio measured side by side in one run, so every benchmark
times our code and the reference with the same :func:`median_time`, records the machine with
:func:`machine_info`, and runs the reference (dattri 0.2.0) in a subprocess through
:func:`run_reference`, where ``PYTHONPATH`` puts the reference package in front of ours.

Example:
    >>> t = median_time(lambda: sum(range(100)), warmup=1, reps=3)
    >>> t > 0
    True
"""

from __future__ import annotations

import datetime
import hashlib
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import torch

__all__ = [
    "DATTRI_REF",
    "REPO_ROOT",
    "ReferenceUnavailable",
    "ensure_reference",
    "machine_info",
    "median_time",
    "run_reference",
    "source_info",
    "time_samples",
    "write_jsonl",
]

#: The repository root (the folder holding ``linop/`` and ``benchmarks/``).
REPO_ROOT = Path(__file__).resolve().parent.parent
#: Where the reference dattri 0.2.0 is installed (``pip install --no-deps --target``).
DATTRI_REF = REPO_ROOT / ".ref" / "dattri020"
_DATTRI_REQUIREMENT = "dattri==0.2.0"


class ReferenceUnavailable(RuntimeError):  # noqa: N818 - a state the report shows, not a bug
    """A reference implementation could not be installed or its subprocess failed."""


# ---------------------------------------------------------------------- timing
def _sync() -> None:
    """Wait for queued CUDA work, if CUDA is in use in this process."""
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize()


def time_samples(fn: Callable[[], Any], warmup: int = 2, reps: int = 7) -> list[float]:
    """Wall-clock seconds of ``reps`` calls of ``fn`` after ``warmup`` untimed calls.

    CUDA is synchronised before each clock reading, so asynchronous kernels are counted.

    Args:
        fn: the work, called with no arguments.
        warmup: untimed calls first (compilation, caches, allocator).
        reps: timed calls.

    Returns:
        One duration per timed call, in seconds.
    """
    if reps < 1:
        raise ValueError(f"reps must be positive, got {reps}")
    for _ in range(warmup):
        fn()
    samples = []
    for _ in range(reps):
        _sync()
        start = time.perf_counter()
        fn()
        _sync()
        samples.append(time.perf_counter() - start)
    return samples


def median_time(fn: Callable[[], Any], warmup: int = 2, reps: int = 7) -> float:
    """The median wall-clock seconds of one call of ``fn`` (see :func:`time_samples`)."""
    return statistics.median(time_samples(fn, warmup, reps))


# ---------------------------------------------------------------------- records
def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _version(module: str) -> str | None:
    try:
        return __import__(module).__version__
    except Exception:  # noqa: BLE001 - a missing or broken package is just "not there"
        return None


def machine_info() -> dict[str, Any]:
    """The machine and software a measurement ran on (no hostname, no user names).

    Returns:
        A JSON-serialisable dict: cpu model, logical cores, torch threads, OS, Python,
        torch/numpy/scipy versions, the CUDA device name (None without CUDA) and the 1-minute
        load average (other work competing for the CPU distorts timings).
    """
    cuda = torch.cuda.is_available()
    return {
        "cpu": _cpu_model(),
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "os": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": _version("numpy"),
        "scipy": _version("scipy"),
        "cuda_device": torch.cuda.get_device_name() if cuda else None,
        "cuda_version": torch.version.cuda if cuda else None,
        "load_avg_1m": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
    }


def source_info(package: str | Path) -> dict[str, Any]:
    """Which version of our code was measured: the git commit and a hash of the sources.

    Args:
        package: a folder of the repository (e.g. ``REPO_ROOT / "linop"``).

    Returns:
        ``commit`` (HEAD, or None outside git), ``dirty`` (the folder differs from HEAD, or
        None) and ``sha256`` of the folder's ``.py`` files, which identifies uncommitted edits.
    """
    package = Path(package)
    digest = hashlib.sha256()
    for f in sorted(package.rglob("*.py")):
        digest.update(str(f.relative_to(package)).encode() + b"\0" + f.read_bytes())
    git = ["git", "--no-optional-locks", "-C", str(package)]  # read-only: never writes the index
    try:
        head = subprocess.run([*git, "rev-parse", "HEAD"], capture_output=True, text=True)
        diff = subprocess.run([*git, "diff", "--quiet", "HEAD", "--", "."], capture_output=True)
    except OSError:
        return {"commit": None, "dirty": None, "sha256": digest.hexdigest()}
    ok = head.returncode == 0
    return {
        "commit": head.stdout.strip() if ok else None,
        "dirty": bool(diff.returncode) if ok and diff.returncode in (0, 1) else None,
        "sha256": digest.hexdigest(),
    }


def write_jsonl(
    path: str | Path, records: Iterable[dict[str, Any]], source: str | Path | None = None
) -> Path:
    """Write one JSON object per line, each with ``machine`` and ``timestamp`` added.

    Args:
        path: the output file (its folder is created; an existing file is overwritten).
        records: the measurements.
        source: a folder of the repository whose :func:`source_info` goes into every record
            as ``source`` (which version of our code was measured).

    Returns:
        The path written.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    machine = machine_info()
    stamp = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    extra = {"source": source_info(source)} if source is not None else {}
    with path.open("w") as f:
        for record in records:
            line = {**record, **extra, "machine": machine, "timestamp": stamp}
            f.write(json.dumps(line) + "\n")
    return path


# ---------------------------------------------------------------------- references
def ensure_reference(
    target: str | Path = DATTRI_REF, requirements: Sequence[str] = (_DATTRI_REQUIREMENT,)
) -> Path:
    """Install ``requirements`` into ``target`` with ``pip --no-deps --target``, once.

    Args:
        target: the folder to install into (skipped if it exists and is not empty).
        requirements: pip requirement strings.

    Returns:
        ``target``, ready to put on ``PYTHONPATH``.

    Raises:
        ReferenceUnavailable: if pip fails (the message carries pip's last output lines).
    """
    target = Path(target)
    if target.is_dir() and any(target.iterdir()):
        return target
    cmd = [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--target"]
    cmd += [str(target), *requirements]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-15:])
        raise ReferenceUnavailable(
            f"could not install {' '.join(requirements)} into {target} "
            f"(pip exited with {proc.returncode}):\n{tail}"
        )
    return target


def run_reference(
    script: str | Path,
    args: Sequence[str] = (),
    pythonpath: str | Path | Sequence[str | Path] | None = None,
    timeout: float | None = 1800,
) -> Any:
    """Run a Python script in a subprocess in front of a reference package; return its JSON.

    The subprocess runs in an empty temporary folder (so the current folder, which may hold our
    own ``dattri``, is not on its path) with ``PYTHONPATH`` set to ``pythonpath``: entries there
    come before site-packages and editable installs, so the reference shadows our package.

    Args:
        script: Python source text, or the path of a ``.py`` file.
        args: command-line arguments (``sys.argv[1:]`` in the script).
        pythonpath: folders for ``PYTHONPATH``, first wins. Default: the dattri 0.2.0
            reference (installed by :func:`ensure_reference` if missing).
        timeout: seconds before the subprocess is killed.

    Returns:
        The parsed last line of the script's standard output, which must be JSON.

    Raises:
        ReferenceUnavailable: if the reference cannot be installed, the script fails or its last
            output line is not JSON.
    """
    if pythonpath is None:
        pythonpath = [ensure_reference()]
    elif isinstance(pythonpath, (str, Path)):
        pythonpath = [pythonpath]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(str(Path(p).resolve()) for p in pythonpath)}
    is_file = isinstance(script, Path) or (
        "\n" not in script and script.endswith(".py") and Path(script).is_file()
    )
    cmd = [sys.executable] + ([str(Path(script).resolve())] if is_file else ["-c", str(script)])
    with tempfile.TemporaryDirectory() as cwd:
        try:
            proc = subprocess.run(
                [*cmd, *map(str, args)],
                capture_output=True,
                text=True,
                env=env,
                cwd=cwd,
                timeout=timeout,
            )
        except subprocess.TimeoutExpired as e:
            raise ReferenceUnavailable(f"reference script timed out after {timeout} s") from e
    if proc.returncode != 0:
        tail = "\n".join(proc.stderr.strip().splitlines()[-20:])
        raise ReferenceUnavailable(f"reference script exited with {proc.returncode}:\n{tail}")
    lines = proc.stdout.strip().splitlines()
    try:
        return json.loads(lines[-1])
    except (IndexError, json.JSONDecodeError) as e:
        raise ReferenceUnavailable(
            f"reference script printed no JSON on its last line; stdout ended with "
            f"{lines[-3:]!r}, stderr with {proc.stderr.strip().splitlines()[-5:]!r}"
        ) from e
