"""The JSON Schemas of ``schemas/``, compiled once, one validator per event type."""

from __future__ import annotations

import functools
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import fastjsonschema

_HERE = Path(__file__).resolve().parent
# In a checkout the schemas sit beside the package; in a wheel they are copied into it.
SCHEMA_DIR = next(p for p in (_HERE.parent / "schemas", _HERE / "_schemas") if p.is_dir())


def event_types() -> list[str]:
    return sorted(p.name.removesuffix(".json") for p in SCHEMA_DIR.glob("*.*.json"))


def load(event_type: str) -> dict[str, Any]:
    return json.loads((SCHEMA_DIR / f"{event_type}.json").read_text())


@functools.cache
def _validator(event_type: str) -> Callable[[Any], Any]:
    return fastjsonschema.compile(load(event_type))


def prepare() -> None:
    """Compile every validator now (some 70 ms in all): compiled on first use, they made the
    first inputs after a start wait (5 % of a fresh worker's first second, py-spy)."""
    for event_type in event_types():
        _validator(event_type)


def problem(event_type: str, data: Any) -> str | None:
    """What is wrong with ``data`` for ``event_type``, or None when it is valid."""
    try:
        _validator(event_type)(data)
    except fastjsonschema.JsonSchemaValueException as exc:
        return str(exc.message)
    return None
