"""The client registry as arrays: one NumPy column per field, indexed by client id.

A run of 100,000 clients kept a :class:`~fedhpc.types.ClientProfile` and a
:class:`~fedhpc.types.ClientHistory` object per client on rank 0 (and the
profiles again on every trainer rank): about a kilobyte each and seconds to
build. A :class:`ClientTable` holds the same records as columns (8 bytes per
field and client), which is also how checkpoints store them, and hands out
light row views with the dataclass's attribute names, so selectors and the
client step read and update ``table[c].selected`` as before.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, MutableMapping
from typing import Any, Generic, TypeVar

import numpy as np

T = TypeVar("T")

_NONE_FLOAT = "float | None"


def _column_dtype(tp: Any) -> np.dtype:
    if tp in ("bool", bool):
        return np.dtype(np.bool_)
    if tp in ("int", int):
        return np.dtype(np.int64)
    if tp in ("float", float, _NONE_FLOAT):
        return np.dtype(np.float64)
    raise TypeError(f"a ClientTable column cannot hold {tp!r}")


def _rows(cls: type) -> type:
    """The row-view class of ``cls``: a property per field, reading and writing its column
    (None is NaN in a ``float | None`` column)."""

    def field_property(name: str, optional: bool, kind: type) -> property:
        def get(row: Any) -> Any:
            v = row._table.columns[name][row._index]
            if optional and np.isnan(v):
                return None
            return kind(v)

        def put(row: Any, value: Any) -> None:
            row._table.columns[name][row._index] = np.nan if value is None else value

        return property(get, put)

    ns: dict[str, Any] = {"__slots__": ("_table", "_index")}
    for f in dataclasses.fields(cls):
        kind = {np.dtype(np.bool_): bool, np.dtype(np.int64): int}.get(_column_dtype(f.type), float)
        ns[f.name] = field_property(f.name, f.type == _NONE_FLOAT, kind)

    def init(row: Any, table: ClientTable, index: int) -> None:
        row._table, row._index = table, index

    def as_record(row: Any) -> Any:
        return cls(**{f.name: getattr(row, f.name) for f in dataclasses.fields(cls)})

    def rep(row: Any) -> str:
        return f"{cls.__name__}Row({as_record(row)!r})"

    ns.update(__init__=init, record=as_record, __repr__=rep)
    return type(f"{cls.__name__}Row", (), ns)


class ClientTable(MutableMapping[int, T], Generic[T]):
    """Records of the dataclass ``cls`` for clients ``0 .. n-1``, one column per field.

    Every id in range has a record (the dataclass's defaults until set), so
    ``setdefault`` only returns the row and no record can be deleted. Rows are
    views: a row's attributes read and write the columns, ``table[c] = record``
    writes a whole record, :meth:`record` copies one into a plain ``cls``.
    """

    def __init__(self, cls: type[T], n: int, columns: dict[str, np.ndarray] | None = None):
        self.cls, self.n = cls, n
        self._row = _rows(cls)
        fields = dataclasses.fields(cls)  # type: ignore[arg-type]
        if columns is None:
            columns = {}
            for f in fields:
                default = f.default if f.default is not dataclasses.MISSING else 0
                columns[f.name] = np.full(n, np.nan if default is None else default, dtype=_column_dtype(f.type))
            if "client_id" in columns:
                columns["client_id"][:] = np.arange(n)
        missing = {f.name for f in fields} - columns.keys()
        if missing or any(len(c) != n for c in columns.values()):
            raise ValueError(f"{cls.__name__} table of {n} clients needs a column of {n} for each field; missing "
                             f"{sorted(missing)}")
        self.columns = {f.name: np.ascontiguousarray(columns[f.name], dtype=_column_dtype(f.type)) for f in fields}

    def __len__(self) -> int:
        return self.n

    def __iter__(self) -> Iterator[int]:
        return iter(range(self.n))

    def __contains__(self, cid: object) -> bool:
        return isinstance(cid, (int, np.integer)) and 0 <= int(cid) < self.n

    def __getitem__(self, cid: int) -> T:
        if not 0 <= cid < self.n:
            raise KeyError(cid)
        return self._row(self, int(cid))

    def __setitem__(self, cid: int, record: T) -> None:
        row = self[cid]
        for f in dataclasses.fields(self.cls):  # type: ignore[arg-type]
            setattr(row, f.name, getattr(record, f.name))

    def __delitem__(self, cid: int) -> None:
        raise TypeError("a ClientTable holds a record for every client id: none can be deleted")

    def setdefault(self, cid: int, default: T | None = None) -> T:
        """The row of ``cid`` (every client has one)."""
        return self[cid]

    def record(self, cid: int) -> T:
        """A plain copy of ``cid``'s record."""
        return self[cid].record()  # type: ignore[attr-defined]
