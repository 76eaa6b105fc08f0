"""docs/presets.md, written from the preset schema so the reference cannot drift from the code.

Every field of `engine.config.Preset` carries its documentation as an attribute docstring
(`use_attribute_docstrings=True` puts it in `model_fields[name].description`), and every section model
has a class docstring. This module walks the schema and prints one markdown section per TOML table
with each field's type, constraints, default and docstring:

    python -m engine.preset_reference > docs/presets.md

Defaults are read from a `Preset()` built with nothing set, not from the section classes, because one
class can serve two tables with different defaults (`[pretrain]` and `[sft]` are both `TrainStage`).
tests/test_docs.py fails when the committed file differs from `render_markdown()`.
"""

from __future__ import annotations

import sys
import types
from typing import Annotated, Any, Literal, Union, get_args, get_origin

from engine.config import Preset

REGENERATE = "python -m engine.preset_reference > docs/presets.md"

HEADER = f"""# Preset reference

Generated from the schema in `engine/config.py` by `engine/preset_reference.py`; do not edit it by
hand. After changing the schema, regenerate it with `{REGENERATE}`
(tests/test_docs.py fails while it is stale).

A preset is one TOML file: the top-level keys below, then one table per section. Any key may be
left out and takes the default shown here (a few combinations are checked together: an SFT-only
preset needs `sft.from_weight`); an unknown key is an error with a "did you mean" hint.
`minimind-studio run PRESET --set section.key=value` overrides any field, the value read as TOML.
The shipped presets are in [presets/](../presets/); [tiny.toml](../presets/tiny.toml) is a small
complete example.
"""


def _constraints(metadata: list[Any]) -> list[str]:
    """Field(ge=..., pattern=...) as pydantic stores them (annotated_types objects), in words."""
    words = []
    for item in metadata:
        for attr, symbol in (("ge", ">="), ("gt", ">"), ("le", "<="), ("lt", "<")):
            if getattr(item, attr, None) is not None:
                words.append(f"{symbol} {getattr(item, attr)}")
        if getattr(item, "pattern", None):
            words.append(f"matching `{item.pattern}`")
    return words


def _type_name(annotation: Any) -> str:
    """A type as a preset author reads it: `int >= 1 | "auto"`, `list of "tokenizer" | ...`."""
    origin = get_origin(annotation)
    if origin is Annotated:
        base, *metadata = get_args(annotation)
        # Field(ge=1) inside Annotated arrives as a FieldInfo whose own metadata holds the bounds.
        bounds = _constraints([m for info in metadata for m in getattr(info, "metadata", [info])])
        return " ".join([_type_name(base), *bounds])
    if origin is Literal:
        return " | ".join(f'"{value}"' if isinstance(value, str) else repr(value) for value in get_args(annotation))
    if origin in (Union, types.UnionType):
        options = [arg for arg in get_args(annotation) if arg is not type(None)]
        return " | ".join(_type_name(arg) for arg in options)
    if origin is list:
        return f"list of {_type_name(get_args(annotation)[0])}"
    return getattr(annotation, "__name__", str(annotation))


def _toml_value(value: Any) -> str:
    """A default written as it would be in the TOML file."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return f'"{value}"'
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(item) for item in value) + "]"
    return repr(value)


def _default(section: Any, name: str, field: Any) -> str:
    value = getattr(section, name)
    if field.default is None and field.default_factory is None:
        # Unset in the file; a validator may fill it from other fields (intermediate_size from hidden_size).
        return "unset" if value is None else f"unset (`{_toml_value(value)}` with the other defaults)"
    return f"`{_toml_value(value)}`"


def _is_section(annotation: Any) -> bool:
    return isinstance(annotation, type) and hasattr(annotation, "model_fields")


def _text(text: str | None) -> str:
    """A docstring as one markdown line; `<` escaped, or GitHub would take `<run dir>` for an HTML tag and drop it."""
    return " ".join((text or "").split()).replace("<", "&lt;")


def _fields(section: Any) -> list[str]:
    lines = []
    for name, field in type(section).model_fields.items():
        if _is_section(field.annotation):
            continue
        kind = ", ".join([_type_name(field.annotation), *_constraints(field.metadata)])
        lines.append(f"- `{name}`: {kind}; default {_default(section, name, field)}. {_text(field.description)}")
    return lines


def _sections(section: Any, path: str, field_doc: str | None) -> list[str]:
    """This table, then each table nested in it, in schema order."""
    title = f"## [{path}]" if path else "## Top level"
    intro = " ".join(part for part in (_text(field_doc), _text(type(section).__doc__)) if part)
    out = [title, "", f"{intro} (schema class `{type(section).__name__}`)", ""]
    own = _fields(section)
    out += [*own, ""] if own else []
    for name, field in type(section).model_fields.items():
        if _is_section(field.annotation):
            out += _sections(getattr(section, name), f"{path}.{name}" if path else name, field.description)
    return out


def render_markdown() -> str:
    """docs/presets.md as it should read for the schema in engine/config.py."""
    body = _sections(Preset(), "", None)
    return HEADER + "\n" + "\n".join(body).rstrip("\n") + "\n"


if __name__ == "__main__":
    sys.stdout.write(render_markdown())
