"""One parcel of an order, folded from its checkpoints.

The shipment keeps its checkpoints (de-duplicated, ordered by ``occurred_at``) and
derives everything else from them, so the order in which checkpoints arrive, or how
often, never changes what the shipment says: it never moves backwards.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from worker.domain.milestones import RANK, Reading
from worker.domain.plain import plain

# A parcel rarely has more than 20 scans; keeping the latest 40 bounds the state.
CHECKPOINT_LIMIT = 40
MAIN_LINE = frozenset(RANK)


@dataclass(slots=True)
class Shipment:
    shipment_id: str
    carrier: str = ""
    tracking_number: str = ""
    label_at: str | None = None  # order.shipped: the label exists
    origin: dict[str, Any] = field(default_factory=dict)
    destination: dict[str, Any] = field(default_factory=dict)
    carrier_eta: str | None = None  # the carrier's latest estimate
    eta_at: str | None = None  # the checkpoint that told it: an older one told late does not win
    label_eta: str | None = None  # the estimate order.shipped told
    first_eta: str | None = None  # its first: the promise when the order made none
    # [occurred_at (UTC, seconds), milestone or None when unknown, reason or raw code, place,
    #  seconds from occurred_at until it was known (a scan told late), the estimate it told]
    checkpoints: list[list[Any]] = field(default_factory=list)

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> Shipment:
        return cls(**raw)

    def to_dict(self) -> dict[str, Any]:
        return plain(self)

    def record(self, occurred_at: str, reading: Reading, place: str = "", late: int = 0,
               eta: str | None = None) -> bool:
        """Add one checkpoint, known ``late`` seconds after it happened, with the delivery
        estimate it told; False when it was already known (then as early as either copy
        says, with the estimate either told)."""
        detail = reading.exception_reason if reading.known else reading.raw_code
        entry = [occurred_at, reading.milestone, detail, place]
        for known in self.checkpoints:
            if known[:4] == entry:
                known[4:] = [min(late, known_late(known)), told_eta(known) or eta]
                return False
        self.checkpoints.append([*entry, late, eta])
        self.checkpoints.sort(key=lambda c: (c[0], RANK.get(c[1] or "", -1)))
        del self.checkpoints[:-CHECKPOINT_LIMIT]
        return True

    # -- derived facts ------------------------------------------------------------------

    def times(self, milestone: str) -> list[str]:
        return [c[0] for c in self.checkpoints if c[1] == milestone]

    @property
    def scans(self) -> list[list[Any]]:
        """Checkpoints that prove the carrier has the parcel (anything after the label)."""
        return [c for c in self.checkpoints if c[1] and c[1] != "LABEL_CREATED"]

    @property
    def first_scan_at(self) -> str | None:
        scans = self.scans
        return scans[0][0] if scans else None

    @property
    def last_scan_at(self) -> str | None:
        scans = self.scans
        return scans[-1][0] if scans else None

    @property
    def delivered_at(self) -> str | None:
        delivered = self.times("DELIVERED")
        return delivered[0] if delivered else None

    @property
    def milestone(self) -> str:
        """The furthest point of the main line reached; it never moves backwards."""
        reached = [c[1] for c in self.checkpoints if c[1] in MAIN_LINE]
        return max(reached, key=RANK.__getitem__, default="LABEL_CREATED")

    @property
    def latest(self) -> list[Any] | None:
        known = [c for c in self.checkpoints if c[1]]
        return known[-1] if known else None

    @property
    def open_exception(self) -> str | None:
        """The reason of an exception that no later scan has resolved."""
        latest = self.latest
        if self.delivered_at or latest is None:
            return None
        if latest[1] == "EXCEPTION":
            return latest[2] or "carrier"
        if latest[1] in ("RETURNING", "RETURNED"):
            return "returning"
        return None


def last_delivery(parcels: list[Shipment]) -> str | None:
    """When the last of the parcels was delivered; None until every one is."""
    times = [p.delivered_at for p in parcels]
    if not parcels or None in times:
        return None
    return max(t for t in times if t)


def known_late(checkpoint: list[Any]) -> int:
    """Seconds between a checkpoint and the time it was known (0 in states kept before
    that was recorded)."""
    return checkpoint[4] if len(checkpoint) > 4 else 0


def told_eta(checkpoint: list[Any]) -> str | None:
    return checkpoint[5] if len(checkpoint) > 5 else None
