"""Walking the config tree by its keys: the field names of a section, the section under a key,
the one-line-per-problem message of a validation error (the dotted key, the value given and
what is allowed), and a stable short hash of a section's values."""

from __future__ import annotations

import hashlib
import json
from typing import Any

from pydantic import BaseModel, ValidationError


def field_names(model: type[BaseModel]) -> list[str]:
    return [f.alias or name for name, f in model.model_fields.items()]


def submodel(model: type[BaseModel], key: str) -> type[BaseModel] | None:
    for name, field in model.model_fields.items():
        if key in (name, field.alias):
            ann = field.annotation
            return ann if isinstance(ann, type) and issubclass(ann, BaseModel) else None
    return None


def format_validation_error(err: ValidationError, root: type[BaseModel]) -> str:
    """One line per problem: the dotted key, the value given and what is allowed."""
    lines = []
    for problem in err.errors():
        key = ".".join(str(p) for p in problem["loc"]) or "<root>"
        value = problem.get("input")
        if problem["type"] == "extra_forbidden":
            parent = walk(root, problem["loc"][:-1])
            allowed = ", ".join(field_names(parent)) if parent else "?"
            lines.append(f"unknown key {key!r}; valid keys here: {allowed}")
        else:
            message = problem["msg"].removeprefix("Value error, ")
            # a section's own check (a dict given): its message names the keys it read
            given = "" if isinstance(value, dict) else f"={value!r}"
            lines.append(f"{key}{given}: {message}")
    return "invalid config:\n  " + "\n  ".join(lines)


def walk(model: type[BaseModel], loc: tuple[Any, ...]) -> type[BaseModel] | None:
    current: type[BaseModel] | None = model
    for part in loc:
        if current is None or isinstance(part, int):
            continue  # list index: stay on the element's model when it is a list of sections
        nxt = submodel(current, str(part))
        if nxt is None:
            field = current.model_fields.get(str(part))
            args = getattr(field.annotation, "__args__", ()) if field else ()
            nxt = next((a for a in args if isinstance(a, type) and issubclass(a, BaseModel)), None)
        current = nxt
    return current


def config_hash(section: BaseModel, *, exclude: set[str] | None = None, length: int = 12) -> str:
    """Stable short hash of a section's values (used to key SD targets by extraction config)."""
    payload = section.model_dump(mode="json", by_alias=True, exclude=exclude)
    blob = json.dumps(payload, sort_keys=True).encode()
    return hashlib.sha256(blob).hexdigest()[:length]
