"""`free_port`: a port a server binds later must not be one an outgoing connection can take first.

The CI run of 2026-12-02 failed on this: a demo's API port, picked by `bind(0)` from the
ephemeral range, was the local port of some connection by the time the API bound it
(`[Errno 98] ... 58641: address already in use`).
"""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from coachpipe import embedded
from coachpipe.embedded import free_port


def test_ports_lie_outside_the_ephemeral_range_and_are_never_handed_out_twice() -> None:
    low, high = embedded._ephemeral_range()
    ports = [free_port() for _ in range(300)]
    assert all(not low <= port <= high and port >= embedded.LISTEN_PORT_MIN for port in ports)
    assert len(set(ports)) == len(ports)


def test_a_port_something_listens_on_is_skipped(monkeypatch: pytest.MonkeyPatch) -> None:
    with socket.socket() as taken, socket.socket() as released:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        busy = taken.getsockname()[1]
        released.bind(("127.0.0.1", 0))  # never connected: no TIME_WAIT once closed
        free = released.getsockname()[1]
        released.close()
        picks = iter([busy, free])
        monkeypatch.setattr(embedded._random, "choice", lambda candidates: next(picks))
        assert free_port() == free
        assert next(picks, None) is None  # the busy port was tried first


def test_an_unreadable_range_file_falls_back_to_linux_default(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(embedded, "EPHEMERAL_RANGE_FILE", Path("/nonexistent/range"))
    assert embedded._ephemeral_range() == embedded.EPHEMERAL_RANGE_DEFAULT
    assert embedded._listen_candidates() == range(embedded.LISTEN_PORT_MIN, 32768)


def test_when_every_candidate_is_taken_the_kernel_picks(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(embedded, "_can_bind", lambda port: False)
    port = free_port()
    assert 0 < port < 65536


def test_an_ephemeral_range_that_leaves_no_port_falls_back_to_the_kernel(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """`ip_local_port_range` of `10000 65535` (a common tuning) leaves no candidate."""
    wide = tmp_path / "ip_local_port_range"
    wide.write_text("10000\t65535\n")
    monkeypatch.setattr(embedded, "EPHEMERAL_RANGE_FILE", wide)
    assert len(embedded._listen_candidates()) == 0
    assert 0 < free_port() < 65536
