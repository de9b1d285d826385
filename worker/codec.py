"""CloudEvents over Kafka: decode what we consume, encode what we produce.

Both content modes of the Kafka protocol binding are accepted on input; output is
always binary mode. Every input is checked against its JSON Schema in ``schemas/``;
anything that cannot be used raises :class:`BadInput` with a short machine-readable
``error_type`` (the DLQ header) and a human-readable message.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import Any

import orjson

from worker import schemas
from worker.domain.envelope import Envelope

STRUCTURED = "application/cloudevents+json"
REQUIRED_ATTRIBUTES = ("specversion", "id", "source", "type")


class BadInput(Exception):
    def __init__(self, error_type: str, message: str) -> None:
        super().__init__(message)
        self.error_type = error_type
        self.message = message


Headers = Mapping[str, bytes] | Iterable[tuple[str, bytes]]


def header_dict(headers: Headers | None) -> dict[str, bytes]:
    if not headers:
        return {}
    items = headers.items() if isinstance(headers, Mapping) else headers
    return {k.lower(): v for k, v in items}


def header(headers: Headers | None, name: str) -> str:
    """One header's value as text ("" when absent), without building a dict of them all."""
    items = headers.items() if isinstance(headers, Mapping) else headers or ()
    for key, value in items:
        if key == name:
            return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)
    return ""


def decode(
    key: bytes | None,
    value: bytes | None,
    headers: Headers | None,
    *,
    accepted_types: frozenset[str],
    max_bytes: int,
) -> Envelope:
    """Turn one Kafka record into a validated envelope, or raise :class:`BadInput`."""
    if value is None:
        raise BadInput("tombstone", "null value on a topic that takes no tombstones")
    if len(value) > max_bytes:
        raise BadInput("too_large", f"value of {len(value)} bytes exceeds {max_bytes}")
    if not key:
        raise BadInput("missing_key", "record has no key")
    h = header_dict(headers)
    content_type = h.get("content-type", b"").decode("latin-1").split(";")[0].strip()
    try:
        body = orjson.loads(value)
    except orjson.JSONDecodeError as exc:
        raise BadInput("malformed_json", f"value is not JSON: {exc}") from None
    if content_type == STRUCTURED:
        if not isinstance(body, dict):
            raise BadInput("malformed_envelope", "structured event is not a JSON object")
        attributes = {k: v for k, v in body.items() if k not in ("data", "data_base64")}
        data = body.get("data")
    else:
        attributes = {
            k[3:]: v.decode("utf-8", "replace") for k, v in h.items() if k.startswith("ce_")
        }
        data = body
    missing = [a for a in REQUIRED_ATTRIBUTES if not attributes.get(a)]
    if missing:
        raise BadInput("malformed_envelope", f"missing CloudEvents attribute(s): {', '.join(missing)}")
    if attributes["specversion"] != "1.0":
        raise BadInput("malformed_envelope", f"specversion {attributes['specversion']!r} is not 1.0")
    event_type = str(attributes["type"])
    if event_type not in accepted_types:
        raise BadInput("unknown_type", f"event type {event_type!r} is not accepted on this topic")
    if not isinstance(data, dict):
        raise BadInput("schema_violation", f"{event_type}: data must be a JSON object")
    problem = schemas.problem(event_type, data)
    if problem:
        raise BadInput("schema_violation", f"{event_type}: {problem}")
    return Envelope(
        id=str(attributes["id"]),
        source=str(attributes["source"]),
        type=event_type,
        time=_time(attributes.get("time")),
        subject=attributes.get("subject") or None,
        data=data,
    )


def _time(raw: Any) -> datetime | None:
    if not raw:
        return None
    try:
        parsed = datetime.fromisoformat(str(raw))
    except ValueError:
        raise BadInput("malformed_envelope", f"ce_time {raw!r} is not RFC 3339") from None
    if parsed.tzinfo is None:
        raise BadInput("malformed_envelope", f"ce_time {raw!r} has no UTC offset")
    return parsed


def encode(
    *,
    event_type: str,
    event_id: str,
    source: str,
    time: datetime,
    data: Mapping[str, Any],
    subject: str | None = None,
) -> tuple[bytes, list[tuple[str, bytes]]]:
    """Binary-mode CloudEvent: the JSON value and the ``ce_*`` headers."""
    headers = [
        ("ce_specversion", b"1.0"),
        ("ce_id", event_id.encode()),
        ("ce_source", source.encode()),
        ("ce_type", event_type.encode()),
        ("ce_time", time.isoformat().encode()),
        ("content-type", b"application/json"),
    ]
    if subject:
        headers.append(("ce_subject", subject.encode()))
    return orjson.dumps(data), headers


def dlq_headers(
    original: Headers | None,
    error: BadInput,
    *,
    topic: str,
    partition: int,
    offset: int,
) -> list[tuple[str, bytes]]:
    if not original:
        kept: list[tuple[str, bytes]] = []
    else:
        kept = list(original.items() if isinstance(original, Mapping) else original)
    return kept + [
        ("error_type", error.error_type.encode()),
        ("error_message", error.message[:1000].encode()),
        ("original_topic", topic.encode()),
        ("original_partition", str(partition).encode()),
        ("original_offset", str(offset).encode()),
    ]
