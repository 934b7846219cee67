"""Celery tasks of the pipeline. `celery -A tasks worker -Q realtime,refresh` runs them."""

from tasks.celery import app

__all__ = ["app"]
