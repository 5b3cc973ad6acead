"""Plots of the benchmark JSON lines, for the docs (matplotlib, Agg backend)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def _load(path: Path) -> list[dict[str, Any]]:
    return (
        [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        if path.exists()
        else []
    )


def draw(folder: Path, device: str) -> list[Path]:
    """Draw every plot whose data is in ``folder``; returns the files written."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    hvp = [
        r
        for r in _load(folder / f"hvp_{device}.jsonl")
        if r.get("impl") in ("linop", "dattri", "curvlinops")
    ]
    works = ["hvp_1", "hvp_16"]
    if hvp:
        fig, ax = plt.subplots(figsize=(7, 3.5))
        labels, values, colors = [], [], []
        palette = {"linop": "tab:blue", "dattri": "tab:orange", "curvlinops": "tab:green"}
        for r in hvp:
            if r.get("work") in works:
                labels.append(f"{r['impl']}\n{r['mode']}\n{r['work']}")
                values.append(r["seconds"] * 1e3)
                colors.append(palette[r["impl"]])
        ax.bar(range(len(values)), values, color=colors)
        ax.set_xticks(range(len(values)), labels, fontsize=6)
        ax.set_ylabel("ms (median)")
        ax.set_yscale("log")
        ax.set_title(f"Hessian-vector products, MLP 669,706 parameters ({device})")
        fig.tight_layout()
        written.append(folder / f"hvp_{device}.png")
        fig.savefig(written[-1], dpi=120)
        plt.close(fig)
    inv = _load(folder / f"inverse_{device}.jsonl")
    cg = [r for r in inv if r["method"].startswith("cg") and r.get("rel_error")]
    if cg:
        fig, ax = plt.subplots(figsize=(5.5, 4))
        for side, marker in (("linop", "o"), ("dattri", "s")):
            pts = sorted((r["seconds"], r["rel_error"]) for r in cg if r["side"] == side)
            if pts:
                ax.plot(*zip(*pts, strict=True), marker=marker, label=f"{side} CG")
        ax.set_xlabel("seconds (8 right-hand sides)")
        ax.set_ylabel("relative error")
        ax.set_yscale("log")
        ax.set_title(f"CG time to accuracy ({device})")
        ax.legend()
        fig.tight_layout()
        written.append(folder / f"inverse_cg_{device}.png")
        fig.savefig(written[-1], dpi=120)
        plt.close(fig)
    return written
