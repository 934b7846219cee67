"""The pipeline's Celery app class: what its tasks reach through `task.app`."""

from __future__ import annotations

from celery import Celery

from config import Settings
from tasks.producer import CeleryTaskSender
from tasks.runtime import Runtime


class PipelineApp(Celery):  # type: ignore[misc]  # celery ships no type information
    """A Celery app that carries what its tasks need: the settings it was built from, this
    process's `Runtime` (connections, created lazily) and a `CeleryTaskSender` over itself."""

    def __init__(self, settings: Settings) -> None:
        super().__init__("coachpipe")
        self.settings = settings
        self.sender = CeleryTaskSender(self)
        self.runtime = Runtime(settings, self.sender)
