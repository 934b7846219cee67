"""One stored aggregate and the layout of the Redis hash that holds it.

The layout is defined here only: `pipeline.store` writes `to_hash()`, `pipeline.read` and the
read API decode what HMGET of `HASH_FIELDS` returns with `from_hash()`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from functools import cached_property
from typing import Any
from uuid import UUID

import orjson

from pipeline.aggregates import JSONValue
from pipeline.aggregates.delta import Base, SnapshotId
from pipeline.redis_values import as_text

AS_OF_FIELD = "as_of"
"""The field holding the database clock of the value's snapshot (`StoredAggregate.as_of`)."""
SNAPSHOT_FIELD = "snapshot"
"""The snapshot an incremental aggregate's value was computed from (`SnapshotId.encode`; empty
for the others, and when unknown), for an incremental recompute to start from (`as_base`)."""
HASH_FIELDS = ("version", "computed_at", "schema", "value", AS_OF_FIELD, SNAPSHOT_FIELD)
"""The hash's fields, `version` first: the store's script compares it before writing."""


@dataclass(frozen=True)
class StoredAggregate:
    coach_id: UUID
    aggregate: str
    version: int
    computed_at: datetime
    as_of: datetime
    """The database clock of the snapshot the value was computed from."""
    schema_version: int
    value_json: bytes
    """The value as the worker wrote it (JSON), so the read API can send it without parsing."""
    snapshot: str = ""
    """`version_snapshot` of the value's transaction; empty when not kept or unknown."""

    @cached_property
    def value(self) -> JSONValue:
        parsed: JSONValue = orjson.loads(self.value_json)
        return parsed

    def to_hash(self) -> dict[str, str | int | bytes]:
        """The hash fields and values, in `HASH_FIELDS` order (the snapshot always written, so a
        value never keeps the snapshot of the one it replaced)."""
        values = (
            self.version,
            self.computed_at.isoformat(),
            self.schema_version,
            self.value_json,
            self.as_of.isoformat(),
            self.snapshot,
        )
        return dict(zip(HASH_FIELDS, values, strict=True))

    @classmethod
    def from_hash(
        cls, coach_id: UUID, aggregate: str, fields: Sequence[Any]
    ) -> StoredAggregate | None:
        """Decode HMGET of `HASH_FIELDS`; None when nothing is stored."""
        if fields[0] is None:
            return None
        version, computed_at, schema, value, as_of, snapshot = fields
        return cls(
            coach_id=coach_id,
            aggregate=aggregate,
            version=int(version),
            computed_at=datetime.fromisoformat(as_text(computed_at)),
            as_of=datetime.fromisoformat(as_text(as_of)),
            schema_version=int(schema),
            value_json=value if isinstance(value, bytes) else as_text(value).encode(),
            snapshot=as_text(snapshot) if snapshot is not None else "",
        )

    def as_base(self, schema_version: int) -> Base | None:
        """The value as the base of an incremental recompute (`pipeline.aggregates.delta`), or
        None: its schema is not `schema_version`, its snapshot unknown, not one Postgres would
        accept or another version's (`version_snapshot`), its clock without a time zone or its
        JSON unreadable (then it is read in full, never failing)."""
        token, _, version = self.snapshot.rpartition("#")
        taken = SnapshotId.decode(token) if version == str(self.version) else None
        if taken is None or self.schema_version != schema_version or self.as_of.tzinfo is None:
            return None
        try:
            value = self.value
        except orjson.JSONDecodeError:
            return None
        return Base(value, self.as_of, taken) if isinstance(value, dict) else None

    def as_json(self) -> dict[str, Any]:
        return {
            "coach_id": str(self.coach_id),
            "aggregate": self.aggregate,
            "version": self.version,
            "computed_at": self.computed_at.isoformat(),
            "as_of": self.as_of.isoformat(),
            "schema_version": self.schema_version,
            "value": self.value,
        }


def version_snapshot(taken: str | None, version: int) -> str:
    """The snapshot field of a value at `version` computed in the snapshot `taken`
    (`SnapshotId.encode`; none: empty): `<taken>#<version>`. A worker of an earlier release
    rewrites a value without this field; the version in it then no longer matches the hash's,
    and the snapshot it names is never taken for the new value's (`as_base`)."""
    return f"{taken}#{version}" if taken else ""
