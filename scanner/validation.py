"""Pydantic validation errors as a person reads them: the field, the value, what was expected.

pydantic's own text ("1 validation error for HostFacts / cpu.family / Input should be a valid
integer, unable to parse ...") spans lines and names the model, not the field's value. One
line per error, `cpu.family: 'x' is not an integer`, and values shown as JSON (null, true,
["a"]) since Python's None, True and list syntax mean nothing to the reader.
"""

from __future__ import annotations

import json
from typing import Any

from pydantic import ValidationError

# pydantic error type -> what the value is not.
_NOT = {
    "int_parsing": "an integer",
    "int_type": "an integer",
    "int_from_float": "an integer",
    "float_parsing": "a number",
    "float_type": "a number",
    "string_type": "a string",
    "bool_parsing": "true or false",
    "bool_type": "true or false",
    "list_type": "a list",
    "dict_type": "an object",
    "model_type": "an object",
    "model_attributes_type": "an object",
}
SHOWN = 60


def show(value: Any) -> str:
    """A value in one short line: strings quoted, everything else as JSON."""
    if isinstance(value, str):
        text = repr(value)
    else:
        try:
            text = json.dumps(value, sort_keys=True, default=str)
        except (TypeError, ValueError):
            text = repr(value)
    return text if len(text) <= SHOWN else text[: SHOWN - 3] + "..."


def problem(error: Any) -> str:
    """What is wrong with one error's value, without its location."""
    kind = error["type"]
    value = show(error.get("input"))
    if kind == "missing":
        return "missing"
    if kind == "extra_forbidden":
        return "not a known field"
    if kind in _NOT:
        return f"{value} is not {_NOT[kind]}"
    if kind in ("literal_error", "enum"):
        expected = (error.get("ctx") or {}).get("expected", "")
        return f"{value} is not one of {expected}"
    message = str(error["msg"]).removeprefix("Value error, ")
    return f"{value}: {message}"


def _one(error: Any, prefix: str) -> str:
    where = prefix + ".".join(str(part) for part in error["loc"])
    return f"{where}: {problem(error)}" if where else problem(error)


def describe(exc: ValidationError, prefix: str = "", most: int = 3) -> str:
    """The first few errors of `exc`, one line, each naming field and value."""
    errors = exc.errors()
    text = "; ".join(_one(error, prefix) for error in errors[:most])
    if len(errors) > most:
        text += f"; and {len(errors) - most} more"
    return text
