"""Every Python code block in the README and the docs runs (each page in a fresh namespace), and
none emits a warning: a reader who pastes an example should see its result, not a warning.

A block that demonstrates a warning on purpose says so with a marker comment on a line of its own,
``# expect-warning`` or ``# expect-warning: ConvergenceWarning`` (the name of a warning class of
``linop.errors`` or the builtins); such a block must emit a warning of that class (or a subclass)
and no other.
"""

from __future__ import annotations

import builtins
import re
import warnings
from pathlib import Path

import pytest

import linop.errors

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
BLOCK = re.compile(r"```python\n(.*?)```", re.S)
EXPECT = re.compile(r"^[ \t]*# expect-warning(?::[ \t]*(\w+))?[ \t]*$", re.M)


def _pages_with_code():
    return [p for p in PAGES if BLOCK.search(p.read_text())]


def _expected_category(block: str) -> type[Warning] | None:
    """The warning class a block's ``# expect-warning`` marker names (``Warning`` when it names
    none), or None for a block without the marker."""
    marker = EXPECT.search(block)
    if marker is None:
        return None
    name = marker.group(1)
    if name is None:
        return Warning
    category = getattr(linop.errors, name, None) or getattr(builtins, name, None)
    assert isinstance(category, type) and issubclass(category, Warning), (
        f"'# expect-warning: {name}' names no warning class of linop.errors or the builtins"
    )
    return category


def _describe(caught: list[warnings.WarningMessage]) -> str:
    return "\n".join(
        f"  {w.category.__name__} ({w.filename}:{w.lineno}): {w.message}" for w in caught
    )


def _run_blocks(text: str, name: str) -> None:
    """Run the page's Python blocks in one fresh namespace, failing on an error or on a warning
    that the block does not declare."""
    namespace: dict = {"__name__": f"docs_{Path(name).stem}"}
    for i, block in enumerate(BLOCK.findall(text)):
        expected = _expected_category(block)
        # record every warning, also those Python or pytest would hide or show only once
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            # torch's own deprecation notice on its first forward-mode derivative (torch code
            # calling torch.jit.script): hidden from a user by Python's default filters, and
            # ignored by the suite's configuration (pyproject.toml)
            warnings.filterwarnings(
                "ignore", ".*torch.jit.script.*is deprecated", category=DeprecationWarning
            )
            try:
                exec(compile(block, f"{name}[block {i}]", "exec"), namespace)
            except Exception as e:  # pragma: no cover - the failure message is the point
                raise AssertionError(f"{name}, code block {i} failed: {e!r}\n{block}") from e
        if expected is None:
            assert not caught, (
                f"{name}, code block {i} emits {len(caught)} warning(s); fix the example (or, if "
                f"it shows a warning on purpose, mark it '# expect-warning: <class>'):\n"
                f"{_describe(caught)}\n{block}"
            )
        else:
            assert caught, f"{name}, code block {i} is marked expect-warning but emits none"
            unexpected = [w for w in caught if not issubclass(w.category, expected)]
            assert not unexpected, (
                f"{name}, code block {i} expects {expected.__name__} but also emits:\n"
                f"{_describe(unexpected)}"
            )


def test_the_docs_have_code_to_run():
    names = {p.name for p in _pages_with_code()}
    assert {"README.md", "index.md", "operators.md", "inverses.md", "migration.md"} <= names


@pytest.mark.parametrize("page", _pages_with_code(), ids=lambda p: str(p.relative_to(ROOT)))
def test_code_blocks_run_without_warnings(page):
    _run_blocks(page.read_text(), page.name)


WARNS = "import warnings\nimport linop.errors\nwarnings.warn('{}', {})\n"


def _page(*blocks: str) -> str:
    return "".join(f"Text.\n\n```python\n{b}```\n\n" for b in blocks)


def test_the_guard_fails_a_block_that_warns():
    with pytest.raises(AssertionError, match=r"(?s)block 1 emits 1 warning.*ConvergenceWarning"):
        _run_blocks(_page("x = 1\n", WARNS.format("slow", "linop.errors.ConvergenceWarning")), "p")
    # a warning Python hides by default outside __main__ counts too
    with pytest.raises(AssertionError, match="DeprecationWarning"):
        _run_blocks(_page(WARNS.format("old", "DeprecationWarning")), "p")


def test_the_guard_accepts_a_declared_warning_and_only_that():
    marked = "# expect-warning: ConvergenceWarning\n"
    # AttainableAccuracyWarning is a ConvergenceWarning
    _run_blocks(_page(marked + WARNS.format("x", "linop.errors.AttainableAccuracyWarning")), "p")
    _run_blocks(_page("# expect-warning\n" + WARNS.format("x", "UserWarning")), "p")
    with pytest.raises(AssertionError, match="marked expect-warning but emits none"):
        _run_blocks(_page(marked + "x = 1\n"), "p")
    with pytest.raises(AssertionError, match="also emits"):
        _run_blocks(_page(marked + WARNS.format("x", "UserWarning")), "p")
    with pytest.raises(AssertionError, match="names no warning class"):
        _run_blocks(_page("# expect-warning: NoSuchWarning\nx = 1\n"), "p")


def test_docstrings_use_no_sphinx_roles():
    """The API reference renders docstrings as markdown (mkdocstrings): a Sphinx role such as
    :class:`X` would show verbatim there; cross-references are written [`X`][linop.X]."""
    role = re.compile(r":(class|meth|func|attr|mod|data|exc|obj):`")
    found = [
        f"{path.relative_to(ROOT)}:{number}"
        for package in ("linop", "dattri")
        for path in sorted((ROOT / package).rglob("*.py"))
        for number, line in enumerate(path.read_text().splitlines(), 1)
        if role.search(line)
    ]
    assert not found, found
