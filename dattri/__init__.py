"""A drop-in compatibility package for ``dattri.func`` (dattri 0.2.0), built on [`linop`][linop].

``dattri.func.hessian``, ``dattri.func.projection`` and ``dattri.func.utils`` keep their documented
signatures; every function calls linop, and the known bugs of 0.2.0 are fixed (see the migration
guide in the docs).
"""

from __future__ import annotations

__version__ = "0.2.0+linop"
