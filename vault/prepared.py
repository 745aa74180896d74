"""Prebuilt SELECTs run on the database driver's own cursor: the read routes' hot path.

SQLAlchemy Core spends about 50 microseconds of Python on every statement it executes, even
a prebuilt one whose compiled form it has cached (cache-key lookup, execution context,
parameter and result machinery, events), against about 5 for the driver's own
``cursor.execute`` and fetch (measured in BENCHMARKS.md, issue 14). An audited read runs four
to six statements, so under load that machinery was a quarter of the time a server held the
GIL for a read.

:class:`Prepared` keeps the statement written in Core (one source of truth for its SQL, typed
columns, both dialects) and compiles it once per dialect. Each run then binds the parameters
through the columns' own bind processors, executes the compiled SQL on the connection's
driver cursor, in the connection's transaction, and converts each row through the columns'
result processors: the rows carry the same Python values SQLAlchemy would have produced
(timezone-aware datetimes, enums, booleans), as named tuples. Driver errors are raised as
SQLAlchemy's own exception classes, a lost connection invalidated, as ``Connection.execute``
does, so the service layer's handling of a failing database is unchanged.

Only for statements whose SQL is fixed once compiled: one with parameters that SQLAlchemy
renders at execution time (an expanding ``IN``, say) is refused at its first run.
"""

from __future__ import annotations

import weakref
from collections import namedtuple
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from sqlalchemy import Connection
from sqlalchemy.engine import Dialect
from sqlalchemy.exc import DBAPIError
from sqlalchemy.sql import Select

__all__ = ["Prepared"]

if TYPE_CHECKING:
    # Any SELECT, whatever its columns' types (for type checkers only: SQLAlchemy 2.0's Select
    # takes one type parameter at run time, 2.1's a variable number).
    Statement = Select[*tuple[Any, ...]]


@dataclass(frozen=True)
class _Compiled:
    """One statement as one dialect runs it."""

    sql: str
    # Parameter names, in placeholder order.
    names: tuple[str, ...]
    # Whether the driver takes them as a sequence in that order (SQLite's qmark) rather than a
    # mapping (psycopg's pyformat).
    positional: bool
    # Values of the statement's own bound literals (``status == 'active'``), by name.
    constants: Mapping[str, Any]
    binders: Mapping[str, Callable[[Any], Any]]
    converters: tuple[tuple[int, Callable[[Any], Any]], ...]
    row: Callable[..., Any]


class Prepared:
    """A Core SELECT compiled once per dialect and run on the driver's cursor (see module)."""

    def __init__(self, statement: Statement) -> None:
        self.statement = statement
        # SQLAlchemy's row keys (a repeated name comes back as ``id_1``), as attributes.
        names = list(statement.selected_columns.keys())
        if not all(name.isidentifier() and not name.startswith("_") for name in names):
            raise ValueError(f"a prepared statement's columns need plain names: {names}")
        self._row = namedtuple("Row", names)  # type: ignore[misc]
        # One compiled form per live dialect (an engine's); gone with it.
        self._compiled: weakref.WeakKeyDictionary[Dialect, _Compiled] = weakref.WeakKeyDictionary()

    @classmethod
    def of(cls, statement: Statement) -> Prepared:
        """The Prepared form of a long-lived statement built at run time (a listing plan's),
        made at its first run and kept while the statement lives."""
        found = _OF.get(statement)
        if found is None:
            found = _OF[statement] = cls(statement)
        return found

    def all(self, connection: Connection, params: Mapping[str, Any]) -> list[Any]:
        """Every row, in the connection's transaction (begun here if none is open)."""
        return self._run(connection, params, None)

    def first(self, connection: Connection, params: Mapping[str, Any]) -> Any | None:
        """The first row, or None."""
        rows = self._run(connection, params, 1)
        return rows[0] if rows else None

    def scalar(self, connection: Connection, params: Mapping[str, Any]) -> Any:
        """The first column of the first row, or None when there is no row."""
        row = self.first(connection, params)
        return None if row is None else row[0]

    def sql(self, dialect: Dialect) -> str:
        """The SQL text this sends to ``dialect``'s driver."""
        return self._for(dialect).sql

    def _for(self, dialect: Dialect) -> _Compiled:
        compiled = self._compiled.get(dialect)
        if compiled is None:
            compiled = self._compiled[dialect] = self._compile(dialect)
        return compiled

    def _run(
        self, connection: Connection, params: Mapping[str, Any], limit: int | None
    ) -> list[Any]:
        dialect = connection.dialect
        compiled = self._for(dialect)
        if not connection.in_transaction():
            # Through SQLAlchemy, so its begin events run (SQLite's BEGIN, the writers' queue)
            # and the connection's commit or rollback ends what the cursor reads in.
            connection.begin()
        # Only the statement's own parameters: callers may pass a superset (a listing's
        # probe takes two of its page's five).
        bound = {
            name: params[name] if name in params else compiled.constants[name]
            for name in compiled.names
        }
        for name, binder in compiled.binders.items():
            bound[name] = binder(bound[name])
        arguments: Sequence[Any] | Mapping[str, Any] = (
            tuple(bound[name] for name in compiled.names) if compiled.positional else bound
        )
        dbapi_connection = connection.connection.dbapi_connection
        assert dbapi_connection is not None  # a checked-out, valid connection
        cursor = dbapi_connection.cursor()
        try:
            cursor.execute(compiled.sql, arguments)
            fetched = cursor.fetchall() if limit is None else cursor.fetchmany(limit)
        except dialect.loaded_dbapi.Error as exc:
            lost = dialect.is_disconnect(exc, dbapi_connection, cursor)
            if lost:
                connection.invalidate(exc)
            raise DBAPIError.instance(
                compiled.sql,
                arguments,
                exc,
                dialect.loaded_dbapi.Error,
                connection_invalidated=lost,
                dialect=dialect,
            ) from exc
        finally:
            cursor.close()
        return [self._converted(compiled, raw) for raw in fetched]

    @staticmethod
    def _converted(compiled: _Compiled, raw: Sequence[Any]) -> Any:
        if not compiled.converters:
            return compiled.row(*raw)
        values = list(raw)
        for index, convert in compiled.converters:
            values[index] = convert(values[index])
        return compiled.row(*values)

    def _compile(self, dialect: Dialect) -> _Compiled:
        compiled: Any = self.statement.compile(dialect=dialect)
        if "POSTCOMPILE" in compiled.string or compiled.escaped_bind_names:
            raise ValueError("a prepared statement's SQL must be fixed once compiled")
        binders: dict[str, Callable[[Any], Any]] = {}
        constants: dict[str, Any] = {}
        for bind, name in compiled.bind_names.items():
            if not bind.required:
                constants[name] = bind.effective_value
            binder = bind.type.dialect_impl(dialect).bind_processor(dialect)
            if binder is not None:
                binders[name] = binder
        converters = []
        for index, column in enumerate(self.statement.selected_columns):
            convert = column.type.dialect_impl(dialect).result_processor(dialect, None)
            if convert is not None:
                converters.append((index, convert))
        return _Compiled(
            sql=compiled.string,
            names=(
                tuple(compiled.positiontup)
                if compiled.positional
                else tuple(dict.fromkeys(compiled.bind_names.values()))
            ),
            positional=bool(compiled.positional),
            constants=constants,
            binders=binders,
            converters=tuple(converters),
            row=self._row,
        )


_OF: weakref.WeakKeyDictionary[Statement, Prepared] = weakref.WeakKeyDictionary()
