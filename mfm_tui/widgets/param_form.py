"""A form for an operation's parameters, built from its pydantic model: one labelled input per field with its type,
constraints and default; errors shown under the field they belong to.

Values are read like ``mfm start OP -p key=value`` reads them (``engine.operations.parse_param_assignments``: JSON
when it parses, text for string fields, ``a,b,c`` for lists), so the form and the CLI agree. An empty input leaves
the field out (its default applies; a required field then reports "Field required").
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel
from textual import on
from textual.app import ComposeResult
from textual.containers import Vertical
from textual.message import Message
from textual.widgets import Input, Static

from engine.errors import MfmError
from engine.operations import Operation, parse_param_assignments

__all__ = ["FieldSpec", "ParamForm", "field_specs", "validate_form"]


@dataclass(frozen=True, slots=True)
class FieldSpec:
    name: str
    type_label: str
    default_text: str
    required: bool
    description: str
    default_shown_only: bool = False
    """The default cannot be typed back as shown (e.g. a text with a newline): left as shown, the default applies."""


def _type_label(schema: Mapping[str, Any]) -> str:
    kind = schema.get("type")
    if kind is None and "anyOf" in schema:
        kinds = [s.get("type") for s in schema["anyOf"] if s.get("type") != "null"]
        kind = kinds[0] if len(kinds) == 1 else "/".join(str(k) for k in kinds)
    label = {"integer": "int", "string": "text", "boolean": "true/false", "number": "number"}.get(str(kind), str(kind))
    if kind == "array":
        item = schema.get("items", {}).get("type", "value")
        label = f"list of {item} (a,b,c or JSON)"
    bounds = []
    if "minimum" in schema:
        bounds.append(f">= {schema['minimum']}")
    if "maximum" in schema:
        bounds.append(f"<= {schema['maximum']}")
    if "minItems" in schema:
        bounds.append(f"{schema['minItems']}+ items")
    return label + (f", {' '.join(bounds)}" if bounds else "")


def _default_text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, str):
        return value if value.isprintable() else json.dumps(value, ensure_ascii=False)[1:-1]
    if isinstance(value, list) and all(isinstance(v, str) and "," not in v for v in value):
        return ",".join(value)
    return json.dumps(value, separators=(",", ":"))


def field_specs(model: type[BaseModel]) -> list[FieldSpec]:
    """One spec per field, in declaration order."""
    props = model.model_json_schema().get("properties", {})
    specs: list[FieldSpec] = []
    for name, info in model.model_fields.items():
        required = info.is_required()
        default = None if required else info.get_default(call_default_factory=True)
        shown = _default_text(default)
        specs.append(
            FieldSpec(
                name=name,
                type_label=_type_label(props.get(name, {})),
                default_text=shown,
                required=required,
                description=(info.description or "").strip(),
                default_shown_only=isinstance(default, str) and shown != default,
            )
        )
    return specs


def validate_form(op: Operation, values: Mapping[str, str]) -> tuple[dict[str, Any], dict[str, str]]:
    """``(raw params, {field: error})`` for the form's text values; no errors means the op accepts them."""
    try:
        raw = parse_param_assignments(op, [f"{k}={v}" for k, v in values.items() if v.strip() != ""])
    except MfmError as exc:
        return {}, {"(params)": exc.info.message}
    try:
        op.validate_params(raw)
    except MfmError as exc:
        errors: dict[str, str] = {}
        details: Any = exc.info.details if isinstance(exc.info.details, dict) else {}
        for problem in details.get("errors", []):
            field = str(problem.get("field", "(params)")).split(".")[0]
            errors.setdefault(field, str(problem.get("error", "invalid")))
        return raw, errors or {"(params)": exc.info.message}
    return raw, {}


class ParamForm(Vertical):
    """The fields of ``op``; ``values()`` reads them, ``show_errors()`` marks them. Posts ``Submitted`` on ``enter``
    in the last field."""

    DEFAULT_CSS = """
    ParamForm { height: auto; }
    ParamForm .param-label { height: auto; margin-top: 1; }
    ParamForm .param-label.-first { margin-top: 0; }
    ParamForm Input { width: 1fr; }
    ParamForm .param-error { height: auto; color: $error; }
    ParamForm .param-error.-empty { display: none; }
    ParamForm #param-form-error { height: auto; color: $error; }
    ParamForm .param-none { color: $text-muted; }
    """

    class Submitted(Message):
        """``enter`` in the last field: the operator wants to start."""

        def __init__(self, form: ParamForm) -> None:
            super().__init__()
            self.form = form

        @property
        def control(self) -> ParamForm:
            """The form that was submitted."""
            return self.form

    def __init__(self, op: Operation, *, ascii_only: bool = False, id: str | None = None) -> None:
        super().__init__(id=id)
        self.op = op
        self.specs = field_specs(op.params_model)
        self.touched: set[str] = set()
        self.ascii_only = ascii_only
        """Mark errors with ``x`` instead of ``✗`` (the ``mfm-ascii`` theme)."""

    def compose(self) -> ComposeResult:
        if not self.specs:
            yield Static("no parameters", classes="param-none")
        for i, spec in enumerate(self.specs):
            label = f"[b]{spec.name}[/b]  [dim]{spec.type_label}{'  required' if spec.required else ''}[/dim]"
            if spec.description:
                label += f"\n{spec.description}"
            yield Static(label, classes="param-label" + (" -first" if i == 0 else ""))
            box = Input(value=spec.default_text, placeholder=spec.type_label, id=f"param-{spec.name}", compact=True)
            box.cursor_blink = False
            yield box
            yield Static("", id=f"param-error-{spec.name}", classes="param-error -empty")
        yield Static("", id="param-form-error")

    def values(self) -> dict[str, str]:
        """The typed text per field (``""`` = left out: the default applies)."""
        out: dict[str, str] = {}
        for spec in self.specs:
            value = self.query_one(f"#param-{spec.name}", Input).value
            out[spec.name] = "" if spec.default_shown_only and value == spec.default_text else value
        return out

    def set_value(self, name: str, value: str) -> None:
        self.query_one(f"#param-{name}", Input).value = value

    def prefill(self, params: Mapping[str, Any]) -> None:
        """Type ``params`` (a run's ``input_params``) into the fields they name, as the form reads them back."""
        for name, value in params.items():
            for box in self.query(f"#param-{name}"):
                if isinstance(box, Input):
                    box.value = _default_text(value)

    def show_errors(self, errors: Mapping[str, str], only: Sequence[str] | None = None) -> None:
        """Mark each field's error (``only``: just these fields, the others keep theirs)."""
        for spec in self.specs:
            if only is not None and spec.name not in only:
                continue
            line = self.query_one(f"#param-error-{spec.name}", Static)
            text = errors.get(spec.name, "")
            mark = "x" if self.ascii_only else "✗"
            line.update(f"  {mark} {text}" if text else "")
            line.set_class(not text, "-empty")
            self.query_one(f"#param-{spec.name}", Input).set_class(bool(text), "-invalid")
        other = errors.get("(params)", "")
        if only is None or other:
            self.query_one("#param-form-error", Static).update(other)

    def focus_first(self) -> None:
        boxes = list(self.query(Input))
        if boxes:
            boxes[0].focus()

    @on(Input.Changed)
    def _changed(self, event: Input.Changed) -> None:
        if not event.input.has_focus:
            return  # set by code (initial defaults): not the operator's edit
        name = (event.input.id or "").removeprefix("param-")
        self.touched.add(name)
        _raw, errors = validate_form(self.op, self.values())
        self.show_errors(errors, only=sorted(self.touched))

    @on(Input.Submitted)
    def _submitted(self, event: Input.Submitted) -> None:
        event.stop()
        boxes = list(self.query(Input))
        if event.input is boxes[-1]:
            self.post_message(self.Submitted(self))
        else:
            boxes[boxes.index(event.input) + 1].focus()
