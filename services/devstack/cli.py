"""`incidents dev up|down|status|reset`: local Kafka and PostgreSQL in the background for development."""

from __future__ import annotations

import contextlib
import json
import os
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from devstack.devhome import (
    DATABASE,
    DEMO_DATABASE,
    DEMO_FOLDER,
    PREFERRED_PORTS,
    choose_ports,
    delete_home,
    dev_home,
    folder_size,
    legacy_home,
    save_ports,
)
from devstack.kafka import KafkaCluster, kafka_version
from devstack.postgres import LocalPostgres
from devstack.process import REPO_ROOT, DevstackError, console, pid_alive, port_open, stop_pid

dev_app = typer.Typer(no_args_is_help=True, help="Local Kafka (KRaft) and PostgreSQL for development.")


def _home() -> Path:
    return dev_home()


def _state_file(home: Path | None = None) -> Path:
    return (home or _home()) / "state.json"


def _load_state(home: Path | None = None) -> dict[str, Any] | None:
    path = _state_file(home)
    return json.loads(path.read_text()) if path.exists() else None


def _exports(state: dict[str, Any]) -> str:
    return (
        f"export KAFKA_BOOTSTRAP_SERVERS=127.0.0.1:{state['kafka']['port']}\n"
        f"export DATABASE_URL=postgresql://postgres@127.0.0.1:{state['postgres']['port']}/{DATABASE}"
    )


def _running(state: dict[str, Any]) -> dict[str, bool]:
    return {
        name: bool(state[name].get("pid"))
        and pid_alive(state[name]["pid"])
        and port_open(state[name]["port"])
        for name in ("kafka", "postgres")
    }


def _fail(exc: DevstackError) -> typer.Exit:
    console.print(f"[red]error:[/red] {exc}")
    return typer.Exit(1)


@dev_app.command("up")
def up(
    kafka_port: Annotated[
        int | None,
        typer.Option(help="Kafka port on 127.0.0.1 [default: this checkout's, else 19092 or a free one]"),
    ] = None,
    pg_port: Annotated[
        int | None,
        typer.Option(
            help="PostgreSQL port on 127.0.0.1 [default: this checkout's, else 15432 or a free one]"
        ),
    ] = None,
) -> None:
    """Start this checkout's Kafka and PostgreSQL in the background and print the environment to use."""
    state = _load_state()
    if state and all(_running(state).values()):
        console.print(f"[green]already running[/green] (this checkout's, data in {_home()})")
        with contextlib.suppress(DevstackError, OSError):  # started before the demo had its own database
            LocalPostgres(Path(state["postgres"]["data"]), state["postgres"]["port"]).ensure_database(
                DEMO_DATABASE
            )
        typer.echo(_exports(state))
        return
    if state:
        down(purge=False)
    home = _home()
    if (old_home := legacy_home()) is not None and "DEVSTACK_HOME" not in os.environ:
        console.print(
            f"[yellow]note:[/yellow] {old_home} holds services of an older version (one folder for the"
            f" whole machine); stop them with `DEVSTACK_HOME={old_home} incidents dev down`, delete it"
            f" with `DEVSTACK_HOME={old_home} incidents dev reset`"
        )
    # the well-known ports only for a checkout's own folder; the demo's and the tests' take free ones
    preferred = PREFERRED_PORTS if "DEVSTACK_HOME" not in os.environ else {}
    ports, notes = choose_ports(home, {"kafka": kafka_port, "postgres": pg_port}, preferred=preferred)
    for note in notes:
        console.print(f"[yellow]note:[/yellow] {note}")
    kafka_port, pg_port = ports["kafka"], ports["postgres"]
    cluster: KafkaCluster | None = None
    pg: LocalPostgres | None = None
    try:
        cluster = KafkaCluster.create(home / "kafka", size=1, ports=[kafka_port])
        saved = home / "kafka" / "cluster.json"
        if saved.exists():  # keep the cluster id and controller port of the formatted storage
            old = json.loads(saved.read_text())
            cluster.cluster_id = old["cluster_id"]
            cluster.nodes[0].controller_port = old["controller_port"]
        home.mkdir(parents=True, exist_ok=True)
        home.chmod(0o755)
        pg = LocalPostgres.create(home / "pgdata", port=pg_port)
        cluster.start(detached=True)
        saved.write_text(json.dumps({"cluster_id": cluster.cluster_id,
                                     "controller_port": cluster.nodes[0].controller_port}))  # fmt: skip
        state = {"kafka": {"port": kafka_port, "pid": cluster.nodes[0].pid, "version": kafka_version(),
                           "log": str(cluster.nodes[0].log_file)}}  # fmt: skip
        _state_file().write_text(json.dumps(state))
        pg.start(detached=True)
        pg.ensure_database(DEMO_DATABASE)
        save_ports(home, ports)
        state["postgres"] = {
            "port": pg_port,
            "pid": pg.pid,
            "log": str(pg.log_file),
            "data": str(pg.data_dir),
        }
        _state_file().write_text(json.dumps(state))
    except (DevstackError, KeyboardInterrupt) as exc:
        # Started detached, the services outlive us: stop what was starting (not yet in state.json).
        for service in (cluster, pg):
            if service is not None:
                service.stop()
        _state_file().unlink(missing_ok=True)
        if isinstance(exc, KeyboardInterrupt):
            console.print("interrupted: stopped the services that were starting")
            raise typer.Exit(130) from None
        raise _fail(exc) from exc
    console.print(
        f"[green]up[/green] (data in {home}; stop with `incidents dev down`, delete with"
        " `incidents dev reset`); set the environment with:"
    )
    typer.echo(_exports(state))


@dev_app.command("down")
def down(purge: Annotated[bool, typer.Option(help="Also delete the data.")] = False) -> None:
    """Stop the local Kafka and PostgreSQL started by `dev up`."""
    _stop_services()
    if purge:
        delete_home(_home())
    kept = not purge and _home().exists()
    console.print("[green]down[/green]" + (f" (data kept in {_home()})" if kept else ""))


def _stop_services() -> None:
    # this checkout's services, and those of its demo (`make demo` runs on services of its own)
    for home in (_home(), _home() / DEMO_FOLDER):
        state = _load_state(home) or {}
        for name in ("kafka", "postgres"):
            pid = state.get(name, {}).get("pid")
            if pid and pid_alive(pid):
                whose = " of the demo" if home.name == DEMO_FOLDER else ""
                console.print(f"stopping {name}{whose} (pid {pid})")
                stop_pid(pid, timeout=30.0)
        _state_file(home).unlink(missing_ok=True)


@dev_app.command("status")
def status() -> None:
    """Say what runs where."""
    state = _load_state()
    if not state:
        console.print("not running (start with `incidents dev up`)")
        raise typer.Exit(1)
    alive = _running(state)
    for name in ("kafka", "postgres"):
        info = state.get(name, {})
        mark = "[green]running[/green]" if alive.get(name) else "[red]stopped[/red]"
        console.print(
            f"{name:9} {mark} 127.0.0.1:{info.get('port')} pid {info.get('pid')} log {info.get('log')}"
        )
    typer.echo(_exports(state))
    if not all(alive.values()):
        raise typer.Exit(1)


@dev_app.command("home")
def home_command() -> None:
    """Print this checkout's dev folder (services' data, ports, logs); `demo/` in it is the demo's."""
    typer.echo(str(_home()))


@dev_app.command("reset")
def reset(
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")] = False,
) -> None:
    """Stop this checkout's local Kafka and PostgreSQL and delete their data (topics, databases)."""
    home = _home()
    if not home.exists():
        console.print(
            f"nothing to reset: this checkout ({REPO_ROOT}) has no dev data ({home} does not exist)"
        )
        return
    size = folder_size(home) / 2**20
    what = f"{home} ({size:.0f} MiB: Kafka topics and databases, the demo's included)"
    if not yes:
        if not sys.stdin.isatty():
            console.print(f"[red]error:[/red] would delete {what}; no terminal to confirm: pass --yes")
            raise typer.Exit(1)
        if not typer.confirm(f"Stop the local services and delete {what}?", err=True):
            console.print("nothing deleted")
            raise typer.Exit(1)
    _stop_services()
    delete_home(home)
    console.print(f"[green]reset[/green]: deleted {home}; `incidents dev up` (or `make run`) starts afresh")


__all__ = ["dev_app"]
