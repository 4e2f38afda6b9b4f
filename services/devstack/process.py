"""Child processes, free ports and clear set-up errors shared by the local Kafka and PostgreSQL."""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from rich.console import Console

REPO_ROOT = Path(__file__).resolve().parents[2]
CACHE_DIR = Path(os.environ.get("DEVSTACK_CACHE_DIR", REPO_ROOT / ".cache"))

console = Console(stderr=True, highlight=False, soft_wrap=True)

_PR_SET_PDEATHSIG = 1
# Children we started, kept referenced so they are reaped (and not reported unclosed) when stopped.
_CHILDREN: dict[int, subprocess.Popen[bytes]] = {}


class DevstackError(RuntimeError):
    """A local service could not start; the message says what is missing and how to fix it."""


def progress(message: str) -> None:
    """Print one line of set-up progress to stderr."""
    console.print(f"[dim]devstack[/dim] {message}")


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def ensure_port_free(port: int, what: str) -> None:
    """Raise a clear error when `port` on loopback is already taken."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError as exc:
            raise DevstackError(
                f"{what}: port 127.0.0.1:{port} is already taken ({exc.strerror}). "
                f"Stop what listens there (`ss -ltnp 'sport = :{port}'`) or choose another port."
            ) from exc


def port_open(port: int) -> bool:
    """True when something accepts TCP connections on 127.0.0.1:`port`."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.2)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def _die_with_parent() -> None:
    # Linux: the child is killed when the process that started it dies, even by SIGKILL, so a killed
    # test run leaves no broker or database behind. SIGKILL, not SIGTERM: a broker of a cluster whose
    # other nodes are gone hangs in its graceful shutdown waiting for a quorum that never answers.
    # These are scratch services of a test run; `dev up` starts its services detached instead.
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


def spawn(
    args: list[str],
    log_file: Path,
    *,
    detached: bool,
    user: int | None = None,
    group: int | None = None,
    env: dict[str, str] | None = None,
    cwd: Path | None = None,
) -> subprocess.Popen[bytes]:
    """Start a service process with its output in `log_file`; tied to this process unless `detached`."""
    log_file.parent.mkdir(parents=True, exist_ok=True)
    with open(log_file, "ab") as log:
        proc = subprocess.Popen(
            args,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=None if detached else _die_with_parent,
            user=user,
            group=group,
            env=env,
            cwd=cwd,
        )
    _CHILDREN[proc.pid] = proc
    return proc


def stop_pid(pid: int, timeout: float = 20.0, sig: signal.Signals = signal.SIGTERM) -> None:
    """Signal a process (and its process group), wait for it to go, SIGKILL it past `timeout`."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, sig)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.kill(pid, sig)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not pid_alive(pid):
            return
        time.sleep(0.05)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.kill(pid, signal.SIGKILL)
    while pid_alive(pid) and time.monotonic() < deadline + 5:
        time.sleep(0.05)


def pid_alive(pid: int) -> bool:
    """True while `pid` runs (a zombie child of ours is reaped and counts as gone)."""
    if (child := _CHILDREN.get(pid)) is not None:
        if child.poll() is None:
            return True
        del _CHILDREN[pid]
        return False
    with contextlib.suppress(ChildProcessError):
        done, _ = os.waitpid(pid, os.WNOHANG)
        if done == pid:
            return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def wait_until(check: Callable[[], bool], timeout: float, what: str, log_file: Path | None = None) -> None:
    """Poll `check` until it is true; on timeout raise an error that quotes the service's log tail."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.1)
    tail = ""
    if log_file is not None and log_file.exists():
        lines = log_file.read_text(errors="replace").splitlines()[-15:]
        tail = "\n  last lines of " + str(log_file) + ":\n    " + "\n    ".join(lines)
    raise DevstackError(f"{what} did not become ready within {timeout:.0f}s.{tail}")


def run_checked(args: list[str], what: str, hint: str, **kwargs: object) -> subprocess.CompletedProcess[str]:
    """Run a set-up command; on failure raise an error with its output and a hint to fix it."""
    try:
        result = subprocess.run(args, capture_output=True, text=True, check=False, **kwargs)  # type: ignore[call-overload]
    except FileNotFoundError as exc:
        raise DevstackError(f"{what}: `{args[0]}` is not installed. {hint}") from exc
    if result.returncode != 0:
        out = (result.stdout + result.stderr).strip().splitlines()[-20:]
        raise DevstackError(f"{what} failed (exit {result.returncode}). {hint}\n    " + "\n    ".join(out))
    return result


def python_executable() -> str:
    """The interpreter running us (for helpers started as subprocesses)."""
    return sys.executable


def paths_in_use(paths: list[Path]) -> set[Path]:
    """Those of `paths` that a running process names on its command line (a server's data folder, a
    broker's config file under it). Linux: read from /proc; elsewhere every path counts as in use."""
    proc = Path("/proc")
    if not proc.is_dir():
        return set(paths)
    wanted = {str(path): path for path in paths}
    used: set[Path] = set()
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            command = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:  # gone meanwhile, or not ours to read
            continue
        used.update(path for text, path in wanted.items() if text in command)
    return used


def sweep_stale(folders: list[Path], older_than: float = 600.0) -> list[Path]:
    """Delete those of `folders` untouched for `older_than` seconds that no running process uses:
    what a test run killed before it could clean up leaves behind. Returns the folders deleted."""
    import shutil

    now = time.time()
    old = []
    for folder in folders:
        with contextlib.suppress(OSError):
            if folder.is_dir() and now - folder.stat().st_mtime > older_than:
                old.append(folder)
    if not old:
        return []
    busy = paths_in_use(old)
    gone = [folder for folder in old if folder not in busy]
    for folder in gone:
        shutil.rmtree(folder, ignore_errors=True)
    return gone
