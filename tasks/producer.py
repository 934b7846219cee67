"""Sending the pipeline's tasks by name, for every producer: listeners, beat tasks, the CLI.

Producers hold a `TaskSender` handed to them and never import the task functions, so a
listener needs neither the worker's code nor a second settings object: the sender is built
from the Celery app that was built from the producer's own settings.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import timedelta
from typing import Any
from uuid import UUID

from celery import Celery
from kombu.exceptions import OperationalError as KombuOperationalError

from config.logging import redact_text
from pipeline.errors import BrokerUnavailableError
from tasks import names


class CeleryTaskSender:
    """`pipeline.scheduler.TaskSender` over a Celery app, plus the bulk tasks beat and the CLI
    send; queues come from the app's routes, not from here."""

    def __init__(self, app: Celery) -> None:
        self.app = app

    def send_drain(self, shard: int, countdown_s: float) -> None:
        self._send(names.DRAIN, (shard,), **self.delay(countdown_s))

    def send_wide_refresh(self, aggregate: str, reason: str) -> None:
        self._send(names.REFRESH_ALL, (aggregate, reason))

    def send_refresh_batch(
        self,
        aggregates: Sequence[str],
        coach_ids: Sequence[UUID | str],
        commit_ms: int | None = None,
        *,
        queue: str | None = None,
        expires: float | None = None,
    ) -> None:
        """Recompute `aggregates` of `coach_ids` directly, without dedup (bulk work)."""
        args = (list(aggregates), [str(coach) for coach in coach_ids], commit_ms)
        self._send(names.REFRESH_BATCH, args, queue=queue, expires=expires)

    def send_audit_confirm(self, inspection: dict[str, Any], countdown_s: float) -> None:
        """Phase 2 of an audit (`pipeline.audit.confirm`), after the grace period."""
        self._send(names.AUDIT_CONFIRM, (inspection,), **self.delay(countdown_s))

    def send_reconcile(self, countdown_s: float | None = None) -> None:
        """Refresh every aggregate of every active coach (beat's hourly safety net, and after a
        failover of the data store)."""
        self._send(names.RECONCILE, (), countdown=countdown_s)

    def delay(self, countdown_s: float) -> dict[str, Any]:
        """`send_task` options that run a task `countdown_s` seconds from now (none for <= 0).

        On RabbitMQ with quorum queues Celery sends a countdown through its native delayed
        delivery, which counts whole seconds: it truncates the countdown and raises
        `ValueError` below one second (`celery.app.base.Celery.send_task`, 5.7.0). A debounced
        drain waits at most `DEBOUNCE_MS`, so a countdown under a second goes out at once with
        protocol 2's `eta` header instead, and the worker holds it (one prefetch slot for that
        fraction of a second). Countdowns of a second or more keep the native path; the `eta`
        header Celery writes beside it holds back a message the truncation let out early.
        """
        if countdown_s <= 0:
            return {}
        if countdown_s >= 1 or not names.is_amqp(str(self.app.conf.broker_url or "")):
            return {"countdown": countdown_s}
        eta = self.app.now() + timedelta(seconds=countdown_s)
        return {"headers": {"eta": eta.isoformat()}}

    def _send(self, name: str, args: tuple[Any, ...], **options: Any) -> None:
        options = {key: value for key, value in options.items() if value is not None}
        try:
            self.app.send_task(name, args, **options)
        except KombuOperationalError as error:
            raise BrokerUnavailableError(
                f"cannot reach the broker (BROKER_URL): {redact_text(str(error))}"
            ) from error
