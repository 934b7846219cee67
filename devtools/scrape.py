"""Reading one metric off a process's Prometheus endpoint (tests and the benchmark)."""

from __future__ import annotations

import re

import httpx


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
