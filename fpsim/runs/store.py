"""The sweep store: one SQLite file holding one row per training run, and the claims of runs in progress.

Each row of ``runs`` is a finished run, keyed by the stable hash of its configuration
(``fpsim.runs.sweep.config_key``)::

    runs(key TEXT PRIMARY KEY, config TEXT, status TEXT, error TEXT, result TEXT)
    claims(key TEXT PRIMARY KEY, owner TEXT, host TEXT, pid INTEGER, started REAL)

``config`` is the full configuration as JSON (every ``fpsim.train`` argument,
defaults included), ``status`` is ``"ok"`` or ``"failed"``, ``error`` is the
failed run's ``"ExceptionType: message"`` (NULL when ok), and ``result`` is the
``TrainResult.to_dict()`` JSON (NULL when failed).

Only the coordinating process writes, one transaction per finished run, so a
sweep killed at any moment leaves every run it finished stored and nothing
half-written.  A store locked by another process is waited for, with backoff,
for up to ``LOCK_PATIENCE`` seconds.  A failed run is stored too, and replaced when it is rerun; a key
is never stored twice.  ``path=None`` gives an in-memory store (nothing kept).

Sweeps sharing a store share its work: a sweep claims a run (``RunStore.claim``)
before running it, in one ``BEGIN IMMEDIATE`` transaction that reads and writes
the claim, so two sweeps never both claim one run.  A claim names its sweep
(``owner``, random per ``RunStore``), host, process id and start time (Unix
seconds); it is dropped with the run's result, in the same transaction, and a
sweep's remaining claims when it closes the store.  A claim held by another live
sweep is left to it; one whose process is gone (killed: it could not drop its
claims) is taken over.  Whether a process lives is known on its own host only: a
claim from another host counts as live (delete its row to free it).
"""

from __future__ import annotations

import json
import os
import socket
import sqlite3
import time
import uuid
from pathlib import Path

COLUMNS = ("key", "config", "status", "error", "result")
"""The columns of the ``runs`` table, which are also the keys of each record."""

_SCHEMA = """CREATE TABLE IF NOT EXISTS runs (
    key TEXT PRIMARY KEY,
    config TEXT NOT NULL,
    status TEXT NOT NULL CHECK (status IN ('ok', 'failed')),
    error TEXT,
    result TEXT)"""

_CLAIMS_SCHEMA = """CREATE TABLE IF NOT EXISTS claims (
    key TEXT PRIMARY KEY,
    owner TEXT NOT NULL,
    host TEXT NOT NULL,
    pid INTEGER NOT NULL,
    started REAL NOT NULL)"""

CLAIM_COLUMNS = ("key", "owner", "host", "pid", "started")
"""The columns of the ``claims`` table."""

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
        self.owner, self.host, self.pid = uuid.uuid4().hex, socket.gethostname(), os.getpid()
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
        _check_table(self._connection, self.path, "claims", CLAIM_COLUMNS)
        with self._connection:
            self._connection.execute(_SCHEMA)
            self._connection.execute(_CLAIMS_SCHEMA)

    def _transaction(self, body, what: str):
        """``body(connection)`` in one write transaction, taken at once (BEGIN IMMEDIATE), retried while locked."""
        def attempt():
            with self._connection:
                self._connection.execute("BEGIN IMMEDIATE")
                return body(self._connection)
        return _patiently(attempt, f"{what} in {self.path}")

    def claim(self, key: str) -> tuple[str, dict | None]:
        """Claim the run ``key`` for this sweep before running it.

        Returns ``("claimed", None)`` when this sweep may run it (unclaimed, claimed by
        this sweep already, or claimed by a process that is gone); ``("finished",
        record)`` when it is stored as ok meanwhile; ``("held", claim)`` when another
        live sweep holds it (``claim``: its ``CLAIM_COLUMNS`` but the key).
        """
        def claim_in(connection):
            row = connection.execute(f"SELECT {', '.join(COLUMNS)} FROM runs WHERE key = ? AND status = 'ok'",
                                     (key,)).fetchone()
            if row is not None:
                return "finished", _record(row, self.path)
            held = connection.execute("SELECT owner, host, pid, started FROM claims WHERE key = ?",
                                      (key,)).fetchone()
            if held is not None and held[0] != self.owner and self._alive(held[1], held[2]):
                return "held", dict(zip(CLAIM_COLUMNS[1:], held))
            connection.execute("INSERT OR REPLACE INTO claims (key, owner, host, pid, started) VALUES (?, ?, ?, ?, ?)",
                               (key, self.owner, self.host, self.pid, time.time()))
            return "claimed", None
        return self._transaction(claim_in, "cannot claim a run")

    def _alive(self, host: str, pid: int) -> bool:
        """Whether the process ``pid`` of ``host`` may still run a sweep (on another host: assumed so)."""
        if host != self.host:
            return True
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:  # it exists, under another user
            return True
        except OSError:  # a pid this system cannot even name
            return False
        return True

    def release(self) -> None:
        """Drop every claim of this sweep that no stored result dropped (an interrupted or failed sweep)."""
        self._transaction(lambda connection: connection.execute("DELETE FROM claims WHERE owner = ?", (self.owner,)),
                          "cannot release the claims")

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

        def upsert(connection):
            connection.execute(_UPSERT, values)
            connection.execute("DELETE FROM claims WHERE key = ? AND owner = ?", (record["key"], self.owner))
        self._transaction(upsert, "cannot store a finished run")

    def close(self) -> None:
        """Release this sweep's claims and close the file."""
        try:
            self.release()
        finally:
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


def _check_table(connection: sqlite3.Connection, path, table: str = "runs", expected: tuple = COLUMNS) -> None:
    """Refuse a database whose ``table`` is not a sweep store's (reads only)."""
    columns = tuple(row[1] for row in connection.execute(f"PRAGMA table_info({table})"))
    if columns and columns != expected:
        raise ValueError(f"{path} has a '{table}' table that is not a sweep store's (columns {', '.join(columns)})")


def _record(row: tuple, path) -> dict:
    key, config, status, error, result = row
    try:
        return {"key": key, "config": json.loads(config), "status": status, "error": error,
                "result": None if result is None else json.loads(result)}
    except (ValueError, TypeError) as problem:
        raise ValueError(f"{path}: the stored run {str(key)[:16]} is corrupt ({type(problem).__name__}); "
                         "delete that row or use another store") from None
