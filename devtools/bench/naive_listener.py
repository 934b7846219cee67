"""The naive baseline: no dedup, one recompute task per event and aggregate, one coach each.

What a straightforward port of "invalidate on every event" does; the benchmarks run it on the
same load to show what dedup, debounce and batching buy. It is the product's listener with
another `Invalidation` strategy injected.
`python -m devtools.bench.naive_listener` runs it like `coachpipe listen --source postgres`.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from config import SourceName, load_settings
from listeners.main import run
from pipeline.events import ChangeEvent
from pipeline.routing import route
from tasks.names import REALTIME_QUEUE
from tasks.producer import CeleryTaskSender


class NaiveInvalidation:
    """Every (aggregate, coach) of every event becomes its own `refresh_batch` task."""

    def __init__(self, sender: CeleryTaskSender) -> None:
        self.sender = sender

    def invalidate(self, events: Sequence[ChangeEvent]) -> None:
        for event in events:
            for aggregate, coach in route(event).keys:
                self.sender.send_refresh_batch(
                    [aggregate], [coach], event.commit_ms(), queue=REALTIME_QUEUE
                )


if __name__ == "__main__":
    source = SourceName(sys.argv[1]) if len(sys.argv) > 1 else SourceName.POSTGRES
    sys.exit(run(load_settings(), source, NaiveInvalidation))
