"""Hypothesis strategies made from the JSON Schemas in ``schemas/``: any value a schema
allows (the keywords those schemas use), for fuzzing the way in.

hypothesis-jsonschema would do this, but its last release (0.23, 2024) no longer runs on
current Hypothesis."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from typing import Any

from hypothesis import strategies as st

ZONES = st.sampled_from([UTC, timezone(timedelta(hours=8)), timezone(timedelta(hours=-5)),
                         timezone(timedelta(hours=5, minutes=45))])
MOMENTS = st.datetimes(min_value=datetime(1971, 1, 1), max_value=datetime(2100, 1, 1),
                       timezones=ZONES)
# RFC 3339 as producers write it: with an offset or Z, with or without fractions.
DATE_TIMES = st.one_of(MOMENTS.map(lambda t: t.isoformat()),
                       MOMENTS.map(lambda t: t.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")))


def from_schema(schema: dict[str, Any]) -> st.SearchStrategy[Any]:
    if "const" in schema:
        return st.just(schema["const"])
    if "enum" in schema:
        return st.sampled_from(schema["enum"])
    choices = schema.get("oneOf") or schema.get("anyOf")
    if choices:
        rest = {k: v for k, v in schema.items() if k not in ("oneOf", "anyOf")}
        return st.sampled_from(choices).flatmap(
            lambda choice: from_schema(_merge(rest, choice, [] if "anyOf" in schema else choices)))
    kind = schema.get("type", "object" if "properties" in schema else "string")
    if isinstance(kind, list):
        return st.sampled_from(kind).flatmap(lambda one: from_schema({**schema, "type": one}))
    return _BY_TYPE[kind](schema)


def _merge(base: dict[str, Any], more: dict[str, Any],
           exclusive: list[dict[str, Any]]) -> dict[str, Any]:
    """``base`` with the branch ``more`` of its oneOf/anyOf; for a oneOf (``exclusive``: all
    its branches), without what only the other branches require, so exactly one matches."""
    merged = {**base, **more}
    others = {name for branch in exclusive if branch is not more for name in branch.get("required", [])}
    others -= set(more.get("required", []))
    merged["properties"] = {name: sub for name, sub in {**base.get("properties", {}),
                                                        **more.get("properties", {})}.items()
                            if name not in others}
    merged["required"] = [*base.get("required", []), *more.get("required", [])]
    if "type" not in more and "type" in base:
        merged["type"] = base["type"]
    return merged


def _object(schema: dict[str, Any]) -> st.SearchStrategy[dict[str, Any]]:
    properties = schema.get("properties", {})
    required = [name for name in schema.get("required", []) if name in properties]
    optional = [name for name in properties if name not in required]
    least = max(0, schema.get("minProperties", 0) - len(required))

    @st.composite
    def build(draw: Any) -> dict[str, Any]:
        chosen = draw(st.lists(st.sampled_from(optional), unique=True, min_size=min(least, len(optional)),
                               max_size=len(optional))) if optional else []
        return {name: draw(from_schema(properties[name])) for name in [*required, *chosen]}

    return build()


def _string(schema: dict[str, Any]) -> st.SearchStrategy[str]:
    if schema.get("format") == "date-time":
        return DATE_TIMES
    if "pattern" in schema:
        return st.from_regex(schema["pattern"], fullmatch=True)
    return st.text(min_size=schema.get("minLength", 0), max_size=schema.get("maxLength", 40))


def _integer(schema: dict[str, Any]) -> st.SearchStrategy[int]:
    return st.integers(min_value=schema.get("minimum"), max_value=schema.get("maximum"))


def _number(schema: dict[str, Any]) -> st.SearchStrategy[float]:
    return st.floats(min_value=schema.get("minimum"), max_value=schema.get("maximum"),
                     allow_nan=False, allow_infinity=False)


def _array(schema: dict[str, Any]) -> st.SearchStrategy[list[Any]]:
    return st.lists(from_schema(schema.get("items", {})), min_size=schema.get("minItems", 0),
                    max_size=max(4, schema.get("minItems", 0)))


_BY_TYPE = {
    "object": _object, "string": _string, "integer": _integer, "number": _number, "array": _array,
    "boolean": lambda schema: st.booleans(), "null": lambda schema: st.none(),
}
