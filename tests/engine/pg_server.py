"""A throw-away PostgreSQL server for tests and benchmarks.

``PgServer.start()`` runs ``initdb`` into a fresh temp folder and starts ``postgres`` listening on a unix socket
only (``listen_addresses=''``), as an unprivileged user when we are root (PostgreSQL refuses to run as root): the
``postgres`` user when it exists, else ``nobody``. ``durable=False`` (tests) turns fsync off for speed; benchmarks
use ``durable=True``. ``stop()`` shuts it down and removes the folder (also registered with ``atexit`` as a safety
net). Always a real server, never a mock.

Binaries (:func:`find_bindir`): ``$MFM_PG_BINDIR`` when set; else the system's (``/usr/lib/postgresql/<newest>/bin``,
then ``initdb``/``pg_ctl`` on ``PATH``); else the ones bundled in the ``pgserver`` wheel of the ``test`` extra (a
self-contained PostgreSQL), so a machine with only Python passes ``make test``. ``MFM_TEST_PG_BIN=pgserver`` (or
``=system``) forces one source.
"""

from __future__ import annotations

import atexit
import contextlib
import functools
import importlib.util
import os
import pwd
import shutil
import stat
import subprocess
import tempfile
import uuid
from pathlib import Path

__all__ = ["PgServer", "find_bindir", "pgserver_bindir", "system_bindir"]

_SYSTEM_ROOT = Path("/usr/lib/postgresql")


def _has_server(bindir: Path) -> bool:
    return all((bindir / tool).is_file() for tool in ("initdb", "pg_ctl", "postgres"))


def _version_key(path: Path) -> tuple[int, ...]:
    return tuple(int(part) for part in path.parent.name.split(".") if part.isdigit())


def system_bindir() -> Path | None:
    """The newest ``/usr/lib/postgresql/<version>/bin``, else the folder of ``initdb`` on ``PATH``."""
    found = sorted(_SYSTEM_ROOT.glob("*/bin"), key=_version_key, reverse=True) if _SYSTEM_ROOT.is_dir() else []
    which = shutil.which("initdb")
    if which:
        found.append(Path(which).resolve().parent)
    return next((cand for cand in found if _has_server(cand)), None)


def pgserver_bindir() -> Path | None:
    """The binaries bundled in the ``pgserver`` wheel (found without importing it), or None."""
    spec = importlib.util.find_spec("pgserver")
    if spec is None or spec.origin is None:
        return None
    bindir = Path(spec.origin).parent / "pginstall" / "bin"
    return bindir if _has_server(bindir) else None


def find_bindir() -> Path:
    explicit = os.environ.get("MFM_PG_BINDIR")
    if explicit:
        if not _has_server(Path(explicit)):
            raise RuntimeError(f"$MFM_PG_BINDIR={explicit} holds no initdb, pg_ctl and postgres")
        return Path(explicit)
    source = os.environ.get("MFM_TEST_PG_BIN", "")
    if source not in ("", "system", "pgserver"):
        raise RuntimeError(f"$MFM_TEST_PG_BIN must be 'system' or 'pgserver', not {source!r}")
    system = system_bindir() if source != "pgserver" else None
    if system is not None:
        return system
    bundled = pgserver_bindir() if source != "system" else None
    if bundled is not None:
        return bundled
    raise RuntimeError(
        "PostgreSQL server binaries not found (looked in $MFM_PG_BINDIR, /usr/lib/postgresql/*/bin, PATH and the "
        "pgserver package); install the test extra (`pip install -e '.[test]'`, which brings pgserver) or the "
        "system's server (`apt-get install -y postgresql`)"
    )


def _server_user() -> pwd.struct_passwd | None:
    """Who runs the server: None (ourselves) unless we are root, then ``postgres`` if it exists, else ``nobody``."""
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "nobody"):
        with contextlib.suppress(KeyError):
            return pwd.getpwnam(name)
    raise RuntimeError("running as root, but there is neither a `postgres` nor a `nobody` user to run PostgreSQL")


def _traversable(path: Path, user: pwd.struct_passwd) -> bool:
    """Can ``user`` reach and run ``path`` (every folder above it searchable, itself readable and executable)?"""
    for part in [*reversed(path.parents), path]:
        mode = part.stat()
        need = stat.S_IXOTH | (stat.S_IROTH if part == path else 0)
        if mode.st_uid == user.pw_uid:
            need <<= 6
        elif mode.st_gid == user.pw_gid:
            need <<= 3
        if mode.st_mode & need != need:
            return False
    return True


@functools.cache
def _usable_by(bindir: Path, user_name: str) -> Path:
    """``bindir``, or a copy the server's user can run when it can't reach the original (e.g. a 0700 checkout).

    A pgserver install is copied with the wheel's shared libraries beside it, keeping the relative layout its
    binaries' run paths expect (``bin/../../../pgserver.libs``). The copy lives until the process exits.
    """
    user = pwd.getpwnam(user_name)
    install = bindir.parent
    site = install.parent.parent
    libs = site / "pgserver.libs"
    if _traversable(bindir / "postgres", user) and (not libs.is_dir() or _traversable(libs, user)):
        return bindir
    copy_root = Path(tempfile.mkdtemp(prefix="mfmpgbin-", dir="/tmp"))
    atexit.register(shutil.rmtree, copy_root, True)
    target = copy_root / install.relative_to(site)
    shutil.copytree(install, target, symlinks=True)
    if libs.is_dir():
        shutil.copytree(libs, copy_root / "pgserver.libs", symlinks=True)
    for folder, _, files in os.walk(copy_root):
        os.chmod(folder, 0o755)
        for name in files:
            file = Path(folder, name)
            if not file.is_symlink():
                file.chmod(file.stat().st_mode | stat.S_IROTH | stat.S_IRGRP)
    return target / "bin"


class PgServer:
    """One running server; ``dsn()`` connects over its unix socket as the ``postgres`` superuser (trust auth)."""

    def __init__(self, root: Path, bindir: Path, user: pwd.struct_passwd | None) -> None:
        self.root = root
        self.data = root / "data"
        self.bindir = bindir
        self._user = user
        self._running = False

    @classmethod
    def start(cls, *, durable: bool = False) -> PgServer:
        user = _server_user()
        bindir = find_bindir() if user is None else _usable_by(find_bindir(), user.pw_name)
        root = Path(tempfile.mkdtemp(prefix="mfmpg-", dir="/tmp"))  # short path: unix socket names are ≤ 107 bytes
        server = cls(root, bindir, user)
        if user is not None:
            os.chown(root, user.pw_uid, user.pw_gid)
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
        user = self._user  # like `runuser`, without needing it: the child drops to the server's user
        proc = subprocess.run(
            cmd,
            capture_output=True,
            text=True,
            cwd=self.root,
            check=False,
            user=None if user is None else user.pw_uid,
            group=None if user is None else user.pw_gid,
            extra_groups=None if user is None else [],
            env=None if user is None else dict(os.environ, HOME=user.pw_dir, USER=user.pw_name, LOGNAME=user.pw_name),
        )
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
