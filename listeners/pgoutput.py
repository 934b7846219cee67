"""Decoder of PostgreSQL's built-in `pgoutput` logical replication protocol (version 1).

pgoutput ships with every PostgreSQL (no extension to install, allowed by managed services that
restrict output plugins) and follows the publication, so the publication is the one list of
watched tables. Message formats: "Logical Replication Message Formats" in the PostgreSQL docs.
Values arrive in text form; the few types routing needs are converted, the rest stay strings.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from pipeline.errors import BadEventError
from pipeline.events import ChangeEvent, ChangeType

POSTGRES_EPOCH = datetime(2000, 1, 1, tzinfo=UTC)
BOOL, INT8, INT2, INT4 = 16, 20, 21, 23
_INTEGERS = {INT8, INT2, INT4}
_BOOKKEEPING = {"O", "Y", "M"}  # Origin, Type, logical decoding Message: nothing routing needs


@dataclass(frozen=True)
class Column:
    name: str
    type_oid: int


@dataclass(frozen=True)
class Relation:
    oid: int
    namespace: str
    name: str
    columns: tuple[Column, ...]


@dataclass(frozen=True)
class Begin:
    final_lsn: int
    commit_ts: datetime
    xid: int


@dataclass(frozen=True)
class Commit:
    commit_lsn: int
    end_lsn: int
    commit_ts: datetime


class _Reader:
    def __init__(self, data: bytes) -> None:
        self.data = data
        self.at = 0

    def take(self, fmt: str) -> Any:
        (value,) = struct.unpack_from(fmt, self.data, self.at)
        self.at += struct.calcsize(fmt)
        return value

    def string(self) -> str:
        end = self.data.index(b"\0", self.at)
        value = self.data[self.at : end].decode()
        self.at = end + 1
        return value

    def raw(self, length: int) -> bytes:
        if self.at + length > len(self.data):
            raise struct.error("truncated value")
        value = self.data[self.at : self.at + length]
        self.at += length
        return value

    def timestamp(self) -> datetime:
        return POSTGRES_EPOCH + timedelta(microseconds=self.take("!q"))


def lsn_text(lsn: int) -> str:
    return f"{lsn >> 32:X}/{lsn & 0xFFFFFFFF:X}"


def _qualified(relation: Relation) -> str:
    """Tables of `public` by their bare name (as routing knows them), others qualified."""
    return (
        relation.name if relation.namespace == "public" else f"{relation.namespace}.{relation.name}"
    )


def _expect(marker: str, allowed: str) -> None:
    """A tuple's marker byte (N new, K key, O old row) is one the message kind allows."""
    if marker not in allowed:
        raise ValueError(f"tuple marker {marker!r} where {allowed!r} belongs")


def _convert(text: str, type_oid: int) -> Any:
    if type_oid in _INTEGERS:
        return int(text)
    if type_oid == BOOL:
        return text == "t"
    return text


@dataclass
class Decoder:
    """Turns pgoutput messages into `ChangeEvent`s; keeps the relation cache of one stream."""

    source: str = "postgres"
    relations: dict[int, Relation] = field(default_factory=dict)
    current: Begin | None = None

    def decode(self, message: bytes, wal_start: int) -> list[ChangeEvent] | Begin | Commit:
        """One message → its events (none for bookkeeping messages) or a transaction boundary.

        Raises `BadEventError` for a message that cannot be decoded; the stream stays usable.
        """
        try:
            return self._decode(_Reader(message), wal_start)
        except BadEventError:
            raise  # already says what is wrong (it is a ValueError too: keep its reason)
        except (struct.error, ValueError, UnicodeDecodeError, IndexError) as exc:
            kind = chr(message[0]) if message else "?"
            raise BadEventError("bad_wal_message", f"undecodable pgoutput {kind!r}: {exc}") from exc

    def _decode(self, reader: _Reader, wal_start: int) -> list[ChangeEvent] | Begin | Commit:
        kind = chr(reader.take("!B"))
        if kind == "B":
            self.current = Begin(reader.take("!Q"), reader.timestamp(), reader.take("!I"))
            return self.current
        if kind == "C":
            reader.take("!B")
            commit = Commit(reader.take("!Q"), reader.take("!Q"), reader.timestamp())
            self.current = None
            return commit
        if kind == "R":
            oid, namespace, name = reader.take("!I"), reader.string(), reader.string()
            reader.take("!B")  # replica identity setting
            columns = []
            for _ in range(reader.take("!H")):
                reader.take("!B")  # flags (part of the key)
                column_name = reader.string()
                columns.append(Column(column_name, reader.take("!I")))
                reader.take("!i")  # type modifier
            self.relations[oid] = Relation(oid, namespace, name, tuple(columns))
            return []
        if kind in "IUD":
            return [self._row_change(kind, reader, wal_start)]
        if kind == "T":
            count = reader.take("!I")
            reader.take("!B")
            oids = [reader.take("!I") for _ in range(count)]
            return [
                self._event(self._relation(oid), ChangeType.TRUNCATE, None, None, wal_start)
                for oid in oids
            ]
        if kind in _BOOKKEEPING:
            return []
        # Damage, or a protocol version we did not ask for: counted, never silently dropped.
        raise ValueError(f"unknown message kind {kind!r}")

    def _relation(self, oid: int) -> Relation:
        try:
            return self.relations[oid]
        except KeyError:
            raise BadEventError(
                "unknown_relation", f"change for unannounced relation {oid}"
            ) from None

    def _tuple(self, reader: _Reader, relation: Relation) -> dict[str, Any]:
        count = reader.take("!H")
        if count != len(relation.columns):
            raise ValueError(f"{count} values for {len(relation.columns)} columns")
        row: dict[str, Any] = {}
        for column in relation.columns:
            kind = chr(reader.take("!B"))
            if kind == "n":
                row[column.name] = None
            elif kind == "t":
                row[column.name] = _convert(reader.raw(reader.take("!I")).decode(), column.type_oid)
            elif kind == "u":
                continue  # unchanged TOASTed value: not sent
            else:
                raise ValueError(f"unsupported tuple value kind {kind!r}")
        return row

    def _event(
        self, relation: Relation, kind: ChangeType, new: Any, old: Any, wal_start: int
    ) -> ChangeEvent:
        return ChangeEvent(
            table=_qualified(relation),
            type=kind,
            new=new,
            old=old,
            commit_ts=self.current.commit_ts if self.current else None,
            position=lsn_text(wal_start),
            source=self.source,
        )

    def _row_change(self, kind: str, reader: _Reader, wal_start: int) -> ChangeEvent:
        relation = self._relation(reader.take("!I"))
        old = new = None
        marker = chr(reader.take("!B"))
        if kind == "I":
            _expect(marker, "N")
            new = self._tuple(reader, relation)
        elif kind == "D":
            _expect(marker, "KO")
            old = self._tuple(reader, relation)
        else:
            if marker in "KO":
                old = self._tuple(reader, relation)
                marker = chr(reader.take("!B"))
            _expect(marker, "N")
            new = self._tuple(reader, relation)
        change = {"I": ChangeType.INSERT, "U": ChangeType.UPDATE, "D": ChangeType.DELETE}[kind]
        return self._event(relation, change, new, old, wal_start)
