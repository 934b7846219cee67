"""Prometheus endpoints of the pipeline's processes."""

from __future__ import annotations

import re

import httpx
from prometheus_client import start_http_server


def serve_metrics(port: int, address: str = "0.0.0.0") -> None:  # noqa: S104 - scraped from outside
    """Expose this process's metrics on http://address:port/metrics (a daemon thread)."""
    start_http_server(port, addr=address)


def scrape(port: int, name: str, **labels: str) -> float:
    """Sum of one metric's samples (matching `labels`) on a Prometheus endpoint."""
    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
    total = 0.0
    for line in text.splitlines():
        match = re.match(rf"{re.escape(name)}(?:\{{(.*)\}})? (\S+)$", line)
        if match is None:
            continue
        found = dict(re.findall(r'(\w+)="([^"]*)"', match.group(1) or ""))
        if all(found.get(k) == v for k, v in labels.items()):
            total += float(match.group(2))
    return total
