"""The naive baseline: no dedup, one recompute task per event and aggregate, one coach each.

What a straightforward port of "invalidate on every event" does; the benchmarks run it on the
same load to show what dedup, debounce and batching buy.
`python -m devtools.bench.naive_listener` runs it like `coachpipe listen --source postgres`.
"""

from __future__ import annotations

import sys

from config import SourceName, load_settings
from listeners.main import run
from listeners.runner import Listener
from pipeline import metrics
from pipeline.events import ChangeEvent
from pipeline.routing import route


class NaiveListener(Listener):
    def _dispatch(self, events: list[ChangeEvent]) -> None:
        from tasks.jobs import refresh_batch

        for event in events:
            metrics.EVENTS.labels(self.source.name, event.table, event.type.value).inc()
            for aggregate, coach in route(event).keys:
                refresh_batch.apply_async(
                    (aggregate, [str(coach)], event.commit_ms()), queue="realtime"
                )


if __name__ == "__main__":
    source = SourceName(sys.argv[1]) if len(sys.argv) > 1 else SourceName.POSTGRES
    sys.exit(run(load_settings(), source, NaiveListener))
