"""Warnings that point at the caller's line, not at linop's internals."""

from __future__ import annotations

import os
import sys
import warnings

_PACKAGE = os.path.dirname(os.path.abspath(__file__))


def warn(message: str, category: type[Warning]) -> None:
    """``warnings.warn`` with the stack level of the first frame outside linop (and dattri's
    compatibility wrappers, which call linop on the user's behalf)."""
    root = os.path.dirname(_PACKAGE)
    inside = (_PACKAGE, os.path.join(root, "dattri"))
    frame, level = sys._getframe(1), 2  # stacklevel 1 would be this function
    while frame is not None and os.path.abspath(frame.f_code.co_filename).startswith(inside):
        frame, level = frame.f_back, level + 1
    warnings.warn(message, category, stacklevel=level)
