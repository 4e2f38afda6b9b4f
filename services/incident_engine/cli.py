"""The `incidents` command line."""

from __future__ import annotations

import typer

from devstack.cli import dev_app
from incident_engine.config_doc import config_command
from incident_engine.entrypoints.asyncapi import asyncapi_command
from incident_engine.entrypoints.commands import db_app, publish_command, serve_command
from incident_engine.entrypoints.demo import demo_command
from incident_engine.entrypoints.openapi_cli import openapi_command
from incident_engine.entrypoints.parked_cli import outbox_app
from incident_engine.entrypoints.tail_cli import tail_command
from incident_engine.replay_cli import replay_command, report_command
from incident_engine.retention import archive_command
from incident_engine.schemas_cli import schemas_app
from incident_engine.simulate import simulate_command
from incident_intake.cli import intake_app
from incident_notifier.cli import notify_app

app = typer.Typer(no_args_is_help=True, add_completion=False, help="Incident SLA engine.")
app.add_typer(dev_app, name="dev")

# Commands register below, one line each, from their own modules.
# (keep this file a thin index: each command lives next to what it drives)
app.command("simulate")(simulate_command)
app.add_typer(schemas_app, name="schemas")
app.command("serve")(serve_command)
app.command("publish")(publish_command)
app.command("tail")(tail_command)
app.add_typer(db_app, name="db")
db_app.command("archive")(archive_command)
app.command("demo")(demo_command)
app.command("config")(config_command)
app.command("asyncapi")(asyncapi_command)
app.command("openapi")(openapi_command)
app.command("replay")(replay_command)
app.command("report")(report_command)
app.add_typer(outbox_app, name="outbox")
app.add_typer(intake_app, name="intake")
# The notifier is its own service (services/incident_notifier); its command module imports its
# Kafka, HTTP and SMTP machinery only when it runs.
app.add_typer(notify_app, name="notify")


def main() -> None:
    """Entry point of the console script."""
    app()


if __name__ == "__main__":
    main()
