"""Sending the scheduler's tasks to Celery by name, so producers need not import the tasks."""

from __future__ import annotations

from celery import Celery


class CeleryTaskSender:
    """`pipeline.scheduler.TaskSender` over a Celery app (routing by task name applies)."""

    def __init__(self, app: Celery) -> None:
        self._app = app

    def send_drain(self, aggregate: str, countdown_s: float) -> None:
        self._app.send_task(
            "tasks.jobs.drain", (aggregate,), countdown=countdown_s if countdown_s > 0 else None
        )

    def send_wide_refresh(self, aggregate: str, reason: str) -> None:
        self._app.send_task("tasks.jobs.refresh_all", (aggregate, reason))
