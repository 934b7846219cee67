"""Which replication errors and slot states mean "replace the slot" (pure decisions)."""

from __future__ import annotations

import pytest

from listeners.slot_faults import (
    OBJECT_NOT_IN_PREREQUISITE_STATE,
    UNDEFINED_OBJECT,
    SlotFault,
    SlotRow,
    Suspicion,
    fault_of_error,
    fault_of_slot,
)

PUBLICATION_ERROR = (
    'publication "coachpipe" does not exist\nCONTEXT:  slot "coachpipe", output plugin '
    '"pgoutput", in the change callback, associated LSN 0/1943E08\n'
)


@pytest.mark.parametrize(
    ("sqlstate", "message", "fault"),
    [
        (UNDEFINED_OBJECT, PUBLICATION_ERROR, SlotFault.PUBLICATION_MISSING),
        (
            OBJECT_NOT_IN_PREREQUISITE_STATE,
            'cannot read from logical replication slot "coachpipe"\nDETAIL:  This slot has been '
            "invalidated because it exceeded the maximum reserved size.\n",
            SlotFault.LOST,
        ),
        (
            OBJECT_NOT_IN_PREREQUISITE_STATE,
            'can no longer get changes from replication slot "coachpipe"',
            SlotFault.LOST,
        ),
        # A slot of another database is the operator's to sort out (doctor says how), not ours.
        (
            OBJECT_NOT_IN_PREREQUISITE_STATE,
            'replication slot "coachpipe" was not created in this database',
            None,
        ),
        (UNDEFINED_OBJECT, 'replication slot "coachpipe" does not exist', None),
        ("57P01", "terminating connection due to administrator command", None),
        (None, "server closed the connection unexpectedly", None),
    ],
)
def test_fault_of_error(sqlstate: str | None, message: str, fault: SlotFault | None) -> None:
    assert fault_of_error(sqlstate, message) is fault


HEALTHY = SlotRow(confirmed_flush_lsn="0/100", wal_status="reserved", active_pid=None)
LOST = SlotRow(confirmed_flush_lsn="0/100", wal_status="lost", active_pid=None)
MOVED = SlotRow(confirmed_flush_lsn="0/200", wal_status="reserved", active_pid=4242)
SUSPECT = Suspicion(SlotFault.PUBLICATION_MISSING, "0/100")


@pytest.mark.parametrize(
    ("slot", "had_slot", "suspicion", "fault"),
    [
        (None, False, None, None),  # first start: create, nothing to recover from
        (None, True, None, SlotFault.DROPPED),
        (None, True, SUSPECT, SlotFault.DROPPED),
        (HEALTHY, True, None, None),
        (HEALTHY, False, None, None),
        (SlotRow("0/100", "unreserved", None), True, None, None),  # at risk, still usable
        (LOST, False, None, SlotFault.LOST),
        (LOST, True, SUSPECT, SlotFault.LOST),
        (HEALTHY, True, SUSPECT, SlotFault.PUBLICATION_MISSING),
        # Replaced (or moved on) since the error by another listener: healthy, keep it.
        (MOVED, True, SUSPECT, None),
    ],
)
def test_fault_of_slot(
    slot: SlotRow | None, had_slot: bool, suspicion: Suspicion | None, fault: SlotFault | None
) -> None:
    assert fault_of_slot(slot, had_slot, suspicion) is fault
