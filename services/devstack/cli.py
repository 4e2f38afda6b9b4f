"""`incidents dev up|down|status`: local Kafka and PostgreSQL in the background for development."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Annotated, Any

import typer

from devstack.kafka import KafkaCluster, kafka_version
from devstack.postgres import LocalPostgres, base_dir
from devstack.process import DevstackError, console, pid_alive, port_open, stop_pid

dev_app = typer.Typer(no_args_is_help=True, help="Local Kafka (KRaft) and PostgreSQL for development.")


def _home() -> Path:
    return Path(os.environ.get("DEVSTACK_HOME") or base_dir() / "dev")


def _state_file() -> Path:
    return _home() / "state.json"


def _load_state() -> dict[str, Any] | None:
    path = _state_file()
    return json.loads(path.read_text()) if path.exists() else None


def _exports(state: dict[str, Any]) -> str:
    return (
        f"export KAFKA_BOOTSTRAP_SERVERS=127.0.0.1:{state['kafka']['port']}\n"
        f"export DATABASE_URL=postgresql://postgres@127.0.0.1:{state['postgres']['port']}/incidents"
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
    kafka_port: Annotated[int, typer.Option(help="Kafka port on 127.0.0.1.")] = 19092,
    pg_port: Annotated[int, typer.Option(help="PostgreSQL port on 127.0.0.1.")] = 15432,
) -> None:
    """Start local Kafka and PostgreSQL in the background and print the environment to use."""
    state = _load_state()
    if state and all(_running(state).values()):
        console.print("[green]already running[/green]")
        typer.echo(_exports(state))
        return
    if state:
        down(purge=False)
    home = _home()
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
        state["postgres"] = {
            "port": pg_port,
            "pid": pg.pid,
            "log": str(pg.log_file),
            "data": str(pg.data_dir),
        }
        _state_file().write_text(json.dumps(state))
    except DevstackError as exc:
        down(purge=False)
        raise _fail(exc) from exc
    console.print("[green]up[/green] (stop with `incidents dev down`); set the environment with:")
    typer.echo(_exports(state))


@dev_app.command("down")
def down(purge: Annotated[bool, typer.Option(help="Also delete the data.")] = False) -> None:
    """Stop the local Kafka and PostgreSQL started by `dev up`."""
    state = _load_state() or {}
    for name in ("kafka", "postgres"):
        pid = state.get(name, {}).get("pid")
        if pid and pid_alive(pid):
            console.print(f"stopping {name} (pid {pid})")
            stop_pid(pid, timeout=30.0)
    _state_file().unlink(missing_ok=True)
    if purge and _home().exists():
        shutil.rmtree(_home())
    console.print("[green]down[/green]")


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


__all__ = ["dev_app"]
