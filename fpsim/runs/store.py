"""The sweep store: one SQLite file holding one row per training run.

Each row is a finished run, keyed by the stable hash of its configuration
(``fpsim.sweep.config_key``)::

    runs(key TEXT PRIMARY KEY, config TEXT, status TEXT, error TEXT, result TEXT)

``config`` is the full configuration as JSON (every ``fpsim.train`` argument,
defaults included), ``status`` is ``"ok"`` or ``"failed"``, ``error`` is the
failed run's ``"ExceptionType: message"`` (NULL when ok), and ``result`` is the
``TrainResult.to_dict()`` JSON (NULL when failed).

Only the coordinating process writes, one transaction per finished run, so a
sweep killed at any moment leaves every run it finished stored and nothing
half-written.  A store locked by another process is waited for, with backoff,
for up to ``LOCK_PATIENCE`` seconds.  A failed run is stored too, and replaced when it is rerun; a key
is never stored twice.  ``path=None`` gives an in-memory store (nothing kept).
"""

from __future__ import annotations

import json
import os
import sqlite3
import time
from pathlib import Path

COLUMNS = ("key", "config", "status", "error", "result")
"""The columns of the ``runs`` table, which are also the keys of each record."""

_SCHEMA = """CREATE TABLE IF NOT EXISTS runs (
    key TEXT PRIMARY KEY,
    config TEXT NOT NULL,
    status TEXT NOT NULL CHECK (status IN ('ok', 'failed')),
    error TEXT,
    result TEXT)"""

_UPSERT = """INSERT INTO runs (key, config, status, error, result) VALUES (?, ?, ?, ?, ?)
    ON CONFLICT(key) DO UPDATE SET config = excluded.config, status = excluded.status,
    error = excluded.error, result = excluded.result"""


LOCK_PATIENCE = 300.0
"""Seconds a write waits, retrying with backoff, for a store that another process holds locked."""


def _patiently(action, what: str):
    """Run ``action()``, retrying with exponential backoff while the database is locked or busy."""
    delay, waited = 0.05, 0.0
    while True:
        try:
            return action()
        except sqlite3.OperationalError as error:
            if "locked" not in str(error) and "busy" not in str(error):
                raise
            if waited >= LOCK_PATIENCE:
                raise ValueError(f"{what}: the store stayed locked by another process for {waited:.0f} s") from None
            time.sleep(delay)
            waited += delay
            delay = min(delay * 2, 5.0)


class RunStore:
    """A sweep store opened for writing by the coordinating process (a context manager)."""

    def __init__(self, path: str | os.PathLike | None):
        self.path = ":memory:" if path is None else os.fspath(path)
        try:
            self._connection = sqlite3.connect(self.path)
        except sqlite3.Error as error:
            raise ValueError(f"cannot open the sweep store {self.path}: {error}") from None
        try:
            _patiently(self._create, f"cannot open the sweep store {self.path}")
        except sqlite3.Error as error:
            self._connection.close()
            raise ValueError(f"{self.path} is not a usable sweep store: {error}") from None
        except ValueError:
            self._connection.close()
            raise

    def _create(self) -> None:
        _check_table(self._connection, self.path)
        with self._connection:
            self._connection.execute(_SCHEMA)

    def finished(self, keys) -> dict[str, dict]:
        """The stored successful runs among ``keys``, as records by key.

        Failed runs are not finished: a rerun retries them.  Only the wanted rows
        are parsed (a result with its step history is about 0.7 kB per step).
        """
        wanted = set(keys)
        rows = _patiently(lambda: self._connection.execute(
            f"SELECT {', '.join(COLUMNS)} FROM runs WHERE status = 'ok'").fetchall(), f"cannot read {self.path}")
        return {row[0]: _record(row, self.path) for row in rows if row[0] in wanted}

    def write(self, record: dict) -> None:
        """Store one finished run in its own transaction; ``record`` has the keys ``COLUMNS``."""
        result = None if record["result"] is None else json.dumps(record["result"])
        values = (record["key"], json.dumps(record["config"], sort_keys=True), record["status"], record["error"],
                  result)

        def upsert():
            with self._connection:
                self._connection.execute(_UPSERT, values)
        _patiently(upsert, f"cannot store a finished run in {self.path}")

    def close(self) -> None:
        self._connection.close()

    def __enter__(self) -> RunStore:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()


def load_sweep(store: str | os.PathLike) -> list[dict]:
    """Every run in the sweep store ``store``, in the order they finished first.

    Each run is a dict with the keys ``key`` (the configuration's hash),
    ``config`` (the full ``fpsim.train`` arguments), ``status`` (``"ok"`` or
    ``"failed"``), ``error`` (a one-line message, or None) and ``result`` (the
    ``TrainResult.to_dict()`` dict, with ``test_accuracy`` among its keys, or None).
    The file is opened read-only.
    """
    path = Path(store)
    if not path.is_file():
        raise FileNotFoundError(f"no sweep store at {path}")
    try:
        connection = sqlite3.connect(path.resolve().as_uri() + "?mode=ro", uri=True)
        try:
            _check_table(connection, path)
            rows = connection.execute(f"SELECT {', '.join(COLUMNS)} FROM runs ORDER BY rowid").fetchall()
        finally:
            connection.close()
    except sqlite3.Error as error:
        raise ValueError(f"{path} is not a usable sweep store: {error}") from None
    return [_record(row, path) for row in rows]


def _check_table(connection: sqlite3.Connection, path) -> None:
    """Refuse a database whose ``runs`` table is not a sweep store's (reads only)."""
    columns = tuple(row[1] for row in connection.execute("PRAGMA table_info(runs)"))
    if columns and columns != COLUMNS:
        raise ValueError(f"{path} has a 'runs' table that is not a sweep store's (columns {', '.join(columns)})")


def _record(row: tuple, path) -> dict:
    key, config, status, error, result = row
    try:
        return {"key": key, "config": json.loads(config), "status": status, "error": error,
                "result": None if result is None else json.loads(result)}
    except (ValueError, TypeError) as problem:
        raise ValueError(f"{path}: the stored run {str(key)[:16]} is corrupt ({type(problem).__name__}); "
                         "delete that row or use another store") from None
