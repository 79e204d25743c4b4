"""The list of stored runs, read fast: what ``bluesky-ptycho runs`` prints.

A listing needs a few fields of each run's start and stop documents. The
embedded catalog keeps them in its SQLite database (Tiled's ``nodes`` table,
one row per run under ``runs``, the documents as JSON), so this reads them
there with one query, read-only: no Tiled server is started (that alone took
seconds) and no lock is needed — SQLite lets a reader in while another process
(a ``serve``, a session) writes. A Tiled server is asked through Tiled's
client, one search per kind of run.

Two kinds of entries:

- a **scan**: a run the RunEngine made (its start has no ``stage``);
- a **replay**: the runs one ``bluesky-ptycho replay`` derived (their starts
  say ``replay: true`` and share a ``replay_id``), shown as one entry.

The runs the stages derive live are not listed: they belong to their scan
(``Catalog.derived(uid)``).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

#: the start/stop fields a listing reads, by the name used here
FIELDS = {
    "uid": "start.uid",
    "time": "start.time",
    "scan_id": "start.scan_id",
    "source_scan_id": "start.source_scan_id",
    "plan": "start.plan_name",
    "points": "start.ptycho.num_points",
    "stage": "start.stage",
    "source": "start.source_run",
    "replay": "start.replay",
    "replay_id": "start.replay_id",
    "status": "stop.exit_status",
}


@dataclass
class RunSummary:
    """One line of the listing.

    For a replay, *uid* is its reconstruction's derived run (else its first),
    *source* the raw run it processed, *runs* every run it derived by stage.
    """

    uid: str
    kind: str  # "scan" or "replay"
    time: float
    scan_id: int | None = None
    plan: str = ""
    points: int | None = None
    status: str = "running?"
    source: str = ""
    runs: dict[str, str] = field(default_factory=dict)


class NoCatalog(FileNotFoundError):
    """The data directory has no embedded catalog yet."""


def latest_runs(
    n: int = 10,
    directory: str | Path | None = None,
    uri: str | None = None,
    api_key: str | None = None,
) -> list[RunSummary]:
    """The *n* latest scans and replays, oldest first.

    From the embedded catalog of data directory *directory* (default
    :func:`~bluesky_ptycho.storage.paths.data_dir`), or from the Tiled server
    at *uri*.
    """
    if n < 1:
        raise ValueError(f"n={n}: list at least one run")
    if uri is not None:
        raw, replays = _from_server(uri, api_key, n)
    else:
        raw, replays = _from_sqlite(_database(directory), n)
    entries = [_scan(r) for r in raw] + _replays(replays)
    return sorted(entries, key=lambda e: e.time)[-n:]


def highest_scan_id(directory: str | Path, below: int) -> int:
    """The highest scan id up to *below* among the raw runs in data directory *directory*'s
    embedded catalog (0 when there is none, or no catalog): one query, however many runs."""
    try:
        db = _database(directory)
    except NoCatalog:
        return 0
    with _connect(db) as con:
        runs = _runs_node(con)
        if runs is None:
            return 0
        (top,) = con.execute(
            "SELECT MAX(json_extract(metadata, '$.start.scan_id')) FROM nodes WHERE parent = ? "
            "AND json_extract(metadata, '$.start.stage') IS NULL "
            "AND json_type(metadata, '$.start.scan_id') = 'integer' "
            "AND json_extract(metadata, '$.start.scan_id') <= ?",
            (runs, below),
        ).fetchone()
    return int(top) if top is not None else 0


def _replay_rows(n: int) -> int:
    """How many of the latest replays' runs are read for *n* entries: enough for *n* replays
    of a pipeline of up to 30 stages, at most a Tiled server's largest page (300)."""
    return min(30 * n, 300)


# -- the embedded catalog: its SQLite database, read-only ------------------------------------
def _database(directory: str | Path | None) -> Path:
    from bluesky_ptycho.storage.paths import data_dir

    folder = Path(directory) if directory is not None else data_dir()
    db = folder / "catalog" / "catalog.db"
    if not db.is_file():
        raise NoCatalog(
            f"no catalog in {folder} yet (no {db}); a scan, the demo or the profile makes it "
            "(BLUESKY_PTYCHO_DATA names another data directory, --catalog a Tiled server)"
        )
    return db


def _connect(db: Path) -> sqlite3.Connection:
    # read-only: the listing never changes the catalog, whoever else has it open
    con = sqlite3.connect(f"{db.resolve().as_uri()}?mode=ro", uri=True, timeout=10)
    con.row_factory = sqlite3.Row
    return con


def _runs_node(con: sqlite3.Connection) -> int | None:
    row = con.execute(
        "SELECT id FROM nodes WHERE key = 'runs' AND parent = "
        "(SELECT id FROM nodes WHERE parent IS NULL)"
    ).fetchone()
    return None if row is None else int(row[0])


def _from_sqlite(db: Path, n: int) -> tuple[list[dict], list[dict]]:
    columns = ", ".join(f"json_extract(metadata, '$.{path}') AS {name}" for name, path in
                        FIELDS.items())  # fmt: skip
    try:
        with _connect(db) as con:
            runs = _runs_node(con)
            if runs is None:
                return [], []
            base = f"SELECT {columns} FROM nodes WHERE parent = ? AND "
            order = " ORDER BY json_extract(metadata, '$.start.time') DESC LIMIT ?"
            raw = con.execute(base + "stage IS NULL" + order, (runs, n)).fetchall()
            replays = con.execute(base + "replay = 1" + order, (runs, _replay_rows(n))).fetchall()
            sources = list({r["source"] for r in replays} - {r["uid"] for r in raw})
            more = []
            if sources:  # the scans the replays processed, for their scan id and points
                marks = ", ".join("?" * len(sources))
                more = con.execute(base + f"key IN ({marks})", (runs, *sources)).fetchall()
    except sqlite3.DatabaseError as err:
        raise RuntimeError(
            f"cannot read the list of runs from {db} ({err}); the catalog may be of another "
            "Tiled version: open it with bluesky_ptycho.storage.catalog.Catalog instead"
        ) from err
    known = {r["uid"]: dict(r) for r in (*raw, *more)}
    return [dict(r) for r in raw], [{**dict(r), "_source": known.get(r["source"])} for r in replays]


# -- a Tiled server: its client ----------------------------------------------------------------
def _from_server(uri: str, api_key: str | None, n: int) -> tuple[list[dict], list[dict]]:
    from tiled.client import from_uri
    from tiled.queries import Eq, KeyPresent

    try:
        runs = from_uri(uri, api_key=api_key)["runs"]
    except KeyError:
        return [], []
    raw = [
        _fields(r.metadata) for r in runs.search(KeyPresent("start.stage", False)).values().tail(n)
    ]
    replays = [
        _fields(r.metadata)
        for r in runs.search(Eq("start.replay", True)).values().tail(_replay_rows(n))
    ]
    known = {r["uid"]: r for r in raw}
    for uid in {r["source"] for r in replays} - set(known):
        try:
            known[uid] = _fields(runs[uid].metadata)
        except KeyError:
            pass
    return raw, [{**r, "_source": known.get(r["source"])} for r in replays]


def _fields(md: Any) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, path in FIELDS.items():
        value: Any = md
        for part in path.split("."):
            value = value.get(part) if isinstance(value, Mapping) else None  # (Tiled's DictView)
        out[name] = value
    return out


# -- entries -----------------------------------------------------------------------------------
def _scan(row: Any) -> RunSummary:
    return RunSummary(
        uid=row["uid"],
        kind="scan",
        time=float(row["time"] or 0),
        scan_id=row["scan_id"],
        plan=row["plan"] or "",
        points=row["points"],
        status=row["status"] or "running?",
    )


def _replays(rows: Iterable[dict]) -> list[RunSummary]:
    """Derived runs of replays, one entry per replay (by ``replay_id``; a replay stored
    without one, by its source run and minute)."""
    groups: dict[Any, list[dict]] = {}
    for r in rows:
        key = r["replay_id"] or (r["source"], int((r["time"] or 0) // 60))
        groups.setdefault(key, []).append(r)
    out = []
    for runs in groups.values():
        runs.sort(key=lambda r: r["time"] or 0)
        main = next((r for r in runs if r["stage"] == "reconstruction"), runs[0])
        source = runs[0].get("_source") or {}
        statuses = [r["status"] for r in runs]  # the replay failed if one of its runs did
        status = next((s for s in ("fail", "abort") if s in statuses), None)
        status = status or ("running?" if None in statuses else statuses[0])
        out.append(
            RunSummary(
                uid=main["uid"],
                kind="replay",
                time=float(runs[0]["time"] or 0),
                scan_id=runs[0]["source_scan_id"] or source.get("scan_id") or runs[0]["scan_id"],
                plan=source.get("plan") or "",
                points=source.get("points"),
                status=status,
                source=runs[0]["source"] or "",
                runs={r["stage"]: r["uid"] for r in runs},
            )
        )
    return out


def format_runs(entries: list[RunSummary]) -> str:
    """The listing as a table with a header line."""
    import datetime

    lines = [f"{'UID':<36}  {'KIND':<6}  {'SCAN':>5}  {'STARTED':<19}  {'POINTS':>6}  STATUS"]
    for e in entries:
        when = datetime.datetime.fromtimestamp(e.time).strftime("%Y-%m-%d %H:%M:%S")
        scan = "-" if e.scan_id is None else str(e.scan_id)
        points = "-" if e.points is None else str(e.points)
        note = f"  (of {e.source[:8]}, {len(e.runs)} runs)" if e.kind == "replay" else ""
        lines.append(
            f"{e.uid:<36}  {e.kind:<6}  {scan:>5}  {when:<19}  {points:>6}  {e.status}{note}"
        )
    return "\n".join(lines)
