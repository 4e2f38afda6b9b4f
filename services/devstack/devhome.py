"""Where `incidents dev` keeps a checkout's services and data, and which ports they take.

One folder per checkout (keyed by a hash of its path), never one per machine: two clones, a demo
and a test run on one machine neither share data nor fight over ports.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
from collections.abc import Callable, Mapping
from pathlib import Path

from devstack.postgres import base_dir
from devstack.process import REPO_ROOT, free_port, port_open

# The ports a first checkout gets when they are free (easy to remember); any other takes free ones.
PREFERRED_PORTS = {"kafka": 19092, "postgres": 15432}
DATABASE = "incidents"
# `make demo` runs on services of its own (subfolder `demo/` of the checkout's folder, free ports):
# its generated incidents never reach the topics or the database of `make run`.
DEMO_FOLDER = "demo"
DEMO_DATABASE = "incidents_demo"


def checkout_key(root: Path = REPO_ROOT) -> str:
    """A short name for a checkout: its folder name and a hash of its absolute path."""
    resolved = str(root.resolve())
    slug = re.sub(r"[^A-Za-z0-9_.-]+", "-", root.resolve().name)[:40] or "checkout"
    return f"{slug}-{hashlib.sha256(resolved.encode()).hexdigest()[:10]}"


def dev_home(root: Path = REPO_ROOT, env: Mapping[str, str] | None = None, base: Path | None = None) -> Path:
    """This checkout's dev folder (`DEVSTACK_HOME` overrides it)."""
    env = os.environ if env is None else env
    if given := env.get("DEVSTACK_HOME"):
        return Path(given)
    return (base or base_dir()) / f"dev-{checkout_key(root)}"


def choose_ports(
    home: Path,
    asked: Mapping[str, int | None],
    is_taken: Callable[[int], bool] = port_open,
    pick_free: Callable[[], int] = free_port,
    preferred: Mapping[str, int] = PREFERRED_PORTS,
) -> tuple[dict[str, int], list[str]]:
    """Ports for each service: as asked, else the ones this folder used before (kept stable so the
    exported environment stays valid), else the `preferred` ones when free, else free ones. Returns
    the ports and a note for each remembered port that had to change because something else took it."""
    saved_file = home / "ports.json"
    saved: dict[str, int] = json.loads(saved_file.read_text()) if saved_file.exists() else {}
    chosen: dict[str, int] = {}
    notes: list[str] = []
    for name in PREFERRED_PORTS:
        wished = preferred.get(name)
        if (port := asked.get(name)) is not None:
            chosen[name] = port
        elif (old := saved.get(name)) is not None and not is_taken(old):
            chosen[name] = old
        elif old is None and wished is not None and wished not in chosen.values() and not is_taken(wished):
            chosen[name] = wished
        else:
            chosen[name] = _free(is_taken, pick_free, set(chosen.values()))
            if old is not None:
                notes.append(f"{name}: port {old} is taken by something else; using {chosen[name]}")
    return chosen, notes


def save_ports(home: Path, ports: Mapping[str, int]) -> None:
    """Remember the ports for the next `dev up` of this checkout."""
    home.mkdir(parents=True, exist_ok=True)
    (home / "ports.json").write_text(json.dumps(dict(ports)))


def _free(is_taken: Callable[[int], bool], pick_free: Callable[[], int], avoid: set[int]) -> int:
    while True:
        port = pick_free()
        if port not in avoid and not is_taken(port):
            return port


def folder_size(path: Path) -> int:
    """Bytes under `path` (what a reset frees)."""
    total = 0
    for dirpath, _dirs, files in os.walk(path):
        for name in files:
            with contextlib.suppress(OSError):  # a file the server removed meanwhile
                total += (Path(dirpath) / name).lstat().st_size
    return total


def legacy_home(base: Path | None = None) -> Path | None:
    """The machine-wide dev folder of older versions, when it still records services (else None)."""
    old = (base or base_dir()) / "dev"
    return old if (old / "state.json").exists() else None


def delete_home(home: Path) -> bool:
    """Delete a dev folder; False when there was none."""
    if not home.exists():
        return False
    shutil.rmtree(home)
    return True
