"""Channel senders: one small contract, one module per provider.

``send(command)`` returns a :class:`Delivery` when the provider accepted the message,
raises :class:`RetryLater` for a failure that may pass (with the provider's
``Retry-After`` where it gave one), or :class:`PermanentFailure` for one that will not.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol


@dataclass(frozen=True, slots=True)
class Delivery:
    provider_message_id: str | None = None


class RetryLater(Exception):
    def __init__(self, reason: str, retry_after: float | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.retry_after = retry_after


class PermanentFailure(Exception):
    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason


class Sender(Protocol):
    channel: str
    provider: str

    async def send(self, command: dict[str, Any]) -> Delivery: ...

    async def close(self) -> None: ...
