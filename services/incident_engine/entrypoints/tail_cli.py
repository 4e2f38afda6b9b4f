"""`incidents tail`: follow what the engine emits, one readable line (or one raw CloudEvent) per output."""

from __future__ import annotations

import asyncio
import logging
import sys
from typing import Annotated

import typer
from rich.console import Console

from incident_contracts.constants import SEVERITIES
from incident_engine.config import Settings
from incident_engine.entrypoints.watch import (
    OUTPUT_TOPICS,
    Filter,
    TopicsMissing,
    follow,
    open_follower,
    render,
)
from incident_engine.entrypoints.watch import topic_name as to_topic
from incident_platform.cli_errors import exit_on_unreachable

out = Console(highlight=False, soft_wrap=True)
err = Console(stderr=True, highlight=False, soft_wrap=True)


async def tail(
    settings: Settings,
    topics: list[str],
    wanted: Filter,
    *,
    from_beginning: bool,
    as_json: bool,
    limit: int | None,
    timeout: float | None,
) -> int:
    """Print matching outputs until `limit` of them, `timeout` seconds, or Ctrl-C; return how many."""
    consumer = await open_follower(settings, topics, from_beginning=from_beginning)
    start = "the beginning" if from_beginning else "now"
    err.print(f"following {', '.join(topics)} from {start} (Ctrl-C to stop)", style="dim")
    shown = 0
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout if timeout is not None else None
    try:
        async for raw, event in follow(consumer):
            if raw and wanted.matches(event):
                if as_json:
                    sys.stdout.write(raw.decode(errors="replace") + "\n")
                    sys.stdout.flush()
                else:
                    out.print(render(event))
                shown += 1
                if limit is not None and shown >= limit:
                    break
            if deadline is not None and loop.time() >= deadline:
                break
    finally:
        await consumer.stop()
    return shown


def tail_command(
    topic: Annotated[
        list[str] | None,
        typer.Option(
            "--topic", "-t", help="state, breaches or rejected (repeat for several; default all three)."
        ),
    ] = None,
    from_beginning: Annotated[
        bool, typer.Option("--from-beginning", help="Start at the oldest output kept, not now.")
    ] = False,
    incident: Annotated[str | None, typer.Option("--incident", help="Only this incident.")] = None,
    event_type: Annotated[
        list[str] | None,
        typer.Option(
            "--type",
            help="Only this type: a full type or its end, e.g. breached, warning, failover.required.",
        ),
    ] = None,
    severity: Annotated[
        str | None, typer.Option(help=f"Only this severity: {', '.join(SEVERITIES)}.")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="The raw CloudEvents, one per line.")] = False,
    limit: Annotated[int | None, typer.Option(min=1, help="Stop after this many outputs.")] = None,
    timeout: Annotated[
        float | None,
        typer.Option(min=0, help="Stop after this many seconds (exit 1 if --limit was not reached)."),
    ] = None,
) -> None:
    """Follow the engine's outputs (state changes, warnings, breaches, failover orders, rejections)."""
    try:
        topics = [to_topic(t) for t in topic] if topic else list(OUTPUT_TOPICS)
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--topic") from None
    if severity is not None and severity not in SEVERITIES:
        raise typer.BadParameter(
            f"unknown severity {severity!r}; one of {', '.join(SEVERITIES)}", param_hint="--severity"
        )
    settings = Settings()
    logging.getLogger("aiokafka").setLevel(logging.CRITICAL)  # its errors are said once, below
    wanted = Filter(incident, tuple(event_type or ()), severity)
    work = tail(
        settings, topics, wanted, from_beginning=from_beginning, as_json=as_json, limit=limit, timeout=timeout
    )
    try:
        with exit_on_unreachable(bootstrap=settings.kafka_bootstrap_servers):
            shown = asyncio.run(work)
    except TopicsMissing as exc:
        err.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(2) from None
    except KeyboardInterrupt:  # Ctrl-C is how one stops following: no traceback, no error
        raise typer.Exit(0) from None
    if limit is not None and shown < limit:
        err.print(f"timeout: {shown} of {limit} outputs within {timeout:g} s")
        raise typer.Exit(1)
