"""The operation registry: what can be started, and how a run's plan is found again.

An :class:`Operation` bundles an op id, a version, a description, a pydantic model of its
parameters, a plan builder (params → ``ExecutionPlan``), an initial context (params → dict) and a
run config (retry policy, profile, execution mode, skip tags, exec allowlist; fixed or computed
from the params).

Operations are found in two ways, both giving modules (or objects) that expose ``OPERATIONS``:

* the entry-point group ``mfm.operations`` (``demo = "engine.demo_ops:OPERATIONS"``);
* explicit modules (``mfm --ops some.module`` or ``--ops path/to/ops.py``).

Starting a run (:func:`prepare_run`, with the new run's id made by its caller) validates the parameters,
builds and validates the plan, then writes the manifest artifact (canonical JSON, the validated parameters as
``input_params``); nothing is written when any of that fails. Resuming finds the plan again from
the stored manifest alone (:meth:`OperationRegistry.plan_for`: lookup by ``op_id`` +
``op_version``, parameters re-validated from ``manifest.input_params``).
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys
import types
import typing
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from importlib import metadata
from typing import Any

from pydantic import BaseModel, ValidationError

from engine._kinds import ArtifactKind
from engine._wire import parse_json
from engine.artifacts import read_canonical_json, verified_put_json
from engine.config import RunConfig, RunManifest
from engine.context import JsonContext
from engine.engine import StartRun, Stores
from engine.errors import ErrorCategory, ErrorInfo, MfmError
from engine.hashing import CanonicalJsonError
from engine.ids import ArtifactId, OpId, RunId
from engine.plan import ExecutionPlan, PlanValidationError, validate_plan
from engine.stores import ArtifactStore

__all__ = [
    "ENTRY_POINT_GROUP",
    "Operation",
    "OperationEnv",
    "OperationError",
    "OperationRegistry",
    "PreparedRun",
    "load_registry",
    "load_start_run",
    "operations_from_object",
    "parse_param_assignments",
    "parse_params_json",
    "prepare_run",
    "read_manifest",
]

ENTRY_POINT_GROUP = "mfm.operations"


class OperationError(MfmError):
    """Unknown operation, invalid parameters, an unloadable ``--ops`` module (codes below).

    ``unknown_operation`` · ``operation_version_unknown`` · ``invalid_params`` ·
    ``ops_module_import_failed`` · ``ops_module_invalid`` · ``duplicate_operation`` ·
    ``plan_build_failed`` · ``manifest_invalid``.
    """

    @classmethod
    def new(cls, code: str, message: str, details: Any = None) -> OperationError:
        return cls(ErrorInfo.new(code, message, category=ErrorCategory.PARSING_INPUT, details=details))


@dataclass(frozen=True, slots=True)
class OperationEnv:
    """What a plan builder may use besides the parameters (``artifacts`` is ``None`` when only the
    plan's shape is wanted, e.g. by a monitor)."""

    artifacts: ArtifactStore | None = None


@dataclass(frozen=True, slots=True)
class Operation:
    """One startable operation. ``build_plan`` and ``initial_context`` receive validated params."""

    op_id: OpId
    version: str
    description: str
    params_model: type[BaseModel]
    build_plan: Callable[[Any, OperationEnv], ExecutionPlan]
    run_config: RunConfig | Callable[[Any], RunConfig]
    initial_context: Callable[[Any], dict[str, Any]] = field(default=lambda _params: {})

    def __post_init__(self) -> None:
        object.__setattr__(self, "op_id", OpId(self.op_id))

    @property
    def summary(self) -> str:
        """The description's first line."""
        return self.description.strip().splitlines()[0] if self.description.strip() else ""

    def config_for(self, params: BaseModel) -> RunConfig:
        rc = self.run_config
        return rc if isinstance(rc, RunConfig) else rc(params)

    def params_schema(self) -> dict[str, Any]:
        return self.params_model.model_json_schema()

    def validate_params(self, raw: Any) -> BaseModel:
        """Validate raw parameters; failure → ``invalid_params`` naming each field's error.

        A float anywhere is refused before the model sees it (the model would turn ``2.0`` or ``-0`` into an int):
        parameters are canonical JSON, which has integers only (ENGINE-SPEC §2.1).
        """
        if raw is None:
            raw = {}
        found = _first_float(raw, "")
        if found is not None:
            where, number = found
            hint = " (-0 is read as a float, as serde_json reads it; write 0)" if number == 0 else ""
            raise OperationError.new(
                "invalid_params",
                f"invalid parameters for {self.op_id}: {where}: floats are not allowed, got {number!r}{hint}",
                {"errors": [{"field": where, "error": "floats are not allowed"}]},
            )
        try:
            return self.params_model.model_validate(raw)
        except ValidationError as exc:
            problems = [
                {"field": ".".join(str(p) for p in err["loc"]) or "(params)", "error": err["msg"]}
                for err in exc.errors(include_url=False, include_input=False, include_context=False)
            ]
            shown = "; ".join(f"{p['field']}: {p['error']}" for p in problems)
            raise OperationError.new(
                "invalid_params", f"invalid parameters for {self.op_id}: {shown}", {"errors": problems}
            ) from None

    def describe(self) -> dict[str, Any]:
        return {
            "op_id": str(self.op_id),
            "version": self.version,
            "description": self.description,
            "params_schema": self.params_schema(),
        }


def operations_from_object(obj: Any, origin: str) -> list[Operation]:
    """Operations exposed by a module (its ``OPERATIONS``), a sequence, a single operation, or a
    zero-argument callable returning one of those."""
    if isinstance(obj, types.ModuleType):
        if not hasattr(obj, "OPERATIONS"):
            raise OperationError.new("ops_module_invalid", f"module {origin} has no OPERATIONS attribute")
        obj = obj.OPERATIONS
    if callable(obj) and not isinstance(obj, Operation):
        obj = obj()
    if isinstance(obj, Operation):
        return [obj]
    if isinstance(obj, Iterable) and not isinstance(obj, (str, bytes, Mapping)):
        items = list(obj)
        if all(isinstance(op, Operation) for op in items):
            return items
    raise OperationError.new("ops_module_invalid", f"{origin} does not provide a sequence of Operation objects")


class OperationRegistry:
    """Operations by ``(op_id, version)``; ``get(op_id)`` gives the most recently registered version."""

    def __init__(self, operations: Iterable[Operation] = ()) -> None:
        self._ops: dict[tuple[str, str], Operation] = {}
        self._latest: dict[str, Operation] = {}
        self.load_errors: list[str] = []
        for op in operations:
            self.register(op)

    def register(self, op: Operation) -> None:
        key = (str(op.op_id), op.version)
        existing = self._ops.get(key)
        if existing is op:
            return  # found twice (entry point and --ops): the same object, harmless
        if existing is not None:
            raise OperationError.new(
                "duplicate_operation", f"operation {op.op_id} version {op.version} is registered twice"
            )
        self._ops[key] = op
        self._latest[str(op.op_id)] = op

    def get(self, op_id: str, version: str | None = None) -> Operation:
        if version is None:
            op = self._latest.get(op_id)
        else:
            op = self._ops.get((op_id, version))
            if op is None and op_id in self._latest:
                raise OperationError.new(
                    "operation_version_unknown",
                    f"operation {op_id} has no version {version} here (known: "
                    f"{', '.join(sorted(v for (o, v) in self._ops if o == op_id))})",
                )
        if op is None:
            known = ", ".join(sorted(self._latest)) or "none"
            raise OperationError.new("unknown_operation", f"unknown operation {op_id!r} (known: {known})")
        return op

    def operations(self) -> list[Operation]:
        """The latest version of every operation, sorted by op id."""
        return [self._latest[k] for k in sorted(self._latest)]

    def __contains__(self, op_id: object) -> bool:
        return op_id in self._latest

    def params_for(self, manifest: RunManifest) -> tuple[Operation, BaseModel]:
        op = self.get(str(manifest.op_id), manifest.op_version)
        return op, op.validate_params(manifest.input_params)

    def plan_for(self, manifest: RunManifest, env: OperationEnv | None = None) -> ExecutionPlan:
        op, params = self.params_for(manifest)
        return _build_plan(op, params, env or OperationEnv())

    def plan_resolver(self, env: OperationEnv | None = None) -> Callable[[RunManifest], ExecutionPlan]:
        """The engine's ``plan_resolver`` (used on resume and replay)."""
        return lambda manifest: self.plan_for(manifest, env)


def _build_plan(op: Operation, params: BaseModel, env: OperationEnv) -> ExecutionPlan:
    try:
        plan = op.build_plan(params, env)
        validate_plan(plan)
    except PlanValidationError as exc:
        raise OperationError.new("plan_build_failed", f"operation {op.op_id} built an invalid plan: {exc}") from None
    except CanonicalJsonError as exc:  # e.g. an idempotency key hashed from parameters that hold a secret
        code = "secrets_detected" if exc.is_secret else "plan_build_failed"
        raise OperationError.new(code, f"operation {op.op_id} could not build its plan: {exc}") from None
    if plan.op_id != op.op_id:
        raise OperationError.new(
            "plan_build_failed", f"operation {op.op_id} built a plan for another operation ({plan.op_id})"
        )
    return plan


def _import_module(name: str) -> Any:
    """A dotted module name, or the path of a ``.py`` file."""
    try:
        if name.endswith(".py"):
            path = os.path.abspath(name)
            if not os.path.isfile(path):
                raise FileNotFoundError(path)
            mod_name = "mfm_ops_" + os.path.splitext(os.path.basename(path))[0]
            if mod_name in sys.modules:
                return sys.modules[mod_name]
            spec = importlib.util.spec_from_file_location(mod_name, path)
            if spec is None or spec.loader is None:
                raise ImportError(f"cannot load {path}")
            module = importlib.util.module_from_spec(spec)
            sys.modules[mod_name] = module
            try:
                spec.loader.exec_module(module)
            except BaseException:
                sys.modules.pop(mod_name, None)
                raise
            return module
        return importlib.import_module(name)
    except Exception as exc:
        raise OperationError.new(
            "ops_module_import_failed", f"cannot import operations module {name!r}: {type(exc).__name__}: {exc}"
        ) from exc


def load_registry(modules: Sequence[str] = (), *, entry_points: bool = True) -> OperationRegistry:
    """Operations from the ``mfm.operations`` entry points, then from each named module.

    A broken entry point (a third-party plugin) is recorded in ``registry.load_errors`` instead of
    stopping every command; a broken ``--ops`` module, named explicitly, is an error.
    """
    registry = OperationRegistry()
    if entry_points:
        for ep in sorted(metadata.entry_points(group=ENTRY_POINT_GROUP), key=lambda e: e.name):
            try:
                for op in operations_from_object(ep.load(), f"entry point {ep.name} ({ep.value})"):
                    registry.register(op)
            except Exception as exc:
                registry.load_errors.append(f"entry point {ep.name} ({ep.value}): {exc}")
    for name in modules:
        for op in operations_from_object(_import_module(name), name):
            registry.register(op)
    return registry


# ---------------------------------------------------------------------------------------------
# Parameters from the command line
# ---------------------------------------------------------------------------------------------


def _first_float(value: Any, where: str) -> tuple[str, float] | None:
    """The path (``a.b.0``; ``(params)`` for the top) and value of the first float in ``value``, if any."""
    if isinstance(value, float):
        return where or "(params)", value
    if isinstance(value, dict):
        items: Iterable[tuple[Any, Any]] = value.items()
    elif isinstance(value, list | tuple):
        items = enumerate(value)
    else:
        return None
    for key, item in items:
        found = _first_float(item, f"{where}.{key}" if where else str(key))
        if found is not None:
            return found
    return None


def parse_params_json(text: str | bytes) -> Any:
    """Parameters given as JSON text (a parameters file), read as serde_json reads JSON: ``-0`` is a float (which
    :meth:`Operation.validate_params` then refuses), NaN and Infinity are not JSON. ``ValueError`` if not JSON."""
    return parse_json(text)


def _is_str_field(model: type[BaseModel], name: str) -> bool:
    info = model.model_fields.get(name)
    if info is None:
        return False
    ann = info.annotation
    if typing.get_origin(ann) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(ann) if a is not type(None)]
        return bool(args) and all(a is str for a in args)
    return ann is str


def _is_list_field(model: type[BaseModel], name: str) -> bool:
    info = model.model_fields.get(name)
    return info is not None and typing.get_origin(info.annotation) in (list, tuple)


def parse_param_assignments(op: Operation, assignments: Sequence[str]) -> dict[str, Any]:
    """``key=value`` pairs → raw parameters. Values are JSON when they parse as JSON (``3``,
    ``true``, ``["a","b"]``), except for string fields which take the text as is; list fields also
    accept ``a,b,c``."""
    raw: dict[str, Any] = {}
    model = op.params_model
    for item in assignments:
        key, sep, text = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise OperationError.new("invalid_params", f"parameter {item!r} is not of the form key=value")
        value: Any = text
        if not _is_str_field(model, key):
            try:
                value = parse_json(text)  # as serde_json reads JSON: -0 is a float
            except ValueError:
                value = text
            if _is_list_field(model, key) and isinstance(value, str):
                value = [part.strip() for part in text.split(",") if part.strip()]
        raw[key] = value
    return raw


# ---------------------------------------------------------------------------------------------
# Manifests: building, storing and reading them back
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PreparedRun:
    """A run whose manifest is stored and whose id is allocated, ready for a worker."""

    run_id: RunId
    manifest_id: ArtifactId
    manifest: RunManifest
    operation: Operation


def build_manifest(op: Operation, params: BaseModel) -> RunManifest:
    return RunManifest(
        op_id=op.op_id,
        op_version=op.version,
        input_params=params.model_dump(mode="json"),
        run_config=op.config_for(params),
    )


async def prepare_run(
    stores: Stores,
    registry: OperationRegistry,
    op_id: str,
    raw_params: Any,
    *,
    run_id: RunId,
) -> PreparedRun:
    """Validate the parameters, build and validate the plan, store the manifest artifact.

    ``run_id`` is the new run's id, made by the caller (``engine.workers.start_run``). Nothing is written unless
    every check passes.
    """
    op = registry.get(op_id)
    params = op.validate_params(raw_params)
    _build_plan(op, params, OperationEnv())
    manifest = build_manifest(op, params)
    try:
        manifest_id = await verified_put_json(stores.artifacts, ArtifactKind.MANIFEST, manifest.model_dump(mode="json"))
    except CanonicalJsonError as exc:
        code = "secrets_detected" if exc.is_secret else "manifest_not_canonical"
        raise OperationError.new(code, f"the manifest of {op.op_id} cannot be stored: {exc}") from None
    return PreparedRun(run_id=run_id, manifest_id=manifest_id, manifest=manifest, operation=op)


async def read_manifest(artifacts: ArtifactStore, manifest_id: ArtifactId) -> RunManifest:
    value = await read_canonical_json(artifacts, manifest_id)
    try:
        return RunManifest.model_validate(value)
    except ValidationError as exc:
        raise OperationError.new(
            "manifest_invalid", f"artifact {manifest_id} is not a run manifest: {exc.error_count()} error(s)"
        ) from None


async def load_start_run(
    stores: Stores, registry: OperationRegistry, manifest_id: ArtifactId, env: OperationEnv | None = None
) -> StartRun:
    """The ``StartRun`` for a stored manifest: plan and initial context rebuilt from its params."""
    manifest = await read_manifest(stores.artifacts, manifest_id)
    op, params = registry.params_for(manifest)
    plan = _build_plan(op, params, env or OperationEnv(artifacts=stores.artifacts))
    return StartRun(
        manifest=manifest,
        manifest_id=manifest_id,
        plan=plan,
        run_config=manifest.run_config,
        initial_context=JsonContext(op.initial_context(params)),
    )
