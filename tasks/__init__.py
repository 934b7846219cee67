"""Celery tasks of the pipeline. `celery -A tasks worker -Q realtime,refresh` runs them.

Importing this package builds nothing and reads no environment: processes that own their
settings call `tasks.celery.create_app(settings)`. Only `celery -A tasks …` asks for
`tasks.app`, and that edge builds the app from the environment (`app_from_environment`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from tasks.pipeline_app import PipelineApp

    app: PipelineApp


def __getattr__(name: str) -> Any:
    if name != "app":
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    from tasks.celery import app_from_environment

    built = app_from_environment()
    globals()["app"] = built
    return built
