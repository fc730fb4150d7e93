"""The history database: every report per host and rule, ticket states, and the sink outbox.

Only this module knows SQL. SQLite from the standard library, in WAL mode so readers never
block the writer, with a busy timeout so two sweeps writing the same file wait for each other
instead of failing; each report is recorded in one IMMEDIATE transaction (run, verdicts,
ticket states and outbox together), so a crash leaves either all of it or none.
"""

from __future__ import annotations

import json
import os
import random
import secrets
import socket
import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from scanner.findings import ScanReport, Verdict, fingerprint
from scanner.history import (
    FindingState,
    HostState,
    Snapshot,
    TicketState,
    Transition,
    snapshot_of,
    transitions,
)

Kind = Literal["sweep", "evaluate", "gate"]
# 2: hosts, rules and kernels interned in `names`; host_verdicts and findings are views.
SCHEMA_VERSION = 2
DEFAULT_OPEN = frozenset({Verdict.AFFECTED})
VERDICT_COLUMNS = ("affected", "at_risk", "pass", "not_applicable", "unknown")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS runs (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    kind TEXT NOT NULL,
    mode TEXT NOT NULL,
    generated_at TEXT NOT NULL,
    recorded_at TEXT NOT NULL,
    candidate_release TEXT,
    candidate TEXT,
    report_path TEXT,
    hosts INTEGER NOT NULL,
    affected INTEGER NOT NULL,
    at_risk INTEGER NOT NULL,
    pass INTEGER NOT NULL,
    not_applicable INTEGER NOT NULL,
    unknown INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS tickets (
    sink TEXT NOT NULL,
    stream TEXT NOT NULL,
    fingerprint TEXT NOT NULL,
    verdict TEXT NOT NULL,
    open INTEGER NOT NULL,
    ever_opened INTEGER NOT NULL,
    run_id INTEGER NOT NULL,
    PRIMARY KEY (sink, stream, fingerprint)
);
CREATE TABLE IF NOT EXISTS outbox (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    sink TEXT NOT NULL,
    run_id INTEGER NOT NULL,
    payload TEXT NOT NULL,
    created_at TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    last_error TEXT
);
CREATE TABLE IF NOT EXISTS outbox_claims (
    sink TEXT PRIMARY KEY,
    holder TEXT NOT NULL,
    until REAL NOT NULL
);
"""

# Per run, per host and per host and rule: compact rows (a 100k-host sweep is 400k findings),
# names interned once; the views give them back by name.
_TABLES_V2 = (
    "CREATE TABLE IF NOT EXISTS names (id INTEGER PRIMARY KEY, name TEXT NOT NULL UNIQUE)",
    """CREATE TABLE IF NOT EXISTS host_rows (
        run_id INTEGER NOT NULL,
        host INTEGER NOT NULL,
        verdict TEXT NOT NULL,
        running_kernel INTEGER,
        error_kind TEXT,
        PRIMARY KEY (run_id, host)
    ) WITHOUT ROWID""",
    "CREATE INDEX IF NOT EXISTS host_rows_by_host ON host_rows (host, run_id)",
    """CREATE TABLE IF NOT EXISTS finding_rows (
        run_id INTEGER NOT NULL,
        host INTEGER NOT NULL,
        rule INTEGER NOT NULL,
        verdict TEXT NOT NULL,
        waived INTEGER NOT NULL,
        PRIMARY KEY (run_id, host, rule)
    ) WITHOUT ROWID""",
    """CREATE VIEW IF NOT EXISTS host_verdicts AS
        SELECT r.run_id, h.name AS host, r.verdict, k.name AS running_kernel, r.error_kind
        FROM host_rows r JOIN names h ON h.id = r.host LEFT JOIN names k ON k.id = r.running_kernel""",
    """CREATE VIEW IF NOT EXISTS findings AS
        SELECT f.run_id, h.name AS host, u.name AS rule_id, f.verdict, f.waived
        FROM finding_rows f JOIN names h ON h.id = f.host JOIN names u ON u.id = f.rule""",
)

# From schema 1 (host_verdicts and findings were tables with names inline).
_MIGRATE_FROM_1 = (
    "ALTER TABLE host_verdicts RENAME TO v1_host_verdicts",
    "ALTER TABLE findings RENAME TO v1_findings",
    *_TABLES_V2,
    "INSERT OR IGNORE INTO names (name) SELECT host FROM v1_host_verdicts"
    " UNION SELECT running_kernel FROM v1_host_verdicts WHERE running_kernel IS NOT NULL"
    " UNION SELECT host FROM v1_findings UNION SELECT rule_id FROM v1_findings",
    "INSERT OR IGNORE INTO host_rows SELECT v.run_id, h.id, v.verdict, k.id, v.error_kind"
    " FROM v1_host_verdicts v JOIN names h ON h.name = v.host"
    " LEFT JOIN names k ON k.name = v.running_kernel",
    "INSERT OR IGNORE INTO finding_rows SELECT v.run_id, h.id, u.id, v.verdict, v.waived"
    " FROM v1_findings v JOIN names h ON h.name = v.host JOIN names u ON u.name = v.rule_id",
    "DROP TABLE v1_host_verdicts",
    "DROP TABLE v1_findings",
    "UPDATE meta SET value = '2' WHERE key = 'schema_version'",
)


class StoreError(Exception):
    """The history database cannot be opened, read or written: names the file and why."""


def default_path() -> Path:
    """$XDG_STATE_HOME/fleetscan/history.sqlite, else ~/.local/state/fleetscan/history.sqlite."""
    state = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(state) / "fleetscan" / "history.sqlite"


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


@dataclass(frozen=True)
class RunSummary:
    """One recorded report: what `html` draws trends from."""

    id: int
    kind: Kind
    mode: str
    generated_at: str
    recorded_at: str
    hosts: int
    counts: dict[str, int]
    candidate_release: str | None = None
    report_path: str | None = None


@dataclass(frozen=True)
class VerdictChange:
    """A host's verdict as of a run where it differed from the run before (or was first seen)."""

    host: str
    run_id: int
    kind: Kind
    generated_at: str
    verdict: Verdict
    previous: Verdict | None
    running_kernel: str | None


@dataclass(frozen=True)
class OutboxItem:
    id: int
    sink: str
    payload: dict[str, Any]
    attempts: int
    last_error: str | None


@dataclass
class Recorded:
    """What recording a report produced: its run id and, per sink, the transitions queued."""

    run_id: int
    queued: dict[str, list[Transition]] = field(default_factory=dict)


# How long opening waits for another process that is creating or recovering the database.
OPEN_PATIENCE = 30.0


class Store:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._holder = f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"
        # Two processes opening a new database at once can get "database is locked" from the
        # switch to WAL or from WAL recovery without SQLite's busy handler being consulted:
        # that is a wait, not an error, so the whole opening is retried for a while.
        deadline = time.monotonic() + OPEN_PATIENCE
        while True:
            try:
                self._open(path)
                return
            except StoreError as exc:
                busy = "locked" in str(exc) or "busy" in str(exc)
                if not busy or time.monotonic() > deadline:
                    raise
                time.sleep(random.uniform(0.02, 0.2))

    def _open(self, path: Path) -> None:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(path, timeout=30.0, isolation_level=None)
        except (OSError, sqlite3.Error) as exc:
            raise StoreError(f"history database {path}: cannot open ({exc})") from None
        try:
            self._db.execute("PRAGMA busy_timeout = 30000")
            mode = self._db.execute("PRAGMA journal_mode = WAL").fetchone()
            if not mode or str(mode[0]).lower() != "wal":
                raise StoreError(f"history database {path}: cannot switch to WAL mode")
            self._db.execute("PRAGMA foreign_keys = ON")
            # WAL with NORMAL: never corrupt; a power cut may lose the last report's record.
            self._db.execute("PRAGMA synchronous = NORMAL")
            self._db.row_factory = sqlite3.Row
            # executescript commits on its own; every statement is idempotent.
            self._db.executescript(_SCHEMA)
            self._migrate()
            with self._transaction() as db:
                for statement in _TABLES_V2:
                    db.execute(statement)
                db.execute(
                    "INSERT OR IGNORE INTO meta VALUES ('schema_version', ?)",
                    (str(SCHEMA_VERSION),),
                )
            version = self._db.execute(
                "SELECT value FROM meta WHERE key = 'schema_version'"
            ).fetchone()
            if version is None or int(version[0]) > SCHEMA_VERSION:
                raise StoreError(
                    f"history database {path}: schema version {version and version[0]} is newer than this fleetscan"
                )
        except sqlite3.Error as exc:
            self._db.close()
            raise StoreError(f"history database {path}: unusable ({exc})") from None

    def _migrate(self) -> None:
        """Bring a schema 1 database to schema 2 in one transaction (another process may race)."""
        with self._transaction() as db:
            version = db.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
            if version is None or version[0] != "1":
                return
            for statement in _MIGRATE_FROM_1:
                db.execute(statement)

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        """BEGIN IMMEDIATE takes the write lock up front: two writers queue, never deadlock."""
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield self._db
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")

    def _query(self, sql: str, params: tuple[Any, ...] = ()) -> list[sqlite3.Row]:
        try:
            return list(self._db.execute(sql, params).fetchall())
        except sqlite3.Error as exc:
            raise StoreError(f"history database {self.path}: cannot read ({exc})") from None

    # Recording ---------------------------------------------------------------------------

    def record(
        self,
        report: ScanReport,
        kind: Kind,
        report_path: str | None = None,
        sinks: tuple[str, ...] = (),
        open_on: frozenset[Verdict] | dict[str, frozenset[Verdict]] = frozenset({Verdict.AFFECTED}),
        queue: bool = True,
        extra_payloads: dict[str, dict[str, Any]] | None = None,
    ) -> Recorded:
        """Record a report and, per sink, queue its ticket transitions in the outbox.

        With `queue=False` (a dry run) the transitions are computed and returned but neither
        the ticket states nor the outbox change, so the next real run still sends them.
        `extra_payloads` adds one outbox item per named sink (e.g. the whole report for a
        webhook with `--sink-payload report`).
        """
        stream = (
            f"candidate:{report.candidate.release}" if report.candidate is not None else "current"
        )
        summary = report.summary
        counts = (
            summary.affected,
            summary.at_risk,
            summary.pass_,
            summary.not_applicable,
            summary.unknown,
        )
        try:
            with self._transaction() as db:
                cursor = db.execute(
                    "INSERT INTO runs (kind, mode, generated_at, recorded_at, candidate_release,"
                    " candidate, report_path, hosts, affected, at_risk, pass, not_applicable,"
                    " unknown) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (
                        kind,
                        report.mode,
                        report.generated_at,
                        _now(),
                        report.candidate.release if report.candidate else None,
                        report.candidate.model_dump_json() if report.candidate else None,
                        report_path,
                        summary.hosts,
                        *counts,
                    ),
                )
                run_id = int(cursor.lastrowid or 0)
                ids = self._intern(db, report)
                db.executemany(
                    "INSERT OR REPLACE INTO host_rows VALUES (?, ?, ?, ?, ?)",
                    [
                        (
                            run_id,
                            ids[host.host],
                            str(host.verdict),
                            ids[host.kernels.running]
                            if host.kernels and host.kernels.running
                            else None,
                            host.error.kind if host.error else None,
                        )
                        for host in report.hosts
                    ],
                )
                db.executemany(
                    "INSERT OR REPLACE INTO finding_rows VALUES (?, ?, ?, ?, ?)",
                    [
                        (
                            run_id,
                            ids[host.host],
                            ids[f.rule_id],
                            str(f.verdict),
                            int(f.waiver is not None),
                        )
                        for host in report.hosts
                        for f in host.findings
                    ],
                )
                recorded = Recorded(run_id)
                if sinks:
                    snapshot = snapshot_of(report)
                    # What a ticket says besides the transition: the rule, the reason, the fix.
                    details = {
                        f.fingerprint: {
                            "title": f.title,
                            "reason": f.reason,
                            "remediation": f.remediation,
                        }
                        for host in report.hosts
                        for f in host.findings
                    }
                for sink in sinks:
                    known = self._ticket_states(sink, stream)
                    opens = (
                        open_on.get(sink, DEFAULT_OPEN) if isinstance(open_on, dict) else open_on
                    )
                    events, updated = transitions(known, snapshot, opens)
                    recorded.queued[sink] = events
                    if not queue:
                        continue
                    db.executemany(
                        "INSERT OR REPLACE INTO tickets VALUES (?, ?, ?, ?, ?, ?, ?)",
                        [
                            (
                                sink,
                                stream,
                                fp,
                                state.verdict.value,
                                int(state.open),
                                int(state.ever_opened),
                                run_id,
                            )
                            for fp, state in updated.items()
                        ],
                    )
                    payloads = [
                        {
                            "kind": "transition",
                            "stream": stream,
                            **event.as_json(),
                            **details.get(event.fingerprint, {}),
                        }
                        for event in events
                    ]
                    if extra_payloads and sink in extra_payloads:
                        payloads.append(extra_payloads[sink])
                    self._enqueue(db, sink, run_id, payloads)
        except sqlite3.Error as exc:
            raise StoreError(f"history database {self.path}: cannot record ({exc})") from None
        return recorded

    @staticmethod
    def _intern(db: sqlite3.Connection, report: ScanReport) -> dict[str, int]:
        """Ids for the report's host names, rule ids and kernel releases."""
        wanted = {host.host for host in report.hosts}
        wanted |= {f.rule_id for host in report.hosts for f in host.findings}
        wanted |= {h.kernels.running for h in report.hosts if h.kernels and h.kernels.running}
        db.executemany("INSERT OR IGNORE INTO names (name) VALUES (?)", [(n,) for n in wanted])
        ids: dict[str, int] = {}
        listed = sorted(wanted)
        for start in range(0, len(listed), 500):
            chunk = listed[start : start + 500]
            marks = ", ".join("?" for _ in chunk)
            for row in db.execute(f"SELECT id, name FROM names WHERE name IN ({marks})", chunk):
                ids[row[1]] = row[0]
        return ids

    def _ticket_states(self, sink: str, stream: str) -> dict[str, TicketState]:
        rows = self._db.execute(
            "SELECT fingerprint, verdict, open, ever_opened FROM tickets WHERE sink = ? AND stream = ?",
            (sink, stream),
        ).fetchall()
        return {row[0]: TicketState(Verdict(row[1]), bool(row[2]), bool(row[3])) for row in rows}

    @staticmethod
    def _enqueue(
        db: sqlite3.Connection, sink: str, run_id: int, payloads: list[dict[str, Any]]
    ) -> None:
        now = _now()
        db.executemany(
            "INSERT INTO outbox (sink, run_id, payload, created_at) VALUES (?, ?, ?, ?)",
            [(sink, run_id, json.dumps(p, sort_keys=True), now) for p in payloads],
        )

    # The outbox --------------------------------------------------------------------------

    def pending(self, sink: str | None = None) -> list[OutboxItem]:
        """Undelivered items, oldest first (so a sink replays them in the order they happened)."""
        sql = "SELECT id, sink, payload, attempts, last_error FROM outbox"
        params: tuple[Any, ...] = ()
        if sink is not None:
            sql += " WHERE sink = ?"
            params = (sink,)
        return [
            OutboxItem(
                row["id"],
                row["sink"],
                json.loads(row["payload"]),
                row["attempts"],
                row["last_error"],
            )
            for row in self._query(sql + " ORDER BY id", params)
        ]

    def claim(self, sink: str, seconds: float = 900.0) -> bool:
        """Take (or extend) the right to deliver a sink's outbox; False while another holds it.

        Two sweeps sharing a database must not both send the same items (a webhook would see
        them twice). A claim lapses after `seconds`, so a crashed process blocks nobody for long.
        """
        now = time.time()
        try:
            with self._transaction() as db:
                row = db.execute(
                    "SELECT holder, until FROM outbox_claims WHERE sink = ?", (sink,)
                ).fetchone()
                if row is not None and row["until"] > now and row["holder"] != self._holder:
                    return False
                db.execute(
                    "INSERT OR REPLACE INTO outbox_claims VALUES (?, ?, ?)",
                    (sink, self._holder, now + seconds),
                )
        except sqlite3.Error as exc:
            raise StoreError(
                f"history database {self.path}: cannot claim the outbox ({exc})"
            ) from None
        return True

    def release(self, sink: str) -> None:
        try:
            with self._transaction() as db:
                db.execute(
                    "DELETE FROM outbox_claims WHERE sink = ? AND holder = ?", (sink, self._holder)
                )
        except sqlite3.Error as exc:
            raise StoreError(
                f"history database {self.path}: cannot release the outbox ({exc})"
            ) from None

    def delivered(self, item_id: int) -> None:
        try:
            with self._transaction() as db:
                db.execute("DELETE FROM outbox WHERE id = ?", (item_id,))
        except sqlite3.Error as exc:
            raise StoreError(
                f"history database {self.path}: cannot update outbox ({exc})"
            ) from None

    def failed(self, item_id: int, error: str) -> None:
        try:
            with self._transaction() as db:
                db.execute(
                    "UPDATE outbox SET attempts = attempts + 1, last_error = ? WHERE id = ?",
                    (error[:500], item_id),
                )
        except sqlite3.Error as exc:
            raise StoreError(
                f"history database {self.path}: cannot update outbox ({exc})"
            ) from None

    # Queries -----------------------------------------------------------------------------

    def recent_runs(self, n: int = 10, kinds: tuple[Kind, ...] = ("sweep",)) -> list[RunSummary]:
        """The last `n` runs of these kinds, oldest first, with their verdict counts."""
        marks = ", ".join("?" for _ in kinds)
        rows = self._query(
            f"SELECT * FROM runs WHERE kind IN ({marks}) ORDER BY id DESC LIMIT ?",
            (*kinds, n),
        )
        return [
            RunSummary(
                id=row["id"],
                kind=row["kind"],
                mode=row["mode"],
                generated_at=row["generated_at"],
                recorded_at=row["recorded_at"],
                hosts=row["hosts"],
                counts={column: row[column] for column in VERDICT_COLUMNS},
                candidate_release=row["candidate_release"],
                report_path=row["report_path"],
            )
            for row in reversed(rows)
        ]

    def snapshot(self, run_id: int, findings: bool = False) -> Snapshot:
        """A run's host verdicts; with `findings`, each host's findings too (slower on big runs)."""
        runs = self._query("SELECT kind, generated_at FROM runs WHERE id = ?", (run_id,))
        if not runs:
            raise StoreError(f"history database {self.path}: no run {run_id}")
        hosts: dict[str, HostState] = {}
        for row in self._query(
            "SELECT host, verdict FROM host_verdicts WHERE run_id = ?", (run_id,)
        ):
            hosts[row["host"]] = HostState(Verdict(row["verdict"]), {})
        rows = (
            self._query(
                "SELECT host, rule_id, verdict, waived FROM findings WHERE run_id = ?", (run_id,)
            )
            if findings
            else []
        )
        for row in rows:
            state = hosts.get(row["host"])
            if state is not None:
                state.findings[row["rule_id"]] = FindingState(
                    row["rule_id"],
                    Verdict(row["verdict"]),
                    fingerprint(row["host"], row["rule_id"]),
                    bool(row["waived"]),
                )
        label = f"{runs[0]['kind']} #{run_id} ({runs[0]['generated_at']})"
        return Snapshot(label, runs[0]["generated_at"], hosts)

    def last_two(self, kind: Kind = "sweep") -> tuple[Snapshot, Snapshot] | None:
        """The two latest runs of a kind, older first; None when there are fewer than two."""
        runs = self.recent_runs(2, (kind,))
        if len(runs) < 2:
            return None
        return self.snapshot(runs[0].id), self.snapshot(runs[1].id)

    def host_changes(self, host: str | None = None) -> list[VerdictChange]:
        """Per host, the runs (sweeps and evaluations; gates are predictions) where its verdict changed."""
        sql = (
            "SELECT h.host, h.run_id, r.kind, r.generated_at, h.verdict, h.running_kernel"
            " FROM host_verdicts h JOIN runs r ON r.id = h.run_id WHERE r.mode = 'current'"
        )
        params: tuple[Any, ...] = ()
        if host is not None:
            sql += " AND h.host = ?"
            params = (host,)
        changes: list[VerdictChange] = []
        last: dict[str, Verdict] = {}
        for row in self._query(sql + " ORDER BY h.host, h.run_id", params):
            verdict = Verdict(row["verdict"])
            previous = last.get(row["host"])
            if previous is None or previous != verdict:
                changes.append(
                    VerdictChange(
                        row["host"],
                        row["run_id"],
                        row["kind"],
                        row["generated_at"],
                        verdict,
                        previous,
                        row["running_kernel"],
                    )
                )
            last[row["host"]] = verdict
        return changes

    def gated_kernels_booted(self, run_id: int) -> list[tuple[str, str, int]]:
        """Hosts of a run now running a kernel an earlier gate judged: (host, release, gate run)."""
        rows = self._query(
            "SELECT h.host, h.running_kernel, MAX(g.id) AS gate_run FROM host_verdicts h"
            " JOIN runs g ON g.kind = 'gate' AND g.candidate_release = h.running_kernel"
            " AND g.id < h.run_id WHERE h.run_id = ? GROUP BY h.host ORDER BY h.host",
            (run_id,),
        )
        return [(row["host"], row["running_kernel"], row["gate_run"]) for row in rows]

    def gate_predictions(self, run_id: int) -> list[tuple[str, str, int, Verdict, Verdict]]:
        """Hosts that booted a gated kernel since their last run: (host, release, gate, predicted, now).

        Only hosts that ran another kernel when the gate judged them, and another kernel in
        their previous sweep or evaluation: a boot into the candidate, said once.
        """
        found: list[tuple[str, str, int, Verdict, Verdict]] = []
        for host, release, gate_run in self.gated_kernels_booted(run_id):
            gate = self._query(
                "SELECT verdict, running_kernel FROM host_verdicts WHERE run_id = ? AND host = ?",
                (gate_run, host),
            )
            before = self._query(
                "SELECT h.running_kernel FROM host_verdicts h JOIN runs r ON r.id = h.run_id"
                " WHERE h.host = ? AND h.run_id < ? AND r.mode = 'current'"
                " ORDER BY h.run_id DESC LIMIT 1",
                (host, run_id),
            )
            now = self._query(
                "SELECT verdict FROM host_verdicts WHERE run_id = ? AND host = ?", (run_id, host)
            )
            if not gate or not now or gate[0]["running_kernel"] == release:
                continue
            if before and before[0]["running_kernel"] == release:
                continue
            found.append(
                (host, release, gate_run, Verdict(gate[0]["verdict"]), Verdict(now[0]["verdict"]))
            )
        return found
