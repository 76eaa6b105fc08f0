"""The preset editor's model, generated from the pydantic schema (no UI here).

Every leaf field of `Preset` (walking nested sections such as model, pretrain, tracking.swanlab)
becomes a `FieldSpec` with its docstring as help. The editor keeps a plain dict of values, turns typed
text into values, validates the dict exactly as the CLI does, and renders the equivalent command.
"""

from __future__ import annotations

import difflib
import json
import shlex
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ValidationError

from engine.config import (
    PROJECT_ROOT,
    Preset,
    describe_validation_error,
    load_preset,
    parse_override,
    preset_to_toml,
)
from engine.errors import PresetError

FieldKind = Literal["bool", "choice", "list", "text"]


@dataclass(frozen=True)
class FieldSpec:
    path: tuple[str, ...]  # ("pretrain", "batch_size")
    kind: FieldKind
    base_type: Any  # int, float, str ... (the annotation without None)
    optional: bool
    choices: tuple[str, ...]
    description: str

    @property
    def key(self) -> str:
        return ".".join(self.path)

    @property
    def section(self) -> str:
        return ".".join(self.path[:-1])


def _unwrap(annotation: Any) -> tuple[Any, bool]:
    """`int | None` -> (int, True)."""
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        return (args[0] if len(args) == 1 else str), True
    return annotation, False


def schema_fields(model: type[BaseModel] = Preset, prefix: tuple[str, ...] = ()) -> list[FieldSpec]:
    """Leaf fields in schema order, top-level fields first, then each section's."""
    leaves: list[FieldSpec] = []
    nested: list[FieldSpec] = []
    for name, info in model.model_fields.items():
        base, optional = _unwrap(info.annotation)
        if isinstance(base, type) and issubclass(base, BaseModel):
            nested.extend(schema_fields(base, prefix + (name,)))
            continue
        origin = typing.get_origin(base)
        if base is bool:
            kind, choices = "bool", ()
        elif origin is Literal:
            kind, choices = "choice", tuple(str(c) for c in typing.get_args(base))
        elif origin is list:
            kind, choices = "list", tuple(str(c) for c in typing.get_args(typing.get_args(base)[0]))
        else:
            kind, choices = "text", ()
        leaves.append(FieldSpec(prefix + (name,), kind, base, optional, choices, " ".join((info.description or "").split())))
    return leaves + nested


def sections(fields: list[FieldSpec]) -> dict[str, list[FieldSpec]]:
    grouped: dict[str, list[FieldSpec]] = {}
    for spec in fields:
        grouped.setdefault(spec.section, []).append(spec)
    return grouped


def get_value(data: dict[str, Any], path: tuple[str, ...]) -> Any:
    node: Any = data
    for part in path:
        if not isinstance(node, dict):
            return None
        node = node.get(part)
    return node


def set_value(data: dict[str, Any], path: tuple[str, ...], value: Any) -> None:
    node = data
    for part in path[:-1]:
        node = node.setdefault(part, {})
    node[path[-1]] = value


def format_value(value: Any, spec: FieldSpec) -> str:
    """How a value shows in a text input."""
    if value is None:
        return ""
    if spec.kind == "list":
        return ", ".join(str(v) for v in value)
    return str(value)


def parse_text(text: str, spec: FieldSpec) -> Any:
    """Typed text -> value. Numbers are read as TOML (3e-3, 1_000); what does not parse stays text so
    pydantic names the problem in the same words as for a bad --set."""
    text = text.strip()
    if not text and spec.optional:
        return None
    if spec.kind == "list":
        try:
            value = parse_override(f"v={text}")[1]
        except PresetError:
            value = None
        if isinstance(value, list):
            return value
        return [part for part in text.replace(",", " ").split() if part]
    if spec.base_type is str:
        return text
    return parse_override(f"v={text}")[1] if text else text


def validate(data: dict[str, Any], source: str) -> tuple[Preset | None, str | None, set[str]]:
    """(preset, None, {}) or (None, the CLI's error paragraph, the bad field keys)."""
    try:
        return Preset.model_validate(data), None, set()
    except ValidationError as error:
        bad = {".".join(str(p) for p in item["loc"]) for item in error.errors()}
        return None, describe_validation_error(error, source), bad


def edited_fields(base: dict[str, Any], data: dict[str, Any], fields: list[FieldSpec]) -> list[tuple[FieldSpec, Any]]:
    return [(spec, get_value(data, spec.path)) for spec in fields if get_value(data, spec.path) != get_value(base, spec.path)]


def cli_value(value: Any) -> str:
    """The --set value text that reads back as `value` (strings bare when that is unambiguous)."""
    if isinstance(value, str) and parse_override(f"v={value}")[1] == value:
        return value
    # JSON scalars and arrays of them are valid TOML inline values (true, 3e-3, "text", ["a", "b"]).
    return json.dumps(value, ensure_ascii=False, separators=(", ", ": "))


def preset_arg(path: Path) -> str:
    """How the CLI should name a preset file: relative to the working dir, else a shipped name."""
    path = Path(path).resolve()
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        pass
    if path.parent == (PROJECT_ROOT / "presets").resolve():
        return path.stem
    return str(path)


def cli_command(path: Path, edits: list[tuple[FieldSpec, Any]]) -> tuple[str, list[str]]:
    """The `minimind-studio run ... --detach --set ...` line equal to launching these edits, and the
    edits no --set can express (clearing an optional field: TOML has no null)."""
    parts = ["minimind-studio", "run", shlex.quote(preset_arg(path)), "--detach"]
    unexpressible = []
    for spec, value in edits:
        if value is None:
            unexpressible.append(spec.key)
        else:
            parts += ["--set", shlex.quote(f"{spec.key}={cli_value(value)}")]
    return " ".join(parts), unexpressible


def diff_against_file(preset: Preset, path: Path) -> str:
    """Unified diff of the preset as it is on disk now vs as edited, both through preset_to_toml (the
    raw file has comments and omits defaults, so a raw diff would show every field)."""
    try:
        on_disk = preset_to_toml(load_preset(path)).splitlines(keepends=True)
    except PresetError as error:
        return f"(the file no longer loads: {error})"
    edited = preset_to_toml(preset).splitlines(keepends=True)
    return "".join(difflib.unified_diff(on_disk, edited, fromfile=f"{path.name} (on disk)", tofile=f"{path.name} (edited)"))


def list_presets(extra_dirs: list[Path] | None = None) -> list[Path]:
    """Shipped presets, then user presets (./presets when it is another folder)."""
    folders = [PROJECT_ROOT / "presets", Path.cwd() / "presets", *(extra_dirs or [])]
    seen: set[Path] = set()
    found = []
    for folder in folders:
        if not folder.is_dir() or folder.resolve() in seen:
            continue
        seen.add(folder.resolve())
        found += sorted(folder.glob("*.toml"))
    return found
