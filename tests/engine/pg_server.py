"""A throw-away PostgreSQL server for tests and benchmarks.

``PgServer.start()`` runs ``initdb`` into a fresh temp folder and starts ``postgres`` listening on a unix socket
only (``listen_addresses=''``), as the ``postgres`` user through ``runuser`` when we are root (PostgreSQL refuses to
run as root). ``durable=False`` (tests) turns fsync off for speed; benchmarks use ``durable=True``. ``stop()``
shuts it down and removes the folder (also registered with ``atexit`` as a safety net).

Binaries: ``$MFM_PG_BINDIR``, else ``/usr/lib/postgresql/15/bin``, else ``initdb``/``pg_ctl`` on ``PATH``.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import shutil
import subprocess
import tempfile
import uuid
from pathlib import Path

__all__ = ["PgServer", "find_bindir"]

_DEFAULT_BINDIR = Path("/usr/lib/postgresql/15/bin")


def find_bindir() -> Path:
    env = os.environ.get("MFM_PG_BINDIR")
    candidates = [Path(env)] if env else []
    candidates.append(_DEFAULT_BINDIR)
    which = shutil.which("initdb")
    if which:
        candidates.append(Path(which).resolve().parent)
    for cand in candidates:
        if (cand / "initdb").is_file() and (cand / "pg_ctl").is_file():
            return cand
    raise RuntimeError(
        "PostgreSQL server binaries not found (looked in $MFM_PG_BINDIR, /usr/lib/postgresql/15/bin, PATH); "
        "install them with `apt-get install -y postgresql`"
    )


class PgServer:
    """One running server; ``dsn()`` connects over its unix socket as the ``postgres`` superuser (trust auth)."""

    def __init__(self, root: Path, bindir: Path, as_postgres: bool) -> None:
        self.root = root
        self.data = root / "data"
        self.bindir = bindir
        self._as_postgres = as_postgres
        self._running = False

    @classmethod
    def start(cls, *, durable: bool = False) -> PgServer:
        bindir = find_bindir()
        as_postgres = os.geteuid() == 0
        root = Path(tempfile.mkdtemp(prefix="mfmpg-", dir="/tmp"))  # short path: unix socket names are ≤ 107 bytes
        server = cls(root, bindir, as_postgres)
        if as_postgres:
            shutil.chown(root, user="postgres")
        atexit.register(server.stop)
        try:
            server._run(
                "initdb",
                "-D",
                str(server.data),
                "-A",
                "trust",
                "-U",
                "postgres",
                "-E",
                "UTF8",
                "--locale=C",
                "--no-sync",
            )
            opts = [
                "-c listen_addresses=''",
                f"-c unix_socket_directories={root}",
                "-c max_connections=60",
                "-c shared_buffers=32MB",
            ]
            if not durable:
                opts += ["-c fsync=off", "-c full_page_writes=off", "-c synchronous_commit=off"]
            server._run(
                "pg_ctl", "-D", str(server.data), "-l", str(root / "server.log"), "-w", "-o", " ".join(opts), "start"
            )
            server._running = True
        except BaseException:
            server.stop()
            raise
        return server

    def _run(self, tool: str, *args: str) -> None:
        cmd = [str(self.bindir / tool), *args]
        if self._as_postgres:
            cmd = ["runuser", "-u", "postgres", "--", *cmd]
        proc = subprocess.run(cmd, capture_output=True, text=True, cwd=self.root, check=False)
        if proc.returncode != 0:
            log = self.root / "server.log"
            tail = log.read_text(errors="replace")[-2000:] if log.exists() else ""
            raise RuntimeError(f"{tool} failed ({proc.returncode}): {proc.stderr.strip()[-2000:]}\n{tail}")

    def dsn(self, dbname: str = "postgres", password: str | None = None) -> str:
        dsn = f"host={self.root} port=5432 user=postgres dbname={dbname}"
        return dsn if password is None else f"{dsn} password={password}"

    def psql(self, command: str, dbname: str = "postgres") -> str:
        """Run one SQL command through ``psql`` (for fixtures that must not depend on the code under test)."""
        cmd = [str(self.bindir / "psql"), "-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-d", self.dsn(dbname)]
        proc = subprocess.run([*cmd, "-c", command], capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            raise RuntimeError(f"psql failed: {proc.stderr.strip()}")
        return proc.stdout

    def add_password_role(self, role: str, password: str) -> None:
        """A login role that must authenticate with ``password`` (scram), while everyone else stays on trust."""
        self.psql(f"SET password_encryption = 'scram-sha-256'; CREATE ROLE \"{role}\" LOGIN PASSWORD '{password}'")
        hba = self.data / "pg_hba.conf"
        hba.write_text(f"local all {role} scram-sha-256\n" + hba.read_text())
        self.psql("SELECT pg_reload_conf()")

    def new_schema_name(self) -> str:
        return f"t_{uuid.uuid4().hex[:16]}"

    def stop(self) -> None:
        if self._running:
            self._running = False
            with contextlib.suppress(RuntimeError):
                self._run("pg_ctl", "-D", str(self.data), "-m", "immediate", "-w", "stop")
        shutil.rmtree(self.root, ignore_errors=True)
