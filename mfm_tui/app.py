"""The Textual app, built by ``make_app(...)`` for both ``mfm tui`` and the tests (no globals).

The app is thin: it owns the store watcher (run in a Textual worker that only posts messages),
forwards ``StoreChanged`` / ``RunsUpdated`` / ``CancelRequested`` to every screen on its stack, opens a run's screen
on ``RunSelected``, shows errors in a dialog and offers help (``?``) and the palette (``ctrl+p``). It shows what the
controller asks for (``ActionProposed``: a confirmation; ``ReplayStarted``, ``DiffLoaded``, ``RunResumed``).
Screens and the controller reach its services through ``mfm_tui.services.AppServices`` (``store``, ``clock``,
``plan_resolver``, ``lease_probe``, ``read_only``, ``watcher``, ``ascii_only`` …), which ``MfmApp`` satisfies.
"""

from __future__ import annotations

import asyncio
import gc
import importlib
import inspect
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from functools import partial
from pathlib import PurePath
from typing import TYPE_CHECKING, Any, ClassVar, cast

from rich.console import Console
from textual.app import App, SystemCommand
from textual.binding import Binding, BindingType
from textual.command import CommandPalette, SearchIcon
from textual.message import Message
from textual.screen import Screen
from textual.theme import Theme

import engine.workers as workers  # names resolve when first called (lease_state: after the first paint)
from engine import SystemClock
from engine.ids import RunId
from mfm_tui import controller, screens
from mfm_tui.glyphs import ASCII_THEMES, Glyphs, glyphs_for_theme
from mfm_tui.messages import (
    ActionProposed,
    CancelRequested,
    DiffLoaded,
    ErrorReported,
    ReplayStarted,
    RunLaunched,
    RunResumed,
    RunSelected,
    RunsUpdated,
    StoreChanged,
)
from mfm_tui.notices import FailureWatch, notice_text
from mfm_tui.run_model import LeaseProbe, LeaseStatus, PlanShape, lease_status_of
from mfm_tui.screens.confirm import ConfirmDialog, lines_text
from mfm_tui.screens.dialogs import ErrorDialog
from mfm_tui.screens.help import HelpEntry, HelpScreen
from mfm_tui.screens.jump import JumpPrompt, resolve_jump
from mfm_tui.screens.runs import RunsScreen
from mfm_tui.store_watcher import PlanResolver, StoreWatcher, WatchUpdate, describe_error
from mfm_tui.theme import DEFAULT_THEME, THEMES, css_paths, resolve_theme_name

if TYPE_CHECKING:
    from engine.config import RunManifest
    from engine.operations import OperationRegistry
    from engine.plan import ExecutionPlan
    from engine.runtime import Clock

__all__ = ["MfmApp", "default_lease_probe", "make_app", "store_label", "store_lease_probe"]

_HIDDEN_ACTIONS = frozenset(
    {"screen.copy_text", "copy_text", "command_palette", "app.focus_next", "app.focus_previous"}
)
"""Framework bindings left out of help and the palette (they are not this app's keys)."""

_ASCII_KEYS = {"⏎": "enter", "↑": "up", "↓": "down", "←": "left", "→": "right", "⌫": "backspace"}


def store_label(store: Any) -> str:
    """``~/.local/share/mfm/store`` for a filesystem store, else the store's kind."""
    root = getattr(store, "root", None)
    if root is not None:
        path = str(root)
        home = os.path.expanduser("~")
        return "~" + path[len(home) :] if home != "/" and path.startswith(home + os.sep) else path
    name = type(store).__name__.removesuffix("Store").lower()
    return name or "store"


def store_lease_probe(store: Any) -> LeaseProbe:
    """``run_id -> LeaseStatus``: ``engine.workers.lease_state(store, run_id)``, with the store's launcher found once,
    at the first probe (its module loads after the first paint), not per probe: ``launcher_for``'s Protocol check was
    ~18 of each probe's ~40 µs, and a 10,000-run store is probed ~28 runs a second while the TUI idles (issue 15)."""
    launcher: Any = None

    def probe(run_id: RunId) -> LeaseStatus:
        nonlocal launcher
        if launcher is None:
            launcher = workers.launcher_for(store)
        return lease_status_of(launcher.lease_state(run_id))

    return probe


def default_lease_probe(store: Any) -> LeaseProbe | None:
    """For a filesystem store (it has ``run_dir``): :func:`store_lease_probe`; otherwise none."""
    if not callable(getattr(store, "run_dir", None)):
        return None
    return store_lease_probe(store)


def _start_commands() -> Any:
    """The palette's start entries, imported when the palette first opens (textual accepts a provider factory)."""
    return importlib.import_module("mfm_tui.commands").StartCommands


class _NullFile:
    def write(self, text: str) -> int:
        return len(text)

    def flush(self) -> None:
        return None


class _AsciiCommandPalette(CommandPalette):
    """Textual's palette without its emoji search icon (the ASCII theme)."""

    def on_mount(self) -> None:
        for icon in self.query(SearchIcon):
            icon.icon = ">"


class MfmApp(App[None]):
    """The mfm monitor. Build it with ``make_app``; it satisfies ``mfm_tui.services.AppServices``."""

    TITLE = "mfm"
    CSS_PATH = cast("list[str | PurePath]", css_paths())
    COMMANDS = App.COMMANDS | {_start_commands}
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("q", "quit", "Quit", tooltip="Quit (runs keep going in their workers)", id="app.quit"),
        Binding("ctrl+c", "quit", "Quit", show=False, priority=True, tooltip="Quit"),
        Binding("question_mark", "help", "Help", tooltip="Show every key of this screen", id="app.help"),
        Binding("escape", "back", "Back", show=False, tooltip="Back / close"),
        Binding("colon", "jump", "Jump", show=False, tooltip="Jump to a view: runs, workers, or a run by id prefix"),
    ]
    """
    | Key(s) | Description |
    | :- | :- |
    | q, ctrl+c | Quit (runs keep going in their workers). |
    | question_mark | Every key of the current screen. |
    | escape | Back / close. |
    | colon | Jump: `runs`, `workers` or a run id prefix (as in k9s). |
    """

    def __init__(
        self,
        store: Any,
        *,
        clock: Clock | None = None,
        theme: str = DEFAULT_THEME,
        read_only: bool = False,
        plan_resolver: PlanResolver | None = None,
        lease_probe: LeaseProbe | None = None,
        color_system: str | None = None,
        watch: bool = True,
        registry: OperationRegistry | None = None,
        ops_modules: Sequence[str] = (),
        keymap: Mapping[str, str] | None = None,
        notices: Sequence[tuple[str, str]] = (),
        registry_loader: Callable[[], OperationRegistry] | None = None,
    ) -> None:
        # Textual answers NO_COLOR with a monochrome filter that turns the terminal's default colours into black on
        # black; a theme without colour (mfm-ascii, which NO_COLOR picks) already honours NO_COLOR, so the filter is
        # kept out of its way (the variable is hidden from Textual while it initialises, then put back).
        hide_no_color = "NO_COLOR" in os.environ and resolve_theme_name(theme) in ASCII_THEMES
        saved = os.environ.pop("NO_COLOR") if hide_no_color else None
        try:
            super().__init__()
        finally:
            if saved is not None:
                os.environ["NO_COLOR"] = saved
        self._notices = tuple(notices)
        if keymap:
            self.set_keymap(dict(keymap))
        self._op_registry = registry
        self._op_registry_loader = registry_loader
        self.ops_modules = tuple(ops_modules)
        self.store = store
        self.clock: Clock = clock if clock is not None else SystemClock()
        self.read_only = read_only
        self.lease_probe = lease_probe if lease_probe is not None else default_lease_probe(store)
        self._plan_resolver = plan_resolver
        self.watch_store = watch
        self._owns_process = False
        """Whether ``run`` drives this process (then the first load may tune the garbage collector)."""
        self.watch_restart_delay = 1.0
        self.loaded = False
        self.watcher = StoreWatcher(store, lease_probe=self.lease_probe, plan_resolver=plan_resolver)
        self.failures = FailureWatch()
        self.bell_on_failure = True
        """Ring the terminal bell with a new-failure notice (TODO: a setting in mfm_tui/settings.py)."""
        self.notices: list[str] = []
        """The new-failure notices shown, newest last."""
        for item in THEMES.values():
            self.register_theme(item)
        self.theme = resolve_theme_name(theme)
        if color_system is not None:
            self.console = Console(
                color_system=color_system,  # type: ignore[arg-type]
                file=_NullFile(),  # type: ignore[arg-type]
                markup=True,
                highlight=False,
                emoji=False,
                legacy_windows=False,
                force_terminal=True,
                safe_box=False,
                soft_wrap=False,
            )
        self._home = RunsScreen(
            self.watcher.models,
            self.clock,
            store_label=store_label(store),
            read_only=read_only,
            glyphs=self.glyphs,
        )

    # ------------------------------------------------------------------ services for screens

    @property
    def registry(self) -> OperationRegistry | None:
        """The operation registry (``registry``, else loaded by ``registry_loader`` when first read)."""
        loader = self._op_registry_loader
        if self._op_registry is None and loader is not None:
            self._op_registry_loader = None
            try:
                self._op_registry = loader()
            except Exception as exc:  # the list still works; starting a run says why it cannot
                self.post_message(ErrorReported(*describe_error(exc), title="Operations"))
        return self._op_registry

    @registry.setter
    def registry(self, value: OperationRegistry | None) -> None:
        self._op_registry = value

    @property
    def ascii_only(self) -> bool:
        return self.theme in ASCII_THEMES

    @property
    def glyphs(self) -> Glyphs:
        return glyphs_for_theme(self.theme)

    def plan_resolver(self, manifest: RunManifest) -> PlanShape | None:
        """The plan shape of a run's manifest (``None`` when unknown); never raises."""
        if self._plan_resolver is None:
            return None
        try:
            plan = self._plan_resolver(manifest)
        except Exception:
            return None
        if isinstance(plan, PlanShape):
            return plan
        if plan is None or inspect.isawaitable(plan):
            return None
        try:  # an ExecutionPlan (not imported here: engine.plan is not needed before the first paint)
            return PlanShape.from_plan(plan)
        except Exception:
            return None

    # ------------------------------------------------------------------ lifecycle

    def get_default_screen(self) -> Screen[Any]:
        return self._home

    def on_mount(self) -> None:
        for code, message in self._notices:  # e.g. a wrong settings file: said in place, the defaults apply
            self.post_message(ErrorReported(code, message, title="Settings"))
        self.theme_changed_signal.subscribe(self, self._theme_changed)
        self.run_worker(self._watch(), name="store-watcher", group="store", exclusive=True, exit_on_error=False)

    def run(self, *args: Any, **kwargs: Any) -> Any:
        """Run in the terminal; the process is then ours, so the first load may tune the garbage collector."""
        self._owns_process = True
        return super().run(*args, **kwargs)

    async def _watch(self) -> None:
        # A full collection over a big first load freezes the UI for most of a second (measured:
        # ~0.8 s at 10,000 runs); when the process is ours, pause collection during the load and freeze the survivors.
        tune_gc = self._owns_process and gc.isenabled()
        if tune_gc:
            gc.disable()
        try:
            async for part in self.watcher.load_batches():
                self._emit(part)
        except Exception as exc:  # never a traceback: report and keep the app alive
            self._emit(WatchUpdate(errors=[(None, *describe_error(exc))], initial=True))
        finally:
            if tune_gc:
                gc.freeze()
                gc.enable()
        self.loaded = True
        self.failures.seed(self.watcher.models)
        self._emit(WatchUpdate(initial=True), force=True)
        while self.watch_store:
            try:
                await self.watcher.watch(self._emit)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # a bug or an OS surprise: say so once, keep watching
                code, message = describe_error(exc)
                self.post_message(ErrorReported(code, f"store watcher restarted: {message}", title="Watcher error"))
                await asyncio.sleep(self.watch_restart_delay)

    async def sync_store(self) -> WatchUpdate:
        """Refresh from the store now (tests, and after a user action); returns what changed."""
        update = await self.watcher.poll(force_side=True)
        self._emit(update)
        return update

    def _emit(self, update: WatchUpdate, *, force: bool = False) -> None:
        """Turn a watcher update into messages (called in the worker; touches no widget)."""
        if update.grown:
            self._broadcast(partial(StoreChanged, frozenset(update.grown)))
        if update.updated and self.loaded:
            self.call_later(self._notice_failures, frozenset(update.updated))
        if update.updated or update.errors or force:
            self._broadcast(
                partial(
                    RunsUpdated,
                    frozenset(update.updated),
                    initial=update.initial,
                    loaded=self.loaded,
                    store_error=self.watcher.store_error,
                )
            )
        for run_id, code, message in update.errors:
            if run_id is None:
                self.post_message(ErrorReported(code, message, title="Store unreadable"))

    def _notice_failures(self, run_ids: frozenset[RunId]) -> None:
        """A run that just failed or lost its worker: a notice (and the bell) unless its own screen is on top."""
        for model in self.failures.changes(self.watcher.models, sorted(run_ids)):
            screen = self.screen
            run_screen = screens.loaded("RunScreen")
            if run_screen is not None and isinstance(screen, run_screen) and screen.run_id == model.run_id:
                continue
            text = notice_text(model)
            self.notices.append(text)
            self.notify(text, title="New failure", severity="error", timeout=10)
            if self.bell_on_failure:
                self.bell()

    def _broadcast(self, make: Callable[[], Message]) -> None:
        for screen in list(self.screen_stack):
            screen.post_message(make())

    def _theme_changed(self, theme: Theme) -> None:
        kinds = tuple(k for k in (RunsScreen, screens.loaded("RunScreen"), screens.loaded("StartScreen")) if k)
        for screen in self.screen_stack:
            if isinstance(screen, kinds):
                screen.set_glyphs(self.glyphs)

    # ------------------------------------------------------------------ handlers

    def on_run_selected(self, message: RunSelected) -> None:
        self.open_run(message.run_id)

    def open_run(self, run_id: RunId) -> None:
        try:
            screen = screens.RunScreen(run_id=run_id)
        except Exception as exc:
            code, text = describe_error(exc)
            self.post_message(ErrorReported(code, text, title="Cannot open run", run_id=run_id))
            return
        self.push_screen(screen)

    def on_error_reported(self, message: ErrorReported) -> None:
        if isinstance(self.screen, ErrorDialog) and self.screen.code == message.code:
            return  # the same error is already on screen
        self.push_screen(ErrorDialog(message.code, message.message, title=message.title))

    def on_action_proposed(self, message: ActionProposed) -> None:
        """The controller asks for a confirmation; confirmed, the action runs in a worker of the app."""
        request = message.request
        dialog = ConfirmDialog(
            request.title,
            lines_text(request.lines),
            confirm_label=request.confirm_label,
            type_count=request.type_count,
            danger=request.danger,
        )

        def done(confirmed: bool | None) -> None:
            if confirmed:
                self._home.clear_marks(request.run_ids)  # spent: a later `c` acts on the cursor's run again
                self.run_worker(controller.execute(self, request), group="controller", exit_on_error=False)

        self.push_screen(dialog, done)

    def on_cancel_requested(self, message: CancelRequested) -> None:
        self._broadcast(partial(CancelRequested, message.run_ids))

    def on_run_resumed(self, message: RunResumed) -> None:
        """Show the run that goes on: stay if it is the screen on top, else open it (instead of another run)."""
        screen = self.screen
        if isinstance(screen, screens.RunScreen):
            if screen.run_id == message.run_id:
                return
            self.pop_screen()
        self.open_run(message.run_id)

    def on_run_launched(self, message: RunLaunched) -> None:
        run_id = message.run_id
        self.set_timer(controller.SPAWN_CHECK_SECONDS, lambda: self.run_worker(controller.check_spawned(self, run_id)))
        self.open_run(run_id)

    def on_replay_started(self, message: ReplayStarted) -> None:
        self.push_screen(screens.ReplayScreen(message.source_run_id, message.replay_run_id))

    def on_diff_loaded(self, message: DiffLoaded) -> None:
        self.push_screen(screens.DiffScreen(message.title, message.sections, labels=message.labels))

    # ------------------------------------------------------------------ actions

    async def action_quit(self) -> None:
        """Quit, after asking when runs are marked (a bulk action may be half-way through the operator's head)."""
        marked = len(self._home.marked)
        if not marked or isinstance(self.screen, ConfirmDialog):
            self.exit()
            return

        def done(confirmed: bool | None) -> None:
            if confirmed:
                self.exit()

        noun = "run is" if marked == 1 else "runs are"
        lines = (f"{marked} {noun} marked. Quit anyway?", "The marks are lost; the runs keep going in their workers.")
        self.push_screen(ConfirmDialog("Quit", lines_text(lines), confirm_label="quit"), done)

    def action_help(self) -> None:
        if isinstance(self.screen, HelpScreen):
            return
        self.push_screen(HelpScreen(self.help_entries(self.screen)))

    def action_jump(self) -> None:
        """``:``: a prompt; its answer opens a view or a run (``mfm_tui.screens.jump``)."""
        if isinstance(self.screen, JumpPrompt):
            return
        self.push_screen(JumpPrompt(), self._jump_to)

    def _jump_to(self, text: str | None) -> None:
        if text is None:
            return
        jump = resolve_jump(text, self.watcher.models)
        if jump.error is not None:
            self.post_message(ErrorReported(*jump.error, title="Jump"))
        elif jump.view == "runs":
            while len(self.screen_stack) > 1:
                self.pop_screen()
        elif jump.view == "workers":
            self.action_show_workers()
        elif jump.run_id is not None:
            self.open_run(RunId(jump.run_id))

    def action_show_workers(self) -> None:
        """The workers view (``w`` on the runs list, ``:workers``)."""
        if not isinstance(self.screen, screens.WorkersScreen):
            self.push_screen(screens.WorkersScreen())

    def action_command_palette(self) -> None:
        if not self.ascii_only:
            super().action_command_palette()
        elif self.use_command_palette and not CommandPalette.is_open(self):  # type: ignore[arg-type]
            self.push_screen(_AsciiCommandPalette(id="--command-palette", placeholder="Search for commands..."))

    # ------------------------------------------------------------------ key display, help, palette

    def get_key_display(self, binding: Binding) -> str:
        display = super().get_key_display(binding)
        if self.ascii_only:
            for uni, word in _ASCII_KEYS.items():
                display = display.replace(uni, word)
        return display

    def _described_bindings(self, screen: Screen[Any]) -> list[tuple[Any, Binding, list[str]]]:
        """``(node, binding, key displays)`` per action of ``screen``'s active bindings, keys merged."""
        merged: dict[tuple[int, str], tuple[Any, Binding, list[str]]] = {}
        for active in screen.active_bindings.values():
            binding = active.binding
            if not binding.description or binding.action in _HIDDEN_ACTIONS:
                continue
            _node, _binding, keys = merged.setdefault((id(active.node), binding.action), (active.node, binding, []))
            display = self.get_key_display(binding)
            if display not in keys:
                keys.append(display)
        return list(merged.values())

    def help_entries(self, screen: Screen[Any]) -> list[HelpEntry]:
        """Every described binding active on ``screen``, keys merged per action, the app's last."""
        entries = [
            HelpEntry(
                keys=" ".join(keys),
                description=binding.tooltip or binding.description,
                group="Everywhere" if node is self else "This screen",
            )
            for node, binding, keys in self._described_bindings(screen)
        ]
        entries.append(HelpEntry(keys="^p", description="Command palette: every action", group="Everywhere"))
        entries.sort(key=lambda e: e.group == "Everywhere")
        return entries

    def get_system_commands(self, screen: Screen[Any]) -> Iterable[SystemCommand]:
        for node, binding, keys in self._described_bindings(screen):
            title = f"{binding.description} ({', '.join(keys)})"
            callback = partial(self.call_later, self.run_action, binding.action, node)
            yield SystemCommand(title, binding.tooltip or binding.description, callback)
        for name in THEMES:
            yield SystemCommand(f"Theme: {name}", "switch the colour theme", partial(setattr, self, "theme", name))
        for command in super().get_system_commands(screen):
            if command.title not in ("Theme", "Keys", "Quit"):
                yield command


def make_app(
    store: Any,
    *,
    clock: Clock | None = None,
    theme: str = DEFAULT_THEME,
    read_only: bool = False,
    plan_resolver: PlanResolver | Callable[[RunManifest], ExecutionPlan | PlanShape | None] | None = None,
    lease_probe: LeaseProbe | None = None,
    color_system: str | None = None,
    watch: bool = True,
    registry: OperationRegistry | None = None,
    ops_modules: Sequence[str] = (),
    keymap: Mapping[str, str] | None = None,
    notices: Sequence[tuple[str, str]] = (),
    registry_loader: Callable[[], OperationRegistry] | None = None,
) -> MfmApp:
    """The app over ``store`` (an object with ``.events`` and ``.artifacts``: ``FsStore``, ``MemoryStore``…).

    ``theme``: ``mfm-dark`` (default), ``mfm-light``, ``mfm-16``, ``mfm-ascii`` or an alias (``dark``,
    ``light``, ``16``, ``ascii``); unknown → ``ValueError``. ``color_system``: force ``standard``,
    ``256`` or ``truecolor`` output. ``watch=False`` loads once and then only refreshes on
    ``await app.sync_store()`` (tests). ``lease_probe`` decides "worker lost"; ``plan_resolver`` gives
    each run's full plan (states not yet entered, totals). ``registry`` / ``ops_modules``: the operation
    registry, kept as app attributes for the screens that start runs. ``keymap``: key overrides (binding id →
    keys, from the settings file). ``notices``: ``(code, message)`` errors to show once the app is up.
    ``registry_loader``: makes the registry when it is first needed (instead of ``registry``).
    """
    return MfmApp(
        store,
        clock=clock,
        theme=theme,
        read_only=read_only,
        plan_resolver=plan_resolver,
        lease_probe=lease_probe,
        color_system=color_system,
        watch=watch,
        registry=registry,
        ops_modules=ops_modules,
        keymap=keymap,
        notices=notices,
        registry_loader=registry_loader,
    )
