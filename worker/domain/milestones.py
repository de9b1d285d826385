"""Canonical milestones and the mapping of carriers' own status codes onto them.

The mapping lives in ``worker/carriers.toml`` (one data file, documented there);
:func:`canonical` turns one checkpoint into a :class:`Reading`.
"""

from __future__ import annotations

import functools
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

CARRIERS_FILE = Path(__file__).resolve().parent.parent / "carriers.toml"

# Physical order of the main line; AVAILABLE_FOR_PICKUP and DELIVERY_FAILED share a rank.
RANK = {
    "LABEL_CREATED": 0, "PICKED_UP": 1, "IN_TRANSIT": 2, "CUSTOMS": 3,
    "ARRIVED_AT_DESTINATION": 4, "OUT_FOR_DELIVERY": 5, "AVAILABLE_FOR_PICKUP": 6,
    "DELIVERY_FAILED": 6, "DELIVERED": 7,
}
BRANCHES = frozenset({"EXCEPTION", "RETURNING", "RETURNED"})
MILESTONES = frozenset(RANK) | BRANCHES
EXCEPTION_REASONS = frozenset({"carrier", "consignee", "customs", "weather", "lost", "damaged",
                               "address"})


@dataclass(frozen=True, slots=True)
class Reading:
    """What one checkpoint says: a milestone (None when the code is unknown) and why."""

    milestone: str | None
    exception_reason: str | None = None
    raw_code: str | None = None  # "source:code" when the carrier's own code was mapped

    @property
    def known(self) -> bool:
        return self.milestone is not None


def canonical(checkpoint: Mapping[str, Any], table: Mapping[str, Any] | None = None) -> Reading:
    """The canonical reading of a checkpoint: its ``status``, else its mapped ``raw_status``."""
    reason = checkpoint.get("exception_reason")
    if checkpoint.get("status"):
        return Reading(checkpoint["status"], reason)
    raw = checkpoint.get("raw_status") or {}
    source = str(raw.get("source", ""))
    mapping = (table if table is not None else carrier_table()).get(source)
    code = "/".join(str(raw[f]) for f in (mapping or {}).get("fields", ()) if raw.get(f))
    label = f"{source}:{code or '?'}"
    if not mapping:
        return Reading(None, reason, label)
    codes = mapping["codes"]
    value = codes.get(code) or codes.get(code.split("/")[0])
    if value is None:
        return Reading(None, reason, label)
    milestone, _, mapped_reason = value.partition(" ")
    return Reading(milestone, reason or mapped_reason or None, label)


@functools.cache
def carrier_table() -> Mapping[str, Any]:
    with CARRIERS_FILE.open("rb") as fp:
        return check(tomllib.load(fp))


def check(table: Mapping[str, Any]) -> Mapping[str, Any]:
    """Every value names a canonical milestone and, for exceptions, a known reason."""
    for source, mapping in table.items():
        for code, value in mapping["codes"].items():
            milestone, _, reason = value.partition(" ")
            if milestone not in MILESTONES or (reason and reason not in EXCEPTION_REASONS):
                raise ValueError(f"carriers.toml [{source}] {code!r} = {value!r}: not a milestone")
    return table
