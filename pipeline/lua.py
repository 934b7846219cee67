"""Lua scripts run by SHA, without redis-py's per-pipeline `SCRIPT EXISTS` round trip.

redis-py checks every registered script with `SCRIPT EXISTS` each time a pipeline that uses
it executes: one extra round trip on the hot path of every recompute. Here a script is loaded
once per process and run with EVALSHA; if Redis forgot it (a restart, `SCRIPT FLUSH`), it is
loaded again and the call (or the whole pipeline) is replayed.

On a Redis Cluster, `SCRIPT LOAD` goes to every primary (redis-py routes it so), a pipeline is
split by node and sent to each, and a replica promoted by a failover, which has no scripts,
answers NOSCRIPT once: the scripts are loaded on every primary again and the pipeline replayed,
the other primaries' first answers kept (`run_pipeline`). Every script here is idempotent for a
replay (compare-and-set, marks, `ZADD GT`).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from typing import Any

from redis.exceptions import NoScriptError

from pipeline.redis_client import RedisClient


class Lua:
    def __init__(self, client: RedisClient, source: str) -> None:
        self._client = client
        self._source = source
        self.sha = hashlib.sha1(source.encode(), usedforsecurity=False).hexdigest()

    def load(self) -> None:
        self._client.script_load(self._source)

    def __call__(self, keys: Sequence[Any], args: Sequence[Any]) -> Any:
        try:
            return self._client.evalsha(self.sha, len(keys), *keys, *args)
        except NoScriptError:
            self.load()
            return self._client.evalsha(self.sha, len(keys), *keys, *args)

    def queue(self, pipe: Any, keys: Sequence[Any], args: Sequence[Any]) -> None:
        # By command name: redis-py's cluster pipeline blocks its `evalsha` method, while the
        # command itself is routed by its keys like any other.
        pipe.execute_command("EVALSHA", self.sha, len(keys), *keys, *args)


def run_pipeline(
    client: RedisClient, scripts: Sequence[Lua], build: Callable[[Any], None]
) -> list[Any]:
    """Build and execute a non-transactional pipeline; if Redis did not know one of `scripts`
    (NOSCRIPT), load them and replay the pipeline once. The replay runs every call again, but
    only the answers of the calls refused the first time are taken from it: a call that ran
    keeps its first answer (run twice, a compare-and-set answers "not newer" and a request
    "already pending", which would report stored writes as stale and leave drains unsent).
    Raises the first error among the answers kept, as redis-py's `execute` does."""
    answers = _execute(client, build)
    refused = [index for index, answer in enumerate(answers) if isinstance(answer, NoScriptError)]
    if refused:
        for script in scripts:
            script.load()
        replayed = _execute(client, build)
        for index in refused:
            answers[index] = replayed[index]
    for answer in answers:
        if isinstance(answer, Exception):
            raise answer
    return answers


def _execute(client: RedisClient, build: Callable[[Any], None]) -> list[Any]:
    pipe = client.pipeline(transaction=False)
    build(pipe)
    return list(pipe.execute(raise_on_error=False))
