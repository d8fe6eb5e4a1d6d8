"""The results store: one SQLite file (stdlib ``sqlite3``, WAL journal), read back as pandas.

Tables
------
``runs``           one row per run, keyed by the hash of its full spec: status (running / done /
                   failed), start and end times, wall time, environment, final metrics, error.
``epochs``         per-epoch history (stage, epoch, metrics as JSON).
``samples``        one row per training-pool sample of a finished run: dataset index, clean and
                   observed label, is_noisy.
``sample_values``  per-sample scalars a method recorded (weight, score, kept ...), long format.
``arrays``         per-sample vectors a method recorded (e.g. CurveNet's curves), as .npy blobs.

Every write that finishes a run is one transaction: the run turns ``done`` together with its
metrics, history and per-sample rows, or not at all. A run killed mid-way stays ``running`` (never
``done``) and is trained again by the next ``bench run``. The store imports no torch.

``bench merge --runs-only`` (:meth:`Store.merge_from`) copies runs without their rows in the
per-sample tables: a store a few hundred times smaller, to publish beside results.
"""

from __future__ import annotations

import io
import json
import os
import sqlite3
import time
import urllib.parse
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pandas as pd

from bench.errors import BenchError

APPLICATION_ID = 0x52574254  # "RWBT": marks a file as a reweight-bench store
SCHEMA_VERSION = 1
DEFAULT_STORE = "bench_results.sqlite"

SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    key TEXT PRIMARY KEY,
    method TEXT NOT NULL,
    display_name TEXT NOT NULL,
    dataset TEXT NOT NULL,
    imbalance REAL NOT NULL,
    noise_type TEXT NOT NULL,
    noise_rate REAL NOT NULL,
    seed INTEGER NOT NULL,
    preset TEXT NOT NULL,
    model TEXT NOT NULL,
    spec_json TEXT NOT NULL,
    status TEXT NOT NULL CHECK (status IN ('running', 'done', 'failed')),
    attempts INTEGER NOT NULL DEFAULT 0,
    started REAL,
    ended REAL,
    wall_s REAL,
    env_json TEXT,
    metrics_json TEXT,
    error TEXT
);
CREATE TABLE IF NOT EXISTS epochs (
    run_key TEXT NOT NULL REFERENCES runs(key) ON DELETE CASCADE,
    stage TEXT NOT NULL,
    epoch INTEGER NOT NULL,
    metrics_json TEXT NOT NULL,
    PRIMARY KEY (run_key, stage, epoch)
);
CREATE TABLE IF NOT EXISTS samples (
    run_key TEXT NOT NULL REFERENCES runs(key) ON DELETE CASCADE,
    sample_index INTEGER NOT NULL,
    dataset_index INTEGER NOT NULL,
    clean_label INTEGER NOT NULL,
    observed_label INTEGER NOT NULL,
    is_noisy INTEGER NOT NULL,
    PRIMARY KEY (run_key, sample_index)
);
CREATE TABLE IF NOT EXISTS sample_values (
    run_key TEXT NOT NULL REFERENCES runs(key) ON DELETE CASCADE,
    name TEXT NOT NULL,
    sample_index INTEGER NOT NULL,
    value REAL,
    PRIMARY KEY (run_key, name, sample_index)
);
CREATE TABLE IF NOT EXISTS arrays (
    run_key TEXT NOT NULL REFERENCES runs(key) ON DELETE CASCADE,
    name TEXT NOT NULL,
    data BLOB NOT NULL,
    PRIMARY KEY (run_key, name)
);
"""

class StoreNotWritable(BenchError):
    """The store exists but this process cannot write it (a read-only file or directory)."""


class StoreInUse(BenchError):
    """Another ``bench run`` holds the store's writer lock."""


def lock_path(path) -> Path:
    """The store's writer lock: beside the file the store's path resolves to (a store reached
    through a symlink has one lock)."""
    return Path(str(Path(path).resolve()) + ".lock")


@contextmanager
def writer_lock(path):
    """Hold ``STORE.lock`` (an exclusive ``flock``) while a ``bench run`` may write the store, so
    that a second ``bench run`` on it is refused (:class:`StoreInUse`) instead of training the same
    runs and overwriting the first one's results. The kernel drops the lock when the process ends,
    however it ends; the small file stays (removing it would race with a process about to take it).
    Where the lock file cannot be created (a read-only directory: nothing will be written), or on a
    system without ``fcntl``, nothing is locked."""
    try:
        import fcntl
    except ImportError:  # not POSIX
        yield
        return
    target = lock_path(path)
    try:
        fd = os.open(target, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError:
        yield
        return
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = os.pread(fd, 200, 0).decode(errors="replace").strip() or "another process"
            raise StoreInUse(f"store {path} is being written by another `bench run` ({holder}); wait for it to "
                             "finish, or give this one another --store") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()} on {os.uname().nodename}, since {time.strftime('%Y-%m-%d %H:%M:%S')}"
                  .encode(), 0)
        yield
    finally:
        os.close(fd)  # releases the lock


SPEC_COLUMNS = ("method", "dataset", "imbalance", "noise_type", "noise_rate", "seed", "preset", "model")
RUN_TABLES = ("epochs", "samples", "sample_values", "arrays")  # a run's rows beside its row in runs
PER_SAMPLE_TABLES = RUN_TABLES[1:]  # what `bench merge --runs-only` leaves out
RUNS_ONLY = "copied by `bench merge --runs-only`, which leaves per-sample rows out"  # why a done run has none


class Store:
    """A reweight-bench results store at ``path``.

    The default (``create=True``) is a writer, as ``bench run``: the store is created on first
    use, and a file or directory it cannot write to is a one-line error before anything runs.
    ``create=False`` is a reader (``bench table``, ``bench plot``): the store must exist, and one
    on a read-only file or share is opened read-only.
    """

    def __init__(self, path: str | os.PathLike = DEFAULT_STORE, *, create: bool = True):
        self.path = Path(path)
        parent = self.path.parent if str(self.path.parent) else Path(".")
        if not parent.is_dir():
            problem = "is not a directory" if parent.exists() else "does not exist"
            raise BenchError(f"cannot use the store {self.path}: {parent} {problem}")
        if not self.path.exists() and not create:
            raise BenchError(f"no results store at {self.path} (run `python -m bench run` first, or pass --store)")
        if self.path.is_dir():
            raise BenchError(f"store path {self.path} is a directory, not a file")
        dir_writable = os.access(parent, os.W_OK)
        if not self.path.exists() and not dir_writable:
            raise BenchError(f"cannot create the store {self.path}: directory {parent} is not writable")
        # SQLite's WAL journal writes two files beside the store (-wal, -shm): a writer needs both
        # the file and its directory writable
        file_writable = not self.path.exists() or os.access(self.path, os.W_OK)
        if create and not (file_writable and dir_writable):
            where = parent if file_writable else self.path
            raise StoreNotWritable(f"store {self.path} is not writable ({where} is read-only); "
                                   "copy it somewhere writable or pass another --store")
        self.writable = file_writable and dir_writable
        existed = self.path.exists()
        self._depth = 0  # transactions open (an inner one joins the outer: see transaction)
        self.conn = None
        try:
            self.conn = self._connect(file_writable, dir_writable)
            self.conn.execute("PRAGMA foreign_keys = ON")
            self._check_and_init(create)
        except BaseException as exc:
            if self.conn is not None:
                self.conn.close()
            if isinstance(exc, sqlite3.DatabaseError) and not existed:
                raise BenchError(f"cannot create the store {self.path} ({exc})") from None
            if isinstance(exc, sqlite3.DatabaseError):
                raise BenchError(f"{self.path} is not a readable reweight-bench store ({exc})") from None
            raise

    def _connect(self, file_writable: bool, dir_writable: bool) -> sqlite3.Connection:
        if file_writable and dir_writable:
            return sqlite3.connect(self.path, timeout=60, isolation_level=None)
        # A store on a read-only file or share. Read-only WAL needs the -shm file: where SQLite
        # cannot create it, read the file as immutable (nobody writes it: a writer needs the file
        # and the directory writable); a read-only file is read as immutable at once, so that
        # no -wal or -shm file is left beside it. But not where a -wal file beside it holds
        # writes not yet in the file (a writer killed, or one still running as its owner): an
        # immutable read ignores them, and the last runs would be silently missing.
        uri = "file:" + urllib.parse.quote(str(self.path.resolve())) + "?mode=ro"
        wal = self.path.with_name(self.path.name + "-wal")
        pending = wal.is_file() and wal.stat().st_size > 0
        if file_writable or pending:
            conn = sqlite3.connect(uri, uri=True, timeout=60, isolation_level=None)
            try:
                conn.execute("SELECT count(*) FROM sqlite_master").fetchone()
                return conn
            except sqlite3.OperationalError:  # 'attempt to write a readonly database': no -shm
                conn.close()
        if pending:
            raise BenchError(f"{wal} holds runs not yet written into {self.path}, which this user cannot "
                             f"read (SQLite needs {self.path.name}-shm beside it); run any bench command on the "
                             "store as a user who can write it, or copy the store with its -wal file")
        return sqlite3.connect(uri + "&immutable=1", uri=True, timeout=60, isolation_level=None)

    def _check_and_init(self, create: bool) -> None:
        app_id = self.conn.execute("PRAGMA application_id").fetchone()[0]
        tables = {r[0] for r in self.conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        if app_id != APPLICATION_ID and tables:
            raise BenchError(f"{self.path} is an SQLite file of another program, not a reweight-bench store")
        version = self.conn.execute("PRAGMA user_version").fetchone()[0]
        if app_id == APPLICATION_ID and version > SCHEMA_VERSION:
            raise BenchError(f"{self.path} was written by a newer reweight-bench (schema {version})")
        if not tables:
            if not create:  # an empty file (or an empty SQLite database): nothing to read, nothing written
                raise BenchError(f"{self.path} is empty, not a reweight-bench store (run `python -m bench run` first)")
            if not os.access(self.path, os.W_OK):
                raise BenchError(f"store {self.path} is not writable")
            self.conn.execute("PRAGMA journal_mode = WAL")
            with self.transaction():
                for statement in _statements(SCHEMA):
                    self.conn.execute(statement)
                self.conn.execute(f"PRAGMA application_id = {APPLICATION_ID}")
                self.conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")

    def close(self) -> None:
        self.conn.close()

    @contextmanager
    def transaction(self):
        """BEGIN IMMEDIATE ... COMMIT, rolled back on any exception (including KeyboardInterrupt).
        One opened inside another joins it: ``with store.transaction(): store.finish(...); ...``
        commits several runs together or none of them (a fused group's)."""
        if self._depth:
            self._depth += 1
            try:
                yield self.conn
            finally:
                self._depth -= 1
            return
        self.conn.execute("BEGIN IMMEDIATE")
        self._depth = 1
        try:
            yield self.conn
            self.conn.execute("COMMIT")
        except BaseException:
            # SQLite has already rolled back after some errors (a full disk): a ROLLBACK then
            # would raise 'no transaction is active' and hide the error that matters
            if self.conn.in_transaction:
                self.conn.execute("ROLLBACK")
            raise
        finally:
            self._depth = 0

    # --- writing --------------------------------------------------------------------------
    def status(self, key: str) -> str | None:
        row = self.conn.execute("SELECT status FROM runs WHERE key = ?", (key,)).fetchone()
        return row[0] if row else None

    def start(self, key: str, spec: dict, display_name: str) -> None:
        """Mark ``key`` running (a new row, or a rerun of a killed or failed one)."""
        values = [spec[c] for c in SPEC_COLUMNS]
        with self.transaction() as c:
            c.execute(
                f"INSERT INTO runs (key, display_name, spec_json, status, attempts, started, {', '.join(SPEC_COLUMNS)})"
                f" VALUES (?, ?, ?, 'running', 1, ?, {', '.join('?' * len(SPEC_COLUMNS))})"
                " ON CONFLICT(key) DO UPDATE SET status = 'running', attempts = attempts + 1,"
                " started = excluded.started, ended = NULL, wall_s = NULL, error = NULL",
                [key, display_name, json.dumps(spec, sort_keys=True), time.time(), *values],
            )

    def finish(self, key: str, *, metrics: dict, history: list[dict], env: dict,
               samples: dict[str, np.ndarray] | None = None, values: dict[str, np.ndarray] | None = None,
               arrays: dict[str, np.ndarray] | None = None) -> None:
        """Commit a finished run in one transaction: metrics, history, per-sample rows, status done.

        ``samples`` holds the training pool's ``dataset_index``, ``clean_label``, ``observed_label``
        and ``is_noisy``; ``values`` 1-D per-sample scalars; ``arrays`` anything larger.
        """
        now = time.time()
        with self.transaction() as c:
            row = c.execute("SELECT started FROM runs WHERE key = ?", (key,)).fetchone()
            if row is None:
                raise KeyError(f"run {key} was never started")
            _delete_rows(c, key)
            c.executemany(
                "INSERT INTO epochs (run_key, stage, epoch, metrics_json) VALUES (?, ?, ?, ?)",
                [(key, h["stage"], h["epoch"], json.dumps({k: v for k, v in h.items() if k not in ("stage", "epoch")}))
                 for h in history],
            )
            if samples is not None:
                cols = [np.asarray(samples[n]).astype(np.int64).tolist()
                        for n in ("dataset_index", "clean_label", "observed_label", "is_noisy")]
                c.executemany(
                    "INSERT INTO samples VALUES (?, ?, ?, ?, ?, ?)",
                    [(key, i, *vals) for i, vals in enumerate(zip(*cols))],
                )
            for name, vec in (values or {}).items():
                vec = np.asarray(vec, dtype=np.float64)
                c.executemany(
                    "INSERT INTO sample_values VALUES (?, ?, ?, ?)",
                    [(key, name, i, None if np.isnan(v) else float(v)) for i, v in enumerate(vec.tolist())],
                )
            for name, arr in (arrays or {}).items():
                buf = io.BytesIO()
                np.save(buf, np.asarray(arr), allow_pickle=False)
                c.execute("INSERT INTO arrays VALUES (?, ?, ?)", (key, name, buf.getvalue()))
            c.execute(
                "UPDATE runs SET status = 'done', ended = ?, wall_s = ? - started, env_json = ?,"
                " metrics_json = ?, error = NULL WHERE key = ?",
                (now, now, json.dumps(env), json.dumps(metrics), key),
            )

    def fail(self, key: str, error: str, *, history: list[dict] | None = None, env: dict | None = None) -> None:
        now = time.time()
        with self.transaction() as c:
            updated = c.execute(  # a finished run's result is never turned into a failure
                "UPDATE runs SET status = 'failed', ended = ?, wall_s = ? - started, error = ?, env_json = ?"
                " WHERE key = ? AND status != 'done'",
                (now, now, error, json.dumps(env or {}), key),
            ).rowcount
            if not updated:
                return
            c.execute("DELETE FROM epochs WHERE run_key = ?", (key,))
            c.executemany(
                "INSERT INTO epochs (run_key, stage, epoch, metrics_json) VALUES (?, ?, ?, ?)",
                [(key, h["stage"], h["epoch"], json.dumps({k: v for k, v in h.items() if k not in ("stage", "epoch")}))
                 for h in history or []],
            )

    def merge_from(self, source: Store, progress=None, *, runs_only: bool = False) -> dict[str, int]:
        """Copy ``source``'s runs into this store (``bench merge``), each in one transaction with
        all its rows (history, per-sample rows, records): a finished run where this store has not
        finished it, a failed one where this store has no run of its key. Kept as they are: runs
        finished here (``kept``; ``differing`` counts those of them finished in both stores with
        other results or another spec there: the same run trained twice, on kernels that are not
        bit-reproducible, or a damaged store), and a failed one where this store has the run in any
        state.
        Left out: ``source``'s interrupted runs (``running``; ``bench run`` trains them again).
        Merging again changes nothing. ``progress(done, total)`` is called after each run.

        ``runs_only`` copies each run's row and per-epoch history but not its per-sample rows
        (:data:`PER_SAMPLE_TABLES`: labels, weights, curves): a store a few hundred times smaller, that
        accuracy tables, ``bench compare`` and ``bench rank`` read alike, e.g. to publish results.
        A finished run held here without per-sample rows is replaced by a full copy of it."""
        if source.path.resolve() == self.path.resolve():
            raise BenchError(f"cannot merge the store {self.path} into itself")
        counts = {"done": 0, "failed": 0, "kept": 0, "differing": 0, "interrupted": 0}
        source.conn.execute("BEGIN")  # one snapshot of the source, should a bench run still write it
        try:
            columns = [row[1] for row in source.conn.execute("PRAGMA table_info(runs)")]
            runs = source.conn.execute(f"SELECT {', '.join(columns)} FROM runs ORDER BY started").fetchall()
            for n, row in enumerate(runs, 1):
                outcome = self._merge_run(source, columns, row, runs_only)
                counts["kept" if outcome == "differing" else outcome] += 1
                counts["differing"] += outcome == "differing"
                if progress is not None:
                    progress(n, len(runs))
        finally:
            if source.conn.in_transaction:
                source.conn.execute("ROLLBACK")  # it only read
        return counts

    def _merge_run(self, source: Store, columns: list[str], row: tuple, runs_only: bool) -> str:
        """One run of :meth:`merge_from`: its outcome, ``done`` or ``failed`` (copied), ``kept``
        (``differing`` where both stores finished it, with other results or spec there), or
        ``interrupted``."""
        run = dict(zip(columns, row))
        key, status, mine = run["key"], run["status"], self.status(run["key"])
        if status == "running":
            return "interrupted"
        completes = (mine == "done" and status == "done" and not runs_only and not self.has_samples(key)
                     and source.has_samples(key))  # a runs-only copy here, the full run there
        if (mine == "done" and not completes) or (status == "failed" and mine is not None):
            if mine == status == "done":
                here = self.conn.execute("SELECT metrics_json, spec_json FROM runs WHERE key = ?", (key,)).fetchone()
                return "kept" if tuple(here) == (run["metrics_json"], run["spec_json"]) else "differing"
            return "kept"
        with self.transaction() as c:
            _delete_rows(c, key, run=True)
            c.execute(f"INSERT INTO runs ({', '.join(columns)}) VALUES ({', '.join('?' * len(columns))})", row)
            for table in RUN_TABLES:
                if runs_only and table in PER_SAMPLE_TABLES:
                    continue
                records = source.conn.execute(f"SELECT * FROM {table} WHERE run_key = ? ORDER BY rowid",
                                              (key,)).fetchall()  # in their order there (a history's epochs)
                if records:
                    c.executemany(f"INSERT INTO {table} VALUES ({', '.join('?' * len(records[0]))})", records)
        return status

    def has_samples(self, key: str) -> bool:
        """Whether run ``key`` (its full key) has per-sample rows here: every finished run has,
        unless it was copied by ``bench merge --runs-only``."""
        return self.conn.execute("SELECT 1 FROM samples WHERE run_key = ? LIMIT 1", (key,)).fetchone() is not None

    def remove(self, keys: list[str]) -> int:
        """Delete the runs ``keys`` with all their rows, in one transaction; how many were there."""
        removed = 0
        with self.transaction() as c:
            for key in keys:
                removed += _delete_rows(c, key, run=True)
        return removed

    def compact(self) -> int:
        """Give the pages of deleted rows back to the file system, so that the file shrinks now:
        SQLite's ``VACUUM`` (it rewrites the file, needing room for one more copy of it), then a
        checkpoint that empties the write-ahead log. Returns the file's size in bytes."""
        self.conn.execute("VACUUM")
        self.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        return self.path.stat().st_size

    # --- reading --------------------------------------------------------------------------
    def runs(self, status: str | None = "done", keys: list[str] | None = None) -> pd.DataFrame:
        """Runs as a DataFrame, metrics expanded into columns (``acc_last``, ``acc_best`` ...)."""
        query, args = "SELECT * FROM runs", []
        clauses = []
        if status is not None:
            clauses.append("status = ?")
            args.append(status)
        if keys is not None:
            clauses.append(f"key IN ({', '.join('?' * len(keys))})")
            args.extend(keys)
        if clauses:
            query += " WHERE " + " AND ".join(clauses)
        df = pd.read_sql_query(query + " ORDER BY started", self.conn, params=args)
        if len(df) and df["metrics_json"].notna().any():
            # runs not yet done have no metrics: SQL NULL, which pandas reads as NaN when others have some
            metrics = pd.DataFrame([json.loads(m) if isinstance(m, str) and m else {} for m in df["metrics_json"]],
                                   index=df.index)
            df = pd.concat([df, metrics.drop(columns=[c for c in metrics.columns if c in df.columns])], axis=1)
        return df

    def history(self, key: str) -> pd.DataFrame:
        """Per-epoch rows of a run (``stage``, ``epoch`` from 0, its metrics); ``key`` may be a
        unique prefix (tables and figure names show 12 characters)."""
        key = self.resolve_key(key)
        rows = self.conn.execute(
            "SELECT stage, epoch, metrics_json FROM epochs WHERE run_key = ? ORDER BY rowid", (key,)).fetchall()
        return pd.DataFrame([{"stage": s, "epoch": e, **json.loads(m)} for s, e, m in rows])

    def samples(self, key: str) -> pd.DataFrame:
        """Per-sample table of a run: labels, is_noisy, and one column per recorded 1-D value
        (2-D records such as CurveNet's curves: :meth:`array`); ``key`` may be a unique prefix."""
        key = self.resolve_key(key)
        df = pd.read_sql_query(
            "SELECT sample_index, dataset_index, clean_label, observed_label, is_noisy FROM samples"
            " WHERE run_key = ? ORDER BY sample_index", self.conn, params=[key])
        df["is_noisy"] = df["is_noisy"].astype(bool)
        values = pd.read_sql_query(
            "SELECT name, sample_index, value FROM sample_values WHERE run_key = ?", self.conn, params=[key])
        if len(values):
            wide = values.pivot(index="sample_index", columns="name", values="value")
            df = df.join(wide, on="sample_index")
        return df

    def sample_record(self, key: str, name: str) -> pd.DataFrame | None:
        """A run's samples (``clean_label``, ``observed_label``, ``is_noisy``) with one 1-D record as
        ``value`` (NaN where it holds none), or None when the run has no record ``name``; for one
        record over many runs (bench.analysis), cheaper than :meth:`samples`. ``key``: the full key."""
        found = self.conn.execute("SELECT 1 FROM sample_values WHERE run_key = ? AND name = ? LIMIT 1",
                                  (key, name)).fetchone()
        if found is None:
            return None
        df = pd.read_sql_query(
            "SELECT s.clean_label, s.observed_label, s.is_noisy, v.value FROM samples s LEFT JOIN sample_values v"
            " ON v.run_key = s.run_key AND v.name = ? AND v.sample_index = s.sample_index"
            " WHERE s.run_key = ? ORDER BY s.sample_index", self.conn, params=[name, key])
        df["is_noisy"] = df["is_noisy"].astype(bool)
        df["value"] = df["value"].astype(float)
        return df

    def array(self, key: str, name: str) -> np.ndarray:
        """A recorded 2-D per-sample array (rows in ``samples`` order); ``key`` may be a unique prefix."""
        key = self.resolve_key(key)
        row = self.conn.execute("SELECT data FROM arrays WHERE run_key = ? AND name = ?", (key, name)).fetchone()
        if row is None:
            raise KeyError(f"run {key} has no array {name!r}")
        return np.load(io.BytesIO(row[0]), allow_pickle=False)

    def resolve_key(self, prefix: str) -> str:
        """The full key of the one run whose key starts with ``prefix`` (keys are lower-case hex, so
        case aside); an error listing the candidates where several match."""
        # a plain prefix comparison: with LIKE, a typed "_" or "%" would match any character
        prefix = prefix.strip().lower()
        rows = self.conn.execute("SELECT key FROM runs WHERE substr(key, 1, ?) = ? ORDER BY key",
                                 (len(prefix), prefix)).fetchall()
        if len(rows) != 1:
            found = "no run" if not rows else f"{len(rows)} runs"
            shown = ", ".join(r[0][:max(12, len(prefix) + 1)] for r in rows[:10]) + (", ..." if len(rows) > 10 else "")
            raise BenchError(f"{found} with a key starting {prefix!r} in {self.path}" + (f": {shown}" if rows else ""))
        return rows[0][0]


def _delete_rows(c: sqlite3.Connection, key: str, *, run: bool = False) -> int:
    """Delete run ``key``'s rows beside its row in ``runs`` (``RUN_TABLES``), and with ``run`` that
    row too; how many ``runs`` rows went (0 or 1). Inside the caller's transaction."""
    for table in RUN_TABLES:
        c.execute(f"DELETE FROM {table} WHERE run_key = ?", (key,))
    return c.execute("DELETE FROM runs WHERE key = ?", (key,)).rowcount if run else 0


def _statements(script: str) -> list[str]:
    return [s.strip() for s in script.split(";") if s.strip()]
