"""What is wrong with the replication slot, decided from PostgreSQL's answers (pure).

A slot can break in ways no retry fixes: its publication did not exist at the slot's position
(the slot was created before `coachpipe migrate`, or the publication was dropped and
re-created), or the server invalidated it (`wal_status = lost`: `max_slot_wal_keep_size`, or
PostgreSQL 18's `idle_replication_slot_timeout`), or someone dropped it. The listener then
replaces the slot and refreshes every coach; these functions say when, and never for a slot
that can still stream.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

UNDEFINED_OBJECT = "42704"
OBJECT_NOT_IN_PREREQUISITE_STATE = "55000"


class SlotFault(StrEnum):
    """Why a slot is replaced: the `reason` label of `coachpipe_slot_recreated_total`."""

    PUBLICATION_MISSING = "publication_missing_at_position"
    LOST = "slot_lost"
    DROPPED = "slot_dropped"


@dataclass(frozen=True)
class SlotRow:
    """The slot's line in `pg_replication_slots`."""

    confirmed_flush_lsn: str | None
    wal_status: str | None
    active_pid: int | None


def fault_of_error(sqlstate: str | None, message: str) -> SlotFault | None:
    """The fault a replication error reveals, or None for errors a reconnect may cure."""
    if sqlstate == UNDEFINED_OBJECT and message.startswith("publication "):
        return SlotFault.PUBLICATION_MISSING
    if sqlstate == OBJECT_NOT_IN_PREREQUISITE_STATE and (
        "can no longer get changes" in message or "has been invalidated" in message
    ):
        return SlotFault.LOST
    return None


@dataclass(frozen=True)
class Suspicion:
    """A fault seen while streaming, with the slot as it was then (to recognise it later)."""

    fault: SlotFault
    confirmed_flush_lsn: str | None


def fault_of_slot(
    slot: SlotRow | None, had_slot: bool, suspicion: Suspicion | None
) -> SlotFault | None:
    """Why the slot must be replaced before streaming, or None to stream from it (or, when
    there is no slot and never was one, to create the first).

    A suspicion only condemns the very slot it was raised on: a slot with another confirmed
    position was made (or moved) since, by another listener, and may be healthy.
    """
    if slot is None:
        return SlotFault.DROPPED if had_slot else None
    if slot.wal_status == "lost":
        return SlotFault.LOST
    if suspicion is not None and suspicion.confirmed_flush_lsn == slot.confirmed_flush_lsn:
        return suspicion.fault
    return None
