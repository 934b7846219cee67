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
from pipeline.redis_values import as_text

AS_OF_FIELD = "as_of"
"""The field holding the database clock of the value's snapshot (`StoredAggregate.as_of`)."""
HASH_FIELDS = ("version", "computed_at", "schema", "value", AS_OF_FIELD)
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

    @cached_property
    def value(self) -> JSONValue:
        parsed: JSONValue = orjson.loads(self.value_json)
        return parsed

    def to_hash(self) -> dict[str, str | int | bytes]:
        """The hash fields and values, in `HASH_FIELDS` order."""
        values = (
            self.version,
            self.computed_at.isoformat(),
            self.schema_version,
            self.value_json,
            self.as_of.isoformat(),
        )
        return dict(zip(HASH_FIELDS, values, strict=True))

    @classmethod
    def from_hash(
        cls, coach_id: UUID, aggregate: str, fields: Sequence[Any]
    ) -> StoredAggregate | None:
        """Decode HMGET of `HASH_FIELDS`; None when nothing is stored."""
        if fields[0] is None:
            return None
        version, computed_at, schema, value, as_of = fields
        return cls(
            coach_id=coach_id,
            aggregate=aggregate,
            version=int(version),
            computed_at=datetime.fromisoformat(as_text(computed_at)),
            as_of=datetime.fromisoformat(as_text(as_of)),
            schema_version=int(schema),
            value_json=value if isinstance(value, bytes) else as_text(value).encode(),
        )

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
