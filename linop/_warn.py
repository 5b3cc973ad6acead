"""Warnings that point at the caller's line, not at linop's internals."""

from __future__ import annotations

import os
import sys
import warnings
from types import FrameType

_PACKAGE = os.path.dirname(os.path.abspath(__file__))


def _internal(frame: FrameType) -> bool:
    """A frame of linop, or of a module that calls linop on its user's behalf: one that sets
    ``__linop_wrapper__ = True`` at module level (a compatibility layer, for instance)."""
    code_file = os.path.abspath(frame.f_code.co_filename)
    return code_file.startswith(_PACKAGE) or bool(frame.f_globals.get("__linop_wrapper__"))


def warn(message: str, category: type[Warning]) -> None:
    """``warnings.warn`` with the stack level of the first frame outside linop and the modules
    that declare themselves its wrappers."""
    frame: FrameType | None = sys._getframe(1)
    level = 2  # stacklevel 1 would be this function
    while frame is not None and _internal(frame):
        frame, level = frame.f_back, level + 1
    warnings.warn(message, category, stacklevel=level)
