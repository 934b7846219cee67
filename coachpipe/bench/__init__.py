"""`make bench`: the pipeline measured end to end on private services (run from a clone).

The benchmarks reuse test fixtures (the Realtime protocol stand-in and the process helpers in
`tests/`), so they run from a checkout of the repository, not from an installed wheel.
"""

from __future__ import annotations

import sys
from pathlib import Path

CHECKOUT = Path(__file__).resolve().parents[2]
if not (CHECKOUT / "tests" / "realtime_standin.py").exists():
    raise ImportError("coachpipe bench runs from a clone of the repository (it needs tests/)")
if str(CHECKOUT) not in sys.path:
    sys.path.insert(0, str(CHECKOUT))
