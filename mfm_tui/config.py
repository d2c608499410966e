"""Where the store lives, and whether this process may write it.

Where the store lives: ``--store PATH``, else ``$MFM_STORE``, else ``$XDG_DATA_HOME/mfm/store``
(``~/.local/share/mfm/store`` when ``XDG_DATA_HOME`` is unset or not absolute).

Either may also be a ``postgresql://`` URL (the PostgreSQL store; :func:`resolve_store` returns it unchanged);
credentials come from the URL, the ``PG*`` environment variables or ``~/.pgpass``."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from engine.open_store import check_location

__all__ = ["default_store_path", "is_store_url", "resolve_store", "resolve_store_path", "store_writable"]


def default_store_path(env: Mapping[str, str] | None = None) -> Path:
    env = os.environ if env is None else env
    xdg = env.get("XDG_DATA_HOME", "")
    base = Path(xdg) if xdg and os.path.isabs(xdg) else Path(env.get("HOME") or Path.home()) / ".local" / "share"
    return base / "mfm" / "store"


def resolve_store_path(option: str | os.PathLike[str] | None, env: Mapping[str, str] | None = None) -> Path:
    """The store path to use, absolute, ``~`` expanded (not created here)."""
    env = os.environ if env is None else env
    if option:
        path = Path(option)
    elif env.get("MFM_STORE"):
        path = Path(env["MFM_STORE"])
    else:
        path = default_store_path(env)
    return path.expanduser().absolute()


def is_store_url(location: object) -> bool:
    """Whether ``location`` is a database URL (``postgresql://…`` or ``postgres://…``)."""
    return isinstance(location, str) and location.strip().lower().startswith(("postgresql://", "postgres://"))


def resolve_store(option: str | os.PathLike[str] | None, env: Mapping[str, str] | None = None) -> Path | str:
    """The store to open: a database URL unchanged (from ``option``, else ``$MFM_STORE``), else
    :func:`resolve_store_path`. Another URL (``https://…``) is ``store_url_unsupported``, never a folder name."""
    env = os.environ if env is None else env
    chosen = option if option else env.get("MFM_STORE") or None
    if is_store_url(chosen):
        assert isinstance(chosen, str)
        return chosen.strip()
    if chosen is not None:
        check_location(os.fspath(chosen))
    return resolve_store_path(option, env)


def store_writable(store: Any) -> bool:
    """Whether this process may write the store: ``FsStore.writable``; a folder checked by path for other objects
    with a ``root``; any other store is assumed writable."""
    writable = getattr(store, "writable", None)
    if isinstance(writable, bool):
        return writable
    root = getattr(store, "root", None)
    if root is None:
        return True
    path = Path(root)
    while not path.exists() and path.parent != path:
        path = path.parent
    return os.access(path, os.W_OK | os.X_OK)
