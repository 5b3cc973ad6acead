"""Every Python code block in the README and the docs runs (each page in a fresh namespace)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
BLOCK = re.compile(r"```python\n(.*?)```", re.S)


def _pages_with_code():
    return [p for p in PAGES if BLOCK.search(p.read_text())]


def test_the_docs_have_code_to_run():
    names = {p.name for p in _pages_with_code()}
    assert {"README.md", "index.md", "operators.md", "inverses.md", "migration.md"} <= names


@pytest.mark.parametrize("page", _pages_with_code(), ids=lambda p: str(p.relative_to(ROOT)))
def test_code_blocks_run(page, capsys):
    namespace: dict = {"__name__": f"docs_{page.stem}"}
    for i, block in enumerate(BLOCK.findall(page.read_text())):
        try:
            exec(compile(block, f"{page.name}[block {i}]", "exec"), namespace)
        except Exception as e:  # pragma: no cover - the failure message is the point
            raise AssertionError(f"{page.name}, code block {i} failed: {e!r}\n{block}") from e
