"""Dataclass to dict, one level deep.

``dataclasses.asdict`` deep-copies every nested list and dict, and was the worker's
largest single cost. The domain's dataclasses hold plain JSON data already, and every
dict made here is serialised at once, so a shallow copy is enough.
"""

from __future__ import annotations

from typing import Any


def plain(obj: Any) -> dict[str, Any]:
    return {name: getattr(obj, name) for name in obj.__dataclass_fields__}
