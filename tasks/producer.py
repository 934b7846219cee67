"""Sending the pipeline's tasks by name, for every producer: listeners, beat tasks, the CLI.

Producers hold a `TaskSender` handed to them and never import the task functions, so a
listener needs neither the worker's code nor a second settings object: the sender is built
from the Celery app that was built from the producer's own settings.
"""

from __future__ import annotations

from collections.abc import Sequence
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
        self._send(names.DRAIN, (shard,), countdown=countdown_s if countdown_s > 0 else None)

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
        self._send(names.AUDIT_CONFIRM, (inspection,), countdown=countdown_s or None)

    def send_reconcile(self) -> None:
        """Refresh every aggregate of every active coach (beat's hourly safety net)."""
        self._send(names.RECONCILE, ())

    def _send(self, name: str, args: tuple[Any, ...], **options: Any) -> None:
        options = {key: value for key, value in options.items() if value is not None}
        try:
            self.app.send_task(name, args, **options)
        except KombuOperationalError as error:
            raise BrokerUnavailableError(
                f"cannot reach the broker (BROKER_URL): {redact_text(str(error))}"
            ) from error
