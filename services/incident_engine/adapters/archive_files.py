"""Archive files of the event log: one gzip-compressed JSONL file per month, read back by replay/report.

`incidents db archive` writes `event-log-YYYY-MM.jsonl.gz` for each closed month (the UTC month of an
incident's `incident.reported` event time): a header line, then per incident its log rows in seq order
and its recorded timer firings. The envelope is kept as the exact JSON text the engine logged, and
times with their microseconds, so a replay of the files equals a replay of the rows they came from.
"""

from __future__ import annotations

import gzip
import os
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import orjson

FORMAT = 1
_NAME = re.compile(r"event-log-(\d{4}-\d{2})\.jsonl\.gz")
EVENT_FIELDS = (
    "incident_id", "seq", "event_id", "type", "source", "event_time", "processed_at",
    "kafka_partition", "kafka_offset", "envelope", "trace_context",
)  # fmt: skip
_TIMES = ("event_time", "processed_at")


class ArchiveError(RuntimeError):
    """An archive folder or file that cannot be read or written (the message says which and why)."""


@dataclass
class ArchivedIncident:
    """One incident of an archive file: its log rows (dicts of EVENT_FIELDS) and its firings."""

    incident_id: str
    rows: list[dict[str, Any]] = field(default_factory=list)
    # (moment, partition, until, breach until): see `replay.Firing` (no horizons in older rows)
    firings: list[tuple[datetime, int, datetime | None, datetime | None]] = field(default_factory=list)


def file_name(month: str) -> str:
    """The file of a YYYY-MM month."""
    return f"event-log-{month}.jsonl.gz"


def archive_files(folder: Path) -> list[tuple[str, Path]]:
    """(month, path) of every archive file in the folder, oldest month first."""
    if not folder.is_dir():
        raise ArchiveError(f"archive folder {folder} does not exist (or is not a folder)")
    found = [(m[1], p) for p in folder.iterdir() if (m := _NAME.fullmatch(p.name))]
    return sorted(found)


def write_month(folder: Path, month: str, incidents: Iterable[ArchivedIncident]) -> Path:
    """Write a month's file atomically (a temporary file, fsync, rename); return its path."""
    folder.mkdir(parents=True, exist_ok=True)
    chosen = sorted(incidents, key=lambda inc: inc.incident_id)
    path = folder / file_name(month)
    temporary = path.with_name(path.name + ".tmp")
    header = {
        "kind": "archive", "format": FORMAT, "month": month, "incidents": len(chosen),
        "events": sum(len(inc.rows) for inc in chosen),
        "firings": sum(len(inc.firings) for inc in chosen),
    }  # fmt: skip
    with open(temporary, "wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", mtime=0) as out:
        out.write(orjson.dumps(header) + b"\n")
        for inc in chosen:
            for row in sorted(inc.rows, key=lambda r: r["seq"]):
                out.write(orjson.dumps({"kind": "event", **{k: row[k] for k in EVENT_FIELDS}}) + b"\n")
            for moment, partition, until, breach_until in sorted(inc.firings, key=lambda f: f[0]):
                line = {"kind": "firing", "incident_id": inc.incident_id, "fired_at": moment,
                        "kafka_partition": partition, "fire_until": until,
                        "breach_until": breach_until}  # fmt: skip
                out.write(orjson.dumps(line) + b"\n")
        out.close()
        raw.flush()
        os.fsync(raw.fileno())
    os.replace(temporary, path)
    _fsync_folder(folder)
    return path


def _fsync_folder(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def read_month(path: Path) -> list[ArchivedIncident]:
    """Every incident of one archive file, in incident order (rows in seq order)."""
    incidents: dict[str, ArchivedIncident] = {}
    try:
        with gzip.open(path, "rb") as lines:
            header = orjson.loads(next(iter(lines), b"{}"))
            if header.get("kind") != "archive" or header.get("format") != FORMAT:
                raise ArchiveError(f"{path} is not an event-log archive of format {FORMAT}")
            for line in lines:
                item = orjson.loads(line)
                inc = incidents.get(item["incident_id"])
                if inc is None:
                    inc = incidents[item["incident_id"]] = ArchivedIncident(item["incident_id"])
                if item["kind"] == "event":
                    for name in _TIMES:
                        item[name] = datetime.fromisoformat(item[name])
                    inc.rows.append({k: item[k] for k in EVENT_FIELDS})
                else:
                    until, held = item.get("fire_until"), item.get("breach_until")
                    inc.firings.append((
                        datetime.fromisoformat(item["fired_at"]), item["kafka_partition"],
                        datetime.fromisoformat(until) if until else None,
                        datetime.fromisoformat(held) if held else None,
                    ))  # fmt: skip
    except (OSError, EOFError, ValueError, KeyError, orjson.JSONDecodeError) as exc:
        raise ArchiveError(f"cannot read the archive file {path}: {exc}") from None
    for inc in incidents.values():
        inc.rows.sort(key=lambda r: r["seq"])
        inc.firings.sort(key=lambda f: f[0])
    return [incidents[key] for key in sorted(incidents)]


def read_archive(folder: Path) -> Iterator[ArchivedIncident]:
    """Every archived incident of a folder, month by month (one month in memory at a time)."""
    for _, path in archive_files(folder):
        yield from read_month(path)
