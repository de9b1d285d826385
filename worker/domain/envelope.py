from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any


@dataclass(frozen=True, slots=True)
class Envelope:
    """One CloudEvent as the domain sees it: attributes plus the ``data`` object."""

    id: str
    source: str
    type: str
    time: datetime | None
    subject: str | None
    data: dict[str, Any]

    @property
    def identity(self) -> str:
        """``(ce_source, ce_id)`` as one string: the same pair twice is a duplicate."""
        return f"{self.source} {self.id}"
