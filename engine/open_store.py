"""``open_store(location)``: a filesystem path → ``FsStore``; a ``postgresql://`` URL → the PostgreSQL store. The one
place that turns a store location into a store (the worker command line, the CLI and the TUI all call it).

A database URL is passed to libpq unchanged, so credentials come from the URL, the ``PG*`` environment variables
(``PGHOST``, ``PGUSER``, ``PGPASSWORD`` …) or ``~/.pgpass`` as with ``psql``. Two extra query parameters are ours
and are removed before libpq sees them:

``mfm_schema=NAME``
    the schema holding the tables (default ``public``): several stores can share one database.
``mfm_notify=after|commit|off``
    when appends send their ``NOTIFY`` (see ``engine.stores.postgres``).

The URL's password never appears in a repr, a log line or an error (:func:`display_location`).
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final
from urllib.parse import parse_qsl, urlencode

from engine.errors import StorageError
from engine.stores.fs import FsStore

if TYPE_CHECKING:
    from engine.pool import PostgresPoolStore

__all__ = ["check_location", "display_location", "is_database_url", "open_store", "split_database_url"]

_SCHEMES: Final = ("postgresql://", "postgres://")
_OURS: Final = ("mfm_schema", "mfm_notify")
_URL: Final = re.compile(r"^\s*([A-Za-z][A-Za-z0-9+.-]*)://")
POSTGRES_EXTRA_HINT: Final = "pip install 'mfm-tui[postgres]'"


def is_database_url(location: str | os.PathLike[str] | None) -> bool:
    """Whether ``location`` names a PostgreSQL store (``postgresql://…`` or ``postgres://…``)."""
    return isinstance(location, str) and location.strip().lower().startswith(_SCHEMES)


def check_location(location: str | os.PathLike[str]) -> None:
    """Refuse a URL that is not a database URL (``https://…``, ``file://…``): ``store_url_unsupported``, a usage
    error, instead of a folder named after it (a store location is a folder or a ``postgresql://`` URL)."""
    if not isinstance(location, str) or is_database_url(location):
        return
    m = _URL.match(location)
    if m is not None:
        raise StorageError.other(
            "store_url_unsupported",
            f"unsupported store URL scheme {m.group(1)!r}: a store is a folder or a postgresql:// URL",
            {"scheme": m.group(1)},
        )


def split_database_url(url: str) -> tuple[str, dict[str, str]]:
    """The libpq URL without our own query parameters, and those parameters (``mfm_schema``, ``mfm_notify``)."""
    base, _, query_text = url.strip().partition("?")
    query = parse_qsl(query_text, keep_blank_values=True)
    ours = {k: v for k, v in query if k in _OURS}
    rest = [(k, v) for k, v in query if k not in _OURS]
    return (f"{base}?{urlencode(rest)}" if rest else base), ours


def display_location(location: str | os.PathLike[str]) -> str:
    """The location as it may be shown: a database URL with its password replaced by ``***``."""
    if not is_database_url(location):
        return str(location)
    assert isinstance(location, str)
    try:
        base, _, query_text = location.strip().partition("?")
        scheme, sep, rest = base.partition("://")
        netloc, slash, path = rest.partition("/")
        if "@" in netloc:
            userinfo, _, hostport = netloc.rpartition("@")
            if ":" in userinfo:
                userinfo = userinfo.split(":", 1)[0] + ":***"
            netloc = f"{userinfo}@{hostport}"
        query = [(k, "***" if k in ("password", "sslpassword") else v) for k, v in parse_qsl(query_text, True)]
        shown = f"{scheme}{sep}{netloc}{slash}{path}"
        return f"{shown}?{urlencode(query, safe='/')}" if query else shown
    except ValueError:
        return "postgresql://<unparsable>"


def open_store(
    location: str | os.PathLike[str], *, create: bool = False, write: bool = False, **options: Any
) -> FsStore | PostgresPoolStore:
    """The store at ``location``: a ``postgresql://`` URL opens the PostgreSQL store (with its worker-pool queue,
    ``engine.pool.PostgresPoolStore``; connects lazily), anything else is a folder for ``FsStore``. ``options`` go to
    the PostgreSQL store (``max_connections``, ``clock`` …).

    Reading is the default: a missing folder is ``store_not_found`` and opening writes nothing (a read-only store
    opens). ``create``: a missing store is created (only commands that write create one: ``start``, ``worker``, the
    TUI). ``write``: a store this process may not write is refused at once (``store_not_writable``). (A database
    store is not checked here: its schema is made on first use and the role's grants decide what it may write.)
    Another URL scheme is ``store_url_unsupported``; a database URL without psycopg installed is
    ``store_driver_missing`` (exit 2, like any store that cannot be used).
    """
    if is_database_url(location):
        assert isinstance(location, str)
        try:
            from engine.pool import PostgresPoolStore  # psycopg is an optional dependency: only database URLs need it
        except ImportError as exc:
            err = _driver_missing(exc)
            if err is None:
                raise
            raise err from None

        dsn, ours = split_database_url(location)
        schema = ours.get("mfm_schema") or "public"
        notify = ours.get("mfm_notify") or "after"
        if notify not in ("after", "commit", "off"):
            raise StorageError.other("store_notify_invalid", f"mfm_notify must be after, commit or off, not {notify!r}")
        return PostgresPoolStore(dsn, schema=schema, notify=notify, **options)  # type: ignore[arg-type]
    check_location(location)
    store = FsStore(Path(location), create=create)
    if write and not store.writable:
        store.close()
        raise StorageError.other(
            "store_not_writable",
            f"store at {store.root} is not writable by this user; reading still works "
            "(`mfm runs`, `mfm show`, `mfm tui --read-only`)",
            {"path": str(store.root)},
        )
    return store


def _driver_missing(exc: ImportError) -> StorageError | None:
    """``store_driver_missing`` when ``exc`` says psycopg (the ``postgres`` extra) is missing or cannot load (its
    libpq); ``None`` for any other import error."""
    text = str(exc).strip()
    if (exc.name or "").partition(".")[0] == "psycopg":
        why = ""
    elif "psycopg" in text.lower() or "libpq" in text.lower():
        why = f" ({text.splitlines()[0][:200]})"
    else:
        return None
    return StorageError.other(
        "store_driver_missing", f"PostgreSQL stores need psycopg{why}: {POSTGRES_EXTRA_HINT}", {"module": exc.name}
    )
