"""The settings file: ``$XDG_CONFIG_HOME/mfm/config.toml`` (``~/.config/mfm/config.toml``), read with ``tomllib``.

    theme = "mfm-16"            # mfm-dark, mfm-light, mfm-16, mfm-ascii (or dark, light, 16, ascii)
    mouse = false               # no mouse reporting: the terminal selects text as usual
    store = "~/work/mfm-store"  # the store when neither --store nor $MFM_STORE is given

    [keys]                      # key overrides: binding id = "key[,key…]" (README lists the ids)
    "runs.cancel" = "C"

A missing file is the defaults. A file that cannot be read or parsed, or holds a wrong value, gives the defaults
*and* a ``(code, message)`` (``settings_invalid``) that the caller shows in place (the TUI in a dialog, the CLI as a
one-line warning): a typo in a settings file must never keep the operator out at 3 a.m.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType

from mfm_tui.theme import resolve_theme_name

__all__ = ["Settings", "auto_theme", "choose_theme", "load_settings", "settings_path"]

_KNOWN = frozenset({"theme", "mouse", "store", "keys"})


@dataclass(frozen=True, slots=True)
class Settings:
    """What the settings file says (every field optional; ``None``: not set)."""

    theme: str | None = None
    mouse: bool = True
    store: str | None = None
    keys: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    path: Path | None = None
    """The file these came from (``None``: no file)."""


def settings_path(env: Mapping[str, str] | None = None) -> Path:
    """``$XDG_CONFIG_HOME/mfm/config.toml``, else ``~/.config/mfm/config.toml``."""
    env = os.environ if env is None else env
    xdg = env.get("XDG_CONFIG_HOME", "")
    base = Path(xdg) if xdg and os.path.isabs(xdg) else Path(env.get("HOME") or Path.home()) / ".config"
    return base / "mfm" / "config.toml"


def load_settings(
    env: Mapping[str, str] | None = None, path: Path | None = None
) -> tuple[Settings, tuple[str, str] | None]:
    """The settings and, when the file is unreadable or wrong, the defaults with ``("settings_invalid", why)``."""
    path = settings_path(env) if path is None else path
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except FileNotFoundError:
        return Settings(), None
    except OSError as exc:
        return Settings(), ("settings_invalid", f"{path}: cannot read: {exc.strerror or exc}")
    except tomllib.TOMLDecodeError as exc:
        return Settings(), ("settings_invalid", f"{path}: not valid TOML: {exc}")
    try:
        return _parse(data, path), None
    except ValueError as exc:
        return Settings(), ("settings_invalid", f"{path}: {exc}")


def _parse(data: Mapping[str, object], path: Path) -> Settings:
    unknown = sorted(set(data) - _KNOWN)
    if unknown:
        raise ValueError(f"unknown setting {unknown[0]!r} (known: {', '.join(sorted(_KNOWN))})")
    theme = data.get("theme")
    if theme is not None:
        if not isinstance(theme, str):
            raise ValueError("theme must be a string")
        theme = resolve_theme_name(theme)  # ValueError names the choices
    mouse = data.get("mouse", True)
    if not isinstance(mouse, bool):
        raise ValueError("mouse must be true or false")
    store = data.get("store")
    if store is not None and (not isinstance(store, str) or not store.strip()):
        raise ValueError("store must be a non-empty string (a folder or a postgresql:// URL)")
    keys = data.get("keys", {})
    if not isinstance(keys, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in keys.items()):
        raise ValueError('[keys] must map binding ids to key strings, e.g. "runs.cancel" = "C"')
    return Settings(theme=theme, mouse=mouse, store=store, keys=MappingProxyType(dict(keys)), path=path)


def auto_theme(env: Mapping[str, str] | None = None) -> str | None:
    """The look the terminal asks for: ``NO_COLOR`` → ``mfm-ascii`` (mono, ASCII); ``TERM=linux`` (the Linux
    console, and other 16-colour terminals) → ``mfm-16``; otherwise ``None`` (the default theme)."""
    env = os.environ if env is None else env
    if env.get("NO_COLOR"):  # https://no-color.org: set and not empty
        return "mfm-ascii"
    term = env.get("TERM", "")
    if term in ("linux", "vt100", "vt220", "ansi", "cons25") or term.startswith("linux-"):
        return "mfm-16"
    return None


def choose_theme(option: str | None, settings: Settings, env: Mapping[str, str] | None = None) -> str | None:
    """``--theme``, else the settings file's ``theme``, else what the terminal asks for (:func:`auto_theme`);
    ``None``: the default theme."""
    if option:
        return option
    if settings.theme is not None:
        return settings.theme
    return auto_theme(env)
