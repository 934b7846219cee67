"""`free_port`: a port a server binds later must not be one an outgoing connection can take first.

The CI run of 2026-12-02 failed on this: a demo's API port, picked by `bind(0)` from the
ephemeral range, was the local port of some connection by the time the API bound it
(`[Errno 98] ... 58641: address already in use`).
"""

from __future__ import annotations

import socket

import pytest

from coachpipe import embedded
from coachpipe.embedded import free_port


def test_ports_lie_outside_the_ephemeral_range_and_are_never_handed_out_twice() -> None:
    low, high = embedded._ephemeral_range()
    ports = [free_port() for _ in range(300)]
    assert all(not low <= port <= high and port >= embedded.LISTEN_PORT_MIN for port in ports)
    assert len(set(ports)) == len(ports)


def test_a_port_something_listens_on_is_skipped(monkeypatch: pytest.MonkeyPatch) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        busy = taken.getsockname()[1]
        monkeypatch.setattr(embedded, "_listen_candidates", lambda: range(busy, busy + 2))
        assert free_port() == busy + 1


def test_an_unreadable_range_file_falls_back_to_linux_default(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(embedded, "EPHEMERAL_RANGE_FILE", embedded.Path("/nonexistent/range"))
    assert embedded._ephemeral_range() == embedded.EPHEMERAL_RANGE_DEFAULT
    assert embedded._listen_candidates() == range(embedded.LISTEN_PORT_MIN, 32768)


def test_when_every_candidate_is_taken_the_kernel_picks(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(embedded, "_can_bind", lambda port: False)
    port = free_port()
    assert 0 < port < 65536
