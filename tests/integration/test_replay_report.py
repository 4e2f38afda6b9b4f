"""The SLA report from a real PostgreSQL log, checked against a hand-computed week; the HTML in Chromium."""

from __future__ import annotations

import html
import json
import os
import re
import shutil
import struct
import subprocess
import sys
import tempfile
import zlib
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest

from devstack.stack import Service
from incident_engine.domain import PolicyRegistry, SlaDomain
from incident_engine.reporting.compliance import Report
from incident_engine.reporting.run import compliance_report
from incident_engine.reporting.seed import seeded_database

pytestmark = pytest.mark.integration

SINCE, UNTIL = datetime(2025, 3, 3, tzinfo=UTC), datetime(2025, 3, 10, tzinfo=UTC)  # Mon..Mon, 10080 min
CHROMIUM_INSTALL = "apt-get install -y chromium"


def _history() -> list[dict[str, Any]]:
    """March 2025: London = UTC, New York = UTC-5; every incident under livepro-1."""
    steps = [
        ("C0", "reported", "2025-03-02T23:50", "critical", "uk"),  # before the window: 20 min down in it
        ("C0", "restored", "2025-03-03T00:20", None, None),
        ("C5", "reported", "2025-02-20T10:00", "critical", "uk"),  # long before: not in the report
        ("C5", "restored", "2025-02-20T10:10", None, None),
        ("C1", "reported", "2025-03-03T10:00", "critical", "uk"),  # ack 10, restore 20: both met
        ("C1", "acknowledged", "2025-03-03T10:10", None, None),
        ("C1", "restored", "2025-03-03T10:20", None, None),
        ("C2", "reported", "2025-03-04T10:00", "critical", "uk"),  # ack 20 (breach), failover at 50
        ("C2", "acknowledged", "2025-03-04T10:20", None, None),
        ("C2", "failed_over", "2025-03-04T10:50", None, None),
        ("C2", "restored", "2025-03-04T12:00", None, None),
        ("C4", "reported", "2025-03-04T10:40", "critical", "uk"),  # overlaps C2: uk down 10:00-11:00
        ("C4", "acknowledged", "2025-03-04T10:45", None, None),
        ("C4", "restored", "2025-03-04T11:00", None, None),
        ("C3", "reported", "2025-03-05T09:00", "critical", "us"),  # ack 5, restore 25
        ("C3", "acknowledged", "2025-03-05T09:05", None, None),
        ("C3", "restored", "2025-03-05T09:25", None, None),
        ("H1", "reported", "2025-03-03T19:50", "high", "uk"),  # ack 40 wall / 10 business
        ("H1", "acknowledged", "2025-03-03T20:30", None, None),
        ("H1", "restored", "2025-03-04T09:00", None, None),  # 790 wall / 70 business
        ("H2", "reported", "2025-03-05T14:00", "high", "us"),  # 09:00 in New York: ack 45 (breach)
        ("H2", "acknowledged", "2025-03-05T14:45", None, None),
        ("H2", "restored", "2025-03-05T15:00", None, None),
        ("L1", "reported", "2025-03-06T09:00", "low", "uk"),
        ("L1", "acknowledged", "2025-03-06T09:10", None, None),
        ("L1", "updated", "2025-03-06T09:30", None, None),
        ("L1", "restored", "2025-03-06T10:00", None, None),
    ]
    events = []
    for number, (incident, kind, at, severity, region) in enumerate(steps):
        data: dict[str, Any] = {"note": "on it"} if kind == "updated" else {}
        if kind == "reported":
            data = {"severity": severity, "region": region, "summary": "checkout errors"}
        events.append({
            "specversion": "1.0", "id": f"rp-{number}", "source": "/channels/test",
            "type": f"incident.{kind}", "subject": incident, "data": data,
            "time": datetime.fromisoformat(at).replace(tzinfo=UTC),
        })  # fmt: skip
    return events


@pytest.fixture(scope="module")
async def seeded(postgres: Service) -> str:
    """The week's log in a fresh database."""
    domain = SlaDomain(PolicyRegistry.load())
    dsn, _ = await seeded_database(postgres.url, domain, _history(), datetime(2025, 3, 20, tzinfo=UTC))
    return dsn


async def _report(dsn: str, **filters: Any) -> Report:
    domain = SlaDomain(PolicyRegistry.load())
    return await compliance_report(dsn, domain, SINCE, UNTIL, now=datetime(2025, 4, 1, tzinfo=UTC), **filters)


def _group(report: Report, severity: str, region: str) -> dict[str, Any]:
    return next(g.to_json() for g in report.groups if (g.severity, g.region) == (severity, region))


async def test_figures_match_the_hand_computed_week(seeded: str) -> None:
    report = await _report(seeded)
    critical = _group(report, "critical", "all")
    assert critical["incidents"] == 4  # C1 C2 C3 C4 (C0 and C5 were reported before the window)
    assert critical["ack"] == {"met": 3, "breached": 1, "running": 0, "share_within_sla": 0.75}
    assert critical["restore"]["share_within_sla"] == 0.75
    minutes = critical["minutes"]
    assert (minutes["ack_wall"]["median"], minutes["ack_wall"]["p90"]) == (7.5, 17.0)  # 5 5 10 20
    assert minutes["ack_business"] == minutes["ack_wall"]  # 24x7
    assert (minutes["restore_wall"]["median"], minutes["restore_wall"]["p90"]) == (22.5, 42.5)  # 20 20 25 50
    assert critical["breaches"] == {"ack": 1, "restore": 1, "resolution": 0, "update": 0}
    assert (critical["failovers_ordered"], critical["failed_over"]) == (1, 1)

    high = _group(report, "high", "all")
    assert high["ack"]["share_within_sla"] == 0.5 and high["restore"]["share_within_sla"] == 1.0
    m = high["minutes"]
    assert (m["ack_wall"]["median"], m["ack_wall"]["p90"]) == (42.5, 44.5)  # 40 45
    assert (m["ack_business"]["median"], m["ack_business"]["p90"]) == (27.5, 41.5)  # 10 45
    assert (m["restore_wall"]["median"], m["restore_wall"]["p90"]) == (425.0, 717.0)  # 60 790
    assert (m["restore_business"]["median"], m["restore_business"]["p90"]) == (65.0, 69.0)  # 60 70
    assert high["breaches"]["ack"] == 1

    low = _group(report, "low", "uk")
    assert low["ack"]["share_within_sla"] == 1.0 and low["restore"]["share_within_sla"] is None  # no clock
    assert low["minutes"]["restore_wall"]["median"] == 60.0

    overall = _group(report, "all", "all")
    assert overall["incidents"] == 7
    assert overall["ack"]["share_within_sla"] == pytest.approx(5 / 7)
    assert overall["restore"]["share_within_sla"] == pytest.approx(5 / 6)
    assert report.breaches_per_clock == {"ack": 2, "restore": 1, "resolution": 0, "update": 0}
    assert report.weekly == [
        {"week": "2025-W10", "ack_share": pytest.approx(5 / 7), "restore_share": pytest.approx(5 / 6),
         "decided": 7},
    ]  # fmt: skip
    assert report.ack_histogram == {
        "critical": [2, 1, 0, 1, 0, 0, 0, 0],
        "high": [0, 0, 0, 0, 2, 0, 0, 0],
        "low": [0, 1, 0, 0, 0, 0, 0, 0],
    }  # fmt: skip

    down = {a.region: a for a in report.availability}
    week = timedelta(days=7)
    assert down["uk"].downtime == timedelta(minutes=100)  # C0 20 (in the window) + C1 20 + C2∪C4 60
    assert down["us"].downtime == timedelta(minutes=25)
    assert down["au"].downtime == timedelta(0) and down["au"].met
    assert down["all"].downtime == timedelta(minutes=125)
    assert down["uk"].ratio == pytest.approx(1 - 100 / 10080) and not down["uk"].met
    assert down["uk"].allowed == week * 0.0001


async def test_filters_by_region_and_severity(seeded: str) -> None:
    report = await _report(seeded, region="us", severity="critical")
    assert [(g.severity, g.region, g.incidents) for g in report.groups] == [
        ("critical", "us", 1), ("critical", "all", 1), ("all", "all", 1),
    ]  # fmt: skip
    assert {a.region: a.downtime for a in report.availability}["uk"] == timedelta(0)


def _cli(dsn: str, *args: str) -> subprocess.CompletedProcess[bytes]:
    env = {**os.environ, "DATABASE_URL": dsn, "COLUMNS": "200"}
    command = [sys.executable, "-m", "incident_engine.cli", "report", *args, "--no-progress"]
    return subprocess.run(command, env=env, capture_output=True, timeout=120)


async def test_cli_json_and_bad_input(seeded: str) -> None:
    run = _cli(seeded, "--since", "2025-03-03", "--until", "2025-03-10", "--format", "json")
    assert run.returncode == 0, run.stderr.decode()
    body = orjson.loads(run.stdout)
    assert body["breaches_per_clock"]["ack"] == 2
    assert next(a for a in body["availability"] if a["region"] == "us")["downtime_minutes"] == 25
    table = _cli(seeded, "--month", "2025-03")
    assert table.returncode == 0 and b"critical" in table.stdout
    for args, message in [
        (("--month", "2025-13"), b"not a month"),
        (("--since", "yesterday-ish"), b"not a date or time"),
        (("--region", "eu"), b"unknown region"),
        (("--month", "2025-03", "--since", "2025-03-01"), b"not both"),
    ]:
        bad = _cli(seeded, *args)
        assert bad.returncode == 2 and message in bad.stderr, (args, bad.stderr)
    nothing = _cli(seeded, "--month", "2024-01")
    assert nothing.returncode == 1, nothing.stderr
    assert b"no incident reported from 2024-01-01 00:00 UTC before 2024-02-01 00:00 UTC" in nothing.stderr
    assert b"--month YYYY-MM or --since/--until" in nothing.stderr


def _chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome", "chrome"):
        if found := shutil.which(name):
            return found
    pytest.fail(f"Chromium is needed to render the HTML report; install it with: {CHROMIUM_INSTALL}")


def _png_pixels(data: bytes) -> tuple[int, int, list[bytearray]]:
    """Decode an 8-bit RGB/RGBA non-interlaced PNG (what Chromium writes) into rows of bytes."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, idat, width, height, channels = 8, b"", 0, 0, 4
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        kind, body = data[pos + 4 : pos + 8], data[pos + 8 : pos + 8 + length]
        if kind == b"IHDR":
            width, height, depth, color = struct.unpack(">IIBB", body[:10])
            assert depth == 8 and color in (2, 6), (depth, color)
            channels = 3 if color == 2 else 4
        elif kind == b"IDAT":
            idat += body
        pos += 12 + length
    raw, stride, rows = zlib.decompress(idat), width * channels, []
    prior = bytearray(stride)
    for y in range(height):
        kind, line = raw[y * (stride + 1)], bytearray(raw[y * (stride + 1) + 1 : (y + 1) * (stride + 1)])
        for i in range(stride):
            left = line[i - channels] if i >= channels else 0
            up, corner = prior[i], prior[i - channels] if i >= channels else 0
            if kind == 1:
                line[i] = (line[i] + left) & 0xFF
            elif kind == 2:
                line[i] = (line[i] + up) & 0xFF
            elif kind == 3:
                line[i] = (line[i] + (left + up) // 2) & 0xFF
            elif kind == 4:
                p = left + up - corner
                pa, pb, pc = abs(p - left), abs(p - up), abs(p - corner)
                line[i] = (line[i] + (left if pa <= pb and pa <= pc else up if pb <= pc else corner)) & 0xFF
        rows.append(line)
        prior = line
    return width, channels, rows


async def test_html_report_renders_its_charts_in_headless_chromium(seeded: str, tmp_path: Path) -> None:
    chromium = _chromium()
    page, shot = tmp_path / "report.html", tmp_path / "report.png"
    run = _cli(seeded, "--since", "2025-03-03", "--until", "2025-03-10", "--format", "html", "-o", str(page))
    assert run.returncode == 0, run.stderr.decode()
    html = page.read_text()
    assert "<svg" in html and "http://" not in html.replace("http://www.w3.org/2000/svg", "")
    with tempfile.TemporaryDirectory() as profile:
        subprocess.run(
            [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
             "--disable-component-update", "--disable-sync", "--no-first-run", f"--user-data-dir={profile}",
             "--hide-scrollbars", f"--screenshot={shot}", "--window-size=1200,1600", page.as_uri()],
            capture_output=True, timeout=120, check=False,
        )  # fmt: skip
    assert shot.exists() and shot.stat().st_size > 0, "Chromium wrote no screenshot"
    width, channels, rows = _png_pixels(shot.read_bytes())
    colors: dict[tuple[int, ...], int] = {}
    for line in rows[::3]:
        for x in range(0, width * channels, channels * 3):
            pixel = tuple(line[x : x + 3])
            colors[pixel] = colors.get(pixel, 0) + 1
    background = max(colors, key=lambda c: colors[c])
    assert sum(n for c, n in colors.items() if c != background) > 0.05 * sum(colors.values()), "blank page"
    for name, rgb in [("blue series", (0x25, 0x63, 0xEB)), ("amber series", (0xF5, 0x9E, 0x0B))]:
        assert colors.get(rgb, 0) > 20, f"no {name} pixels: the SVG charts did not render"


_LAYOUT_SCRIPT = """<script>
const rows = sel => { const m = new Map(); document.querySelectorAll(sel).forEach(e => {
  const r = e.getBoundingClientRect(), k = Math.round(r.top);
  if (!m.has(k)) m.set(k, []); m.get(k).push(Math.round(r.width)); }); return [...m.values()]; };
const page = document.documentElement;
document.body.setAttribute("data-layout", JSON.stringify({cards: rows(".card"), figures: rows("figure"),
  charts: Math.round(document.querySelector(".charts").getBoundingClientRect().width),
  overflow: page.scrollWidth > page.clientWidth}));
</script>"""


async def test_html_report_layout_has_no_lone_card_and_no_half_empty_row(seeded: str, tmp_path: Path) -> None:
    """The page as Chromium lays it out at several window widths: the six KPI cards in even rows, each
    row of charts full (one across the page or two side by side), nothing wider than the window."""
    chromium = _chromium()
    run = _cli(seeded, "--month", "2025-03", "--format", "html", "-o", str(tmp_path))
    assert run.returncode == 0, run.stderr.decode()
    page = tmp_path / "sla-report-2025-03.html"  # a folder as --output: the default name in it
    assert f"wrote {page}" in run.stdout.decode()
    probe = tmp_path / "probe.html"  # the page (which has no script) with a script that measures it
    probe.write_text(page.read_text().replace("</body>", _LAYOUT_SCRIPT + "</body>"))
    for width in (1600, 1200, 900, 600):
        with tempfile.TemporaryDirectory() as profile:
            dump = subprocess.run(
                [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run",
                 f"--user-data-dir={profile}", f"--window-size={width},1600", "--dump-dom", probe.as_uri()],
                capture_output=True, timeout=120, check=False, text=True,
            )  # fmt: skip
        found = re.search(r'data-layout="([^"]*)"', dump.stdout)
        assert found, f"Chromium did not lay the page out: {dump.stderr[-500:]}"
        layout = json.loads(html.unescape(found[1]))
        cards, figures = layout["cards"], layout["figures"]
        assert sum(map(len, cards)) == 6 and len({len(row) for row in cards}) == 1, (width, cards)
        for row in figures:  # one chart across the page, or two: never one in a half-empty row
            assert len(row) == 2 or row[0] >= 0.95 * layout["charts"], (width, figures)
        assert not layout["overflow"], f"the page is wider than a {width} px window"
