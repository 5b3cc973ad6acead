"""benchmarks/ is run from a checkout, not installed: its tests import it from the repository
root, put on ``sys.path`` here once for all of them."""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
