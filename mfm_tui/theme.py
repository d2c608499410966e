"""The app's colour themes (Textual ``Theme`` objects); layout lives in ``themes/*.tcss``.

* ``mfm-dark`` (default) and ``mfm-light``: truecolor palettes;
* ``mfm-16``: only the terminal's 16 ANSI colours (works with ``TEXTUAL_COLOR_SYSTEM=standard``,
  in tmux and over old terminals; the terminal's own palette decides the exact shades);
* ``mfm-ascii``: monochrome — no colour at all (emphasis by bold and reverse) and, through
  ``mfm_tui.glyphs``, no character outside ASCII (status letters, ``- | +`` lines, ASCII borders).
"""

from __future__ import annotations

from pathlib import Path

from textual.theme import Theme

__all__ = ["DEFAULT_THEME", "THEMES", "THEME_ALIASES", "css_paths", "resolve_theme_name", "themes_dir"]

DEFAULT_THEME = "mfm-dark"

_DARK = Theme(
    name="mfm-dark",
    primary="#5A9FE0",
    secondary="#7A8CA8",
    accent="#E0A84F",
    warning="#E0B24F",
    error="#E5605A",
    success="#5CC27A",
    foreground="#D8DEE9",
    background="#15181E",
    surface="#1C2028",
    panel="#252A34",
    dark=True,
    variables={
        "footer-key-foreground": "#E0A84F",
        "block-cursor-text-style": "bold",
    },
)

_LIGHT = Theme(
    name="mfm-light",
    primary="#0B62C4",
    secondary="#57606A",
    accent="#8250DF",
    warning="#9A6700",
    error="#CF222E",
    success="#1A7F37",
    foreground="#1F2328",
    background="#FAFBFC",
    surface="#F0F2F5",
    panel="#E4E8EE",
    dark=False,
    variables={
        "footer-key-foreground": "#8250DF",
        "block-cursor-text-style": "bold",
    },
)

_ANSI16 = Theme(
    name="mfm-16",
    ansi=True,
    primary="ansi_blue",
    secondary="ansi_cyan",
    accent="ansi_yellow",
    warning="ansi_yellow",
    error="ansi_red",
    success="ansi_green",
    foreground="ansi_default",
    background="ansi_default",
    surface="ansi_default",
    panel="ansi_default",
    boost="ansi_default",
    dark=True,
    variables={
        "ansi-background": "ansi_black",
        "ansi-foreground": "ansi_white",
        "border": "ansi_blue",
        "border-blurred": "ansi_bright_black",
        "block-cursor-foreground": "ansi_black",
        "block-cursor-background": "ansi_cyan",
        "block-cursor-text-style": "none",
        "block-cursor-blurred-foreground": "ansi_default",
        "block-cursor-blurred-background": "ansi_bright_black",
        "block-hover-background": "ansi_default",
        "input-cursor-background": "ansi_white",
        "input-cursor-foreground": "ansi_black",
        "input-cursor-text-style": "none",
        "input-selection-background": "ansi_blue",
        "input-selection-foreground": "ansi_black",
        "screen-selection-background": "ansi_blue",
        "screen-selection-foreground": "ansi_black",
        "footer-key-foreground": "ansi_yellow",
        "footer-background": "ansi_default",
        "footer-item-background": "ansi_default",
        "footer-description-background": "ansi_default",
        "footer-key-background": "ansi_default",
        "scrollbar": "ansi_bright_black",
        "scrollbar-hover": "ansi_white",
        "scrollbar-active": "ansi_white",
        "scrollbar-background": "ansi_default",
        "scrollbar-background-hover": "ansi_default",
        "scrollbar-background-active": "ansi_default",
        "scrollbar-corner-color": "ansi_default",
    },
)

_MONO = "ansi_default"
_ASCII = Theme(
    name="mfm-ascii",
    ansi=True,
    primary=_MONO,
    secondary=_MONO,
    accent=_MONO,
    warning=_MONO,
    error=_MONO,
    success=_MONO,
    foreground=_MONO,
    background=_MONO,
    surface=_MONO,
    panel=_MONO,
    boost=_MONO,
    dark=True,
    variables={
        "ansi-background": "ansi_black",
        "ansi-foreground": "ansi_white",
        "border": _MONO,
        "border-blurred": _MONO,
        "block-cursor-foreground": _MONO,
        "block-cursor-background": _MONO,
        "block-cursor-text-style": "reverse",
        "block-cursor-blurred-foreground": _MONO,
        "block-cursor-blurred-background": _MONO,
        "block-cursor-blurred-text-style": "underline",
        "block-hover-background": _MONO,
        "input-cursor-background": _MONO,
        "input-cursor-foreground": _MONO,
        "input-cursor-text-style": "reverse",
        "input-selection-background": _MONO,
        "input-selection-foreground": _MONO,
        "screen-selection-background": _MONO,
        "screen-selection-foreground": _MONO,
        "footer-foreground": _MONO,
        "footer-background": _MONO,
        "footer-key-foreground": _MONO,
        "footer-key-background": _MONO,
        "footer-description-foreground": _MONO,
        "footer-description-background": _MONO,
        "footer-item-background": _MONO,
        "scrollbar": _MONO,
        "scrollbar-hover": _MONO,
        "scrollbar-active": _MONO,
        "scrollbar-background": _MONO,
        "scrollbar-background-hover": _MONO,
        "scrollbar-background-active": _MONO,
        "scrollbar-corner-color": _MONO,
        "link-background": _MONO,
        "link-background-hover": _MONO,
        "link-color": _MONO,
        "link-color-hover": _MONO,
        "button-foreground": _MONO,
        "button-color-foreground": _MONO,
    },
)

THEMES: dict[str, Theme] = {t.name: t for t in (_DARK, _LIGHT, _ANSI16, _ASCII)}

THEME_ALIASES: dict[str, str] = {
    "dark": "mfm-dark",
    "light": "mfm-light",
    "16": "mfm-16",
    "ansi": "mfm-16",
    "ascii": "mfm-ascii",
    "mono": "mfm-ascii",
    "monochrome": "mfm-ascii",
}


def resolve_theme_name(name: str) -> str:
    """``mfm-dark``, ``dark``, ``16``, ``ascii``… → the registered theme name; unknown → ``ValueError``."""
    key = name.strip().lower()
    if key in THEMES:
        return key
    if key in THEME_ALIASES:
        return THEME_ALIASES[key]
    choices = ", ".join([*THEMES, *THEME_ALIASES])
    raise ValueError(f"unknown theme {name!r}: choose one of {choices}")


def themes_dir() -> Path:
    """The ``*.tcss`` folder: inside the package in a wheel, else the source checkout's ``themes/``."""
    package = Path(__file__).parent  # this module lives at the top of the mfm_tui package
    packaged = package / "themes"
    if packaged.is_dir():
        return packaged
    return package.parent / "themes"


def css_paths() -> list[Path]:
    """Every layout file, ``app.tcss`` first (screens add their own files beside it)."""
    folder = themes_dir()
    files = sorted(folder.glob("*.tcss"), key=lambda p: (p.name != "app.tcss", p.name))
    return files
