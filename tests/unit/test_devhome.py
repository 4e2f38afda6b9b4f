"""`incidents dev` keeps one folder and one pair of ports per checkout; `dev reset` deletes only its own."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest
from typer.testing import CliRunner

from devstack.cli import dev_app
from devstack.devhome import PREFERRED_PORTS, checkout_key, choose_ports, dev_home, save_ports

pytestmark = pytest.mark.unit


def test_each_checkout_has_its_own_folder(tmp_path: Path) -> None:
    one, two = tmp_path / "a" / "incident-sla-engine", tmp_path / "b" / "incident-sla-engine"
    base = tmp_path / "base"
    home_one, home_two = dev_home(one, env={}, base=base), dev_home(two, env={}, base=base)
    assert home_one != home_two  # same folder name, other path: other data
    assert home_one.parent == base and home_one.name.startswith("dev-incident-sla-engine-")
    assert dev_home(one, env={}, base=base) == home_one  # stable from one run to the next
    assert checkout_key(one) == checkout_key(one / ".")
    assert dev_home(one, env={"DEVSTACK_HOME": str(tmp_path / "x")}, base=base) == tmp_path / "x"


def _free_ports() -> itertools.count[int]:
    return itertools.count(40000)


def test_first_checkout_gets_the_preferred_ports_and_keeps_them(tmp_path: Path) -> None:
    ports, notes = choose_ports(tmp_path, {"kafka": None, "postgres": None}, lambda _p: False)
    assert ports == PREFERRED_PORTS and notes == []
    save_ports(tmp_path, {"kafka": 19555, "postgres": 15555})
    again, notes = choose_ports(tmp_path, {"kafka": None, "postgres": None}, lambda _p: False)
    assert again == {"kafka": 19555, "postgres": 15555} and notes == []


def test_a_second_checkout_takes_free_ports(tmp_path: Path) -> None:
    taken = set(PREFERRED_PORTS.values())  # another checkout's services run there
    free = _free_ports()
    ports, notes = choose_ports(
        tmp_path, {"kafka": None, "postgres": None}, taken.__contains__, lambda: next(free)
    )
    assert ports == {"kafka": 40000, "postgres": 40001} and notes == []


def test_a_remembered_port_taken_meanwhile_moves_and_says_so(tmp_path: Path) -> None:
    save_ports(tmp_path, {"kafka": 19600, "postgres": 15600})
    free = _free_ports()
    ports, notes = choose_ports(
        tmp_path, {"kafka": None, "postgres": None}, {15600}.__contains__, lambda: next(free)
    )
    assert ports == {"kafka": 19600, "postgres": 40000}
    assert notes == ["postgres: port 15600 is taken by something else; using 40000"]


def test_ports_asked_for_win(tmp_path: Path) -> None:
    save_ports(tmp_path, {"kafka": 19600, "postgres": 15600})
    ports, _ = choose_ports(tmp_path, {"kafka": 20001, "postgres": None}, lambda _p: False)
    assert ports == {"kafka": 20001, "postgres": 15600}


def _reset(home: Path, *args: str) -> tuple[int, str]:
    result = CliRunner().invoke(dev_app, ["reset", *args], env={"DEVSTACK_HOME": str(home)})
    return result.exit_code, result.output


def test_reset_with_nothing_to_reset_says_so(tmp_path: Path) -> None:
    code, output = _reset(tmp_path / "never-started")
    assert code == 0 and "nothing to reset" in output


def test_reset_asks_first_and_deletes_only_this_checkouts_data(tmp_path: Path) -> None:
    home, other = tmp_path / "dev-this", tmp_path / "dev-other"
    for folder in (home, other):
        (folder / "pgdata").mkdir(parents=True)
        (folder / "pgdata" / "PG_VERSION").write_text("17")
    save_ports(home, {"kafka": 1, "postgres": 2})
    code, output = _reset(home)  # no terminal, no --yes: refuses and deletes nothing
    assert code == 1 and "--yes" in output and home.exists()
    code, output = _reset(home, "--yes")
    assert code == 0 and "deleted" in output
    assert not home.exists() and (other / "pgdata" / "PG_VERSION").exists()


def test_the_demo_and_the_tests_take_free_ports_not_the_well_known_ones(tmp_path: Path) -> None:
    free = _free_ports()
    ports, _ = choose_ports(
        tmp_path, {"kafka": None, "postgres": None}, lambda _p: False, lambda: next(free), {}
    )
    assert ports == {"kafka": 40000, "postgres": 40001}


def test_down_forgets_the_services_of_the_checkout_and_of_its_demo(tmp_path: Path) -> None:
    gone = 2**22 + 1  # above Linux's largest pid: no such process
    for home in (tmp_path, tmp_path / "demo"):
        home.mkdir(exist_ok=True)
        (home / "state.json").write_text(f'{{"kafka": {{"pid": {gone}}}, "postgres": {{"pid": {gone}}}}}')
    result = CliRunner().invoke(dev_app, ["down"], env={"DEVSTACK_HOME": str(tmp_path)})
    assert result.exit_code == 0 and "data kept in" in result.output
    assert not (tmp_path / "state.json").exists() and not (tmp_path / "demo" / "state.json").exists()
    where = CliRunner().invoke(dev_app, ["home"], env={"DEVSTACK_HOME": str(tmp_path)})
    assert where.output.strip() == str(tmp_path)


def test_the_machine_wide_folder_of_older_versions_is_pointed_out(tmp_path: Path) -> None:
    from devstack.devhome import legacy_home

    assert legacy_home(tmp_path) is None
    (tmp_path / "dev").mkdir()
    (tmp_path / "dev" / "state.json").write_text("{}")
    assert legacy_home(tmp_path) == tmp_path / "dev"


def test_stale_scratch_folders_are_swept_unless_a_process_uses_them(tmp_path: Path) -> None:
    """A test run killed before its clean-up leaves its folder: deleted once old and unused."""
    import os
    import subprocess
    import sys
    import time

    from devstack.process import sweep_stale

    old, busy, fresh = (tmp_path / name for name in ("kafka-old", "postgres-busy", "kafka-new"))
    for folder in (old, busy, fresh):
        (folder / "data").mkdir(parents=True)
    long_ago = time.time() - 3600
    for folder in (old, busy):
        os.utime(folder, (long_ago, long_ago))
    user = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)", str(busy / "data")])
    try:
        # Popen returns once the exec has begun, but the kernel fills in the new command line a moment
        # later: on a loaded machine /proc/<pid>/cmdline can still be empty when the sweep reads it.
        cmdline = Path(f"/proc/{user.pid}/cmdline")
        deadline = time.monotonic() + 10
        while str(busy).encode() not in cmdline.read_bytes() and time.monotonic() < deadline:
            time.sleep(0.01)
        assert sweep_stale([old, busy, fresh]) == [old]
    finally:
        user.kill()
        user.wait()
    assert not old.exists() and busy.exists() and fresh.exists()
    assert sweep_stale([busy]) == [busy] and not busy.exists()  # its process is gone now
