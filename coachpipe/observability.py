"""Prometheus endpoints of the pipeline's processes."""

from __future__ import annotations

from prometheus_client import start_http_server


def serve_metrics(port: int, address: str = "0.0.0.0") -> None:  # noqa: S104 - scraped from outside
    """Expose this process's metrics on http://address:port/metrics (a daemon thread)."""
    start_http_server(port, addr=address)
