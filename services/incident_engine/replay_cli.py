"""`incidents replay` (check, --as-of, --policy what-if) and `incidents report`, from the event log."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

import orjson
import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from incident_contracts.constants import REGIONS, SEVERITIES
from incident_engine import timeforms
from incident_engine.adapters.archive_files import ArchiveError
from incident_engine.config import Settings
from incident_engine.domain import PolicyError, PolicyRegistry, SlaDomain, UnknownPolicyError
from incident_engine.domain.policy import load_policy
from incident_engine.reporting.source import EmptyLog, LogScope
from incident_platform.cli_errors import exit_on_unreachable

if TYPE_CHECKING:
    from incident_engine.reporting.compliance import Report

err = Console(stderr=True, highlight=False, soft_wrap=True)
out = Console(highlight=False, soft_wrap=True)
T = TypeVar("T")
# `--archive`, alike for every command that reads the log
ArchiveOption = Annotated[
    Path | None,
    typer.Option(
        "--archive",
        help="Folder of archive files (`incidents db archive`), read before the database"
        " (default INCIDENTS_ARCHIVE_DIR).",
    ),
]


class Format(StrEnum):
    """Output formats of replay."""

    table = "table"
    json = "json"


class ReportFormat(StrEnum):
    """Output formats of report."""

    table = "table"
    json = "json"
    html = "html"


def parse_instant(text: str | None, option: str) -> datetime | None:
    """`timeforms.parse_instant` for an option: None stays None, a bad form is a usage error."""
    if text is None:
        return None
    try:
        return timeforms.parse_instant(text)
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint=option) from None


def parse_month(text: str) -> tuple[datetime, datetime]:
    """`timeforms.parse_month` for `--month`."""
    try:
        return timeforms.parse_month(text)
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--month") from None


def shadow_domain(registry: PolicyRegistry, policy: str) -> tuple[SlaDomain, str]:
    """The what-if domain and policy name: a loaded policy's name, or a policy YAML file."""
    path = Path(policy)
    if path.suffix in (".yaml", ".yml") or path.exists():
        if not path.is_file():
            raise typer.BadParameter(f"no policy file {policy!r}", param_hint="--policy")
        try:
            other = load_policy(path)
        except PolicyError as exc:
            raise typer.BadParameter(str(exc), param_hint="--policy") from None
        names = {name: registry.get(name) for name in registry.names()}
        return SlaDomain(PolicyRegistry({**names, other.name: other})), other.name
    try:
        registry.get(policy)
    except UnknownPolicyError as exc:
        raise typer.BadParameter(f"{exc}; or give a policy YAML file", param_hint="--policy") from None
    return SlaDomain(registry), policy


@contextmanager
def progress_bar(enabled: bool, what: str) -> Iterator[Callable[[int, int], None] | None]:
    """A progress bar on stderr following the rows read (nothing when disabled)."""
    if not enabled:
        yield None
        return
    columns = (
        TextColumn(what),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("events"),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=err, transient=True) as bar:
        task = bar.add_task(what, total=None)
        yield lambda done, total: bar.update(task, completed=done, total=total)


def run_db(work: Awaitable[T], dsn: str) -> T:
    """Run a database coroutine; turn the usual failures into one clear line and exit 1 (2 when
    PostgreSQL cannot be reached)."""
    try:
        with exit_on_unreachable(dsn=dsn):
            return asyncio.run(work)  # type: ignore[arg-type]
    except (EmptyLog, ArchiveError) as exc:
        err.print(f"[red]error:[/red] {exc}")
    raise typer.Exit(1)


def _domain(settings: Settings) -> tuple[PolicyRegistry, SlaDomain]:
    try:
        registry = PolicyRegistry.load(settings.incidents_policy_dir)
        return registry, SlaDomain(registry, settings.incidents_default_policy)
    except (PolicyError, UnknownPolicyError) as exc:
        err.print(f"[red]error:[/red] policies: {exc}")
        raise typer.Exit(2) from None


def _emit_json(value: Any) -> None:
    sys.stdout.buffer.write(orjson.dumps(value, option=orjson.OPT_INDENT_2) + b"\n")
    sys.stdout.flush()


def replay_command(
    as_of: Annotated[
        str | None,
        typer.Option(
            "--as-of",
            help="State, clocks and pending timers as they were then in event time: every event stamped"
            " up to then (whenever the engine read it), timers fired at their due moments.",
        ),
    ] = None,
    as_of_processed: Annotated[
        str | None,
        typer.Option(
            "--as-of-processed",
            help="The same as the engine had them then (processing time): what it had read by then,"
            " timers as it fired them.",
        ),
    ] = None,
    incident: Annotated[str | None, typer.Option("--incident", help="Only this incident.")] = None,
    policy: Annotated[
        str | None,
        typer.Option("--policy", help="What-if: re-evaluate under this policy (a name or a YAML file)."),
    ] = None,
    since: Annotated[str | None, typer.Option(help="What-if: incidents reported from then on.")] = None,
    until: Annotated[
        str | None,
        typer.Option(help="What-if: incidents reported before then; timers run up to it (default now)."),
    ] = None,
    check: Annotated[
        bool, typer.Option("--check", help="Check the live projections against the log (the default).")
    ] = False,
    output_format: Annotated[Format, typer.Option("--format", help="table or json (stdout).")] = Format.table,
    limit: Annotated[int, typer.Option(help="Most incidents listed in a table.")] = 50,
    progress: Annotated[
        bool, typer.Option("--progress/--no-progress", help="Progress bar on stderr.")
    ] = True,
    archive: ArchiveOption = None,
) -> None:
    """Replay the event log: check the live state (default), state --as-of an instant, or --policy what-if."""
    event_moment = parse_instant(as_of, "--as-of")
    processed_moment = parse_instant(as_of_processed, "--as-of-processed")
    moment = event_moment or processed_moment
    start, end = parse_instant(since, "--since"), parse_instant(until, "--until")
    if event_moment and processed_moment:
        raise typer.BadParameter(
            "choose one of --as-of (event time) and --as-of-processed", param_hint="--as-of"
        )
    if check and (moment or policy):
        raise typer.BadParameter("--check takes no --as-of or --policy", param_hint="--check")
    if moment and policy:
        raise typer.BadParameter("choose one of --as-of and --policy", param_hint="--as-of")
    if (start or end) and not policy:
        raise typer.BadParameter("--since/--until go with --policy (a what-if)", param_hint="--since")
    if start and end and start >= end:
        raise typer.BadParameter(f"--since {since} is not before --until {until}", param_hint="--since")
    settings = Settings()
    dsn = settings.database_url.get_secret_value()
    folder = archive or settings.incidents_archive_dir
    if policy:
        scope = LogScope(incident, start, end)
        _what_if(settings, dsn, policy, scope, end, output_format, limit, progress, folder)
    elif moment or incident:
        scope = LogScope(incident, processed_until=processed_moment, event_until=event_moment)
        _as_of(settings, dsn, scope, output_format, limit, progress, folder)
    else:
        from incident_engine.entrypoints.commands import replay_command as check_command

        check_command(folder)


def _as_of(
    settings: Settings,
    dsn: str,
    scope: LogScope,
    output_format: Format,
    limit: int,
    progress: bool,
    archive: Path | None,
) -> None:
    from incident_engine.reporting.run import state_at, state_json
    from incident_engine.reporting.text import print_incident, print_states

    _, domain = _domain(settings)
    as_of = scope.event_until or scope.processed_until
    basis = "event time" if scope.event_until else "processing time" if as_of else ""
    if as_of is not None and as_of > datetime.now(UTC):
        err.print(f"[yellow]note:[/yellow] {as_of.isoformat()} is in the future: showing the state now")
    with progress_bar(progress, "replaying") as bar:
        state, _ = run_db(state_at(dsn, domain, scope, progress=bar, archive=archive), dsn)
    if output_format is Format.json:
        _emit_json([state_json(i, as_of) for i in state.incidents.values()])
    elif scope.incident is not None:
        if scope.incident not in state.incidents:
            err.print(f"[red]error:[/red] incident {scope.incident!r} was not reported by {as_of} ({basis})")
            raise typer.Exit(1)
        print_incident(out, state.incidents[scope.incident], as_of, basis)
    else:
        print_states(out, state.incidents, as_of, limit, basis)


def _what_if(
    settings: Settings,
    dsn: str,
    policy: str,
    scope: LogScope,
    until: datetime | None,
    output_format: Format,
    limit: int,
    progress: bool,
    archive: Path | None,
) -> None:
    from incident_engine.reporting.run import what_if
    from incident_engine.reporting.text import print_what_if

    registry, baseline = _domain(settings)
    shadow, name = shadow_domain(registry, policy)
    horizon = min(until, datetime.now(UTC)) if until else datetime.now(UTC)
    with progress_bar(progress, f"what-if {name}") as bar:
        work = what_if(dsn, baseline, shadow, name, scope, horizon, progress=bar, archive=archive)
        result = run_db(work, dsn)
    if output_format is Format.json:
        _emit_json(result.to_json())
    else:
        print_what_if(out, result, limit)


def report_command(
    month: Annotated[
        str | None, typer.Option(help="Calendar month YYYY-MM (UTC); default the current month.")
    ] = None,
    since: Annotated[str | None, typer.Option(help="Incidents reported from then on.")] = None,
    until: Annotated[str | None, typer.Option(help="Incidents reported before then.")] = None,
    region: Annotated[str | None, typer.Option(help=f"Only one region: {', '.join(REGIONS)}.")] = None,
    severity: Annotated[str | None, typer.Option(help=f"Only one severity: {', '.join(SEVERITIES)}.")] = None,
    output_format: Annotated[
        ReportFormat, typer.Option("--format", help="table, json (stdout) or html (a file).")
    ] = ReportFormat.table,
    output: Annotated[
        Path | None,
        typer.Option(
            "--output",
            "-o",
            help="HTML file, or a folder for the default name (default sla-report-<period>.html in the"
            " current directory); its full path is printed.",
        ),
    ] = None,
    progress: Annotated[
        bool, typer.Option("--progress/--no-progress", help="Progress bar on stderr.")
    ] = True,
    archive: ArchiveOption = None,
) -> None:
    """SLA compliance from the event log: shares within SLA, times to ack/restore, breaches, availability."""
    from incident_engine.reporting.compliance import DEFAULT_PERIOD_NOTE, period_label
    from incident_engine.reporting.html import render_html
    from incident_engine.reporting.run import compliance_report
    from incident_engine.reporting.text import print_report

    if month and (since or until):
        raise typer.BadParameter("give --month or --since/--until, not both", param_hint="--month")
    now = datetime.now(UTC)
    by_default = not (month or since or until)
    start: datetime | None
    end: datetime | None
    if month or by_default:  # the current calendar month by default, said in the output
        start, end = parse_month(month) if month else timeforms.month_of(now)
    else:
        start, end = parse_instant(since, "--since"), parse_instant(until, "--until")
    if start and end and start >= end:
        raise typer.BadParameter(f"--since {since} is not before --until {until}", param_hint="--since")
    if region is not None and region not in REGIONS:
        raise typer.BadParameter(
            f"unknown region {region!r}; one of {', '.join(REGIONS)}", param_hint="--region"
        )
    if severity is not None and severity not in SEVERITIES:
        raise typer.BadParameter(
            f"unknown severity {severity!r}; one of {', '.join(SEVERITIES)}", param_hint="--severity"
        )
    settings = Settings()
    dsn = settings.database_url.get_secret_value()
    _, domain = _domain(settings)
    with progress_bar(progress, "report") as bar:
        work = compliance_report(
            dsn, domain, start, end, severity=severity, region=region, progress=bar, now=now,
            archive=archive or settings.incidents_archive_dir,
        )  # fmt: skip
        report = run_db(work, dsn)
    report.period = period_label(report.since, report.until, now)
    if by_default:
        report.period_note = DEFAULT_PERIOD_NOTE
    elif since is None and until is not None:
        report.period_note = "from the first incident in the log; give --since to choose the start"
    if output_format is ReportFormat.json:
        _emit_json(report.to_json())
    elif output_format is ReportFormat.html:
        _write_html(report, output, render_html(report))
    else:
        print_report(out, report)


def _write_html(report: Report, output: Path | None, page: str) -> None:
    """Write the page where --output says (a folder: the default name in it); print where it went."""
    whole_month = (report.since, report.until) == timeforms.month_of(report.since)
    period = f"{report.since:%Y-%m}" if whole_month else f"{report.since:%Y%m%d}-{report.until:%Y%m%d}"
    name = f"sla-report-{period}.html"
    path = Path(name) if output is None else output / name if output.is_dir() else output
    try:
        path.write_text(page, encoding="utf-8")
    except OSError as exc:
        err.print(f"[red]error:[/red] cannot write the HTML report to {path}: {exc.strerror or exc}")
        raise typer.Exit(1) from None
    out.print(f"wrote {path.resolve()} (incidents reported {report.period_text()})")
