"""Channel senders: one small contract, one module per provider.

``send(command)`` returns a :class:`Delivery` when the provider accepted the message,
raises :class:`RetryLater` for a failure that may pass (with the provider's
``Retry-After`` where it gave one), or :class:`PermanentFailure` for one that will not.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True, slots=True)
class Delivery:
    provider_message_id: str | None = None


class RetryLater(Exception):
    """``answered``: the provider said no (a 429, a 5xx); False after a timeout or a broken
    connection, when it may have taken the message all the same."""

    def __init__(self, reason: str, retry_after: float | None = None, answered: bool = True) -> None:
        super().__init__(reason)
        self.reason = reason
        self.retry_after = retry_after
        self.answered = answered


class PermanentFailure(Exception):
    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason


class Sender(ABC):
    """One provider behind one channel. Subclasses implement ``send``."""

    channel: str
    provider: str
    drops_repeats = False  # the provider itself drops a repeated send (by our id)
    tells_what_it_took = False  # ``find`` can ask the provider what it took

    @abstractmethod
    async def send(self, command: dict[str, Any]) -> Delivery:
        """Hand ``command`` to the provider: its receipt, or RetryLater / PermanentFailure."""

    def pick(self, command: dict[str, Any]) -> Sender:
        """The sender for this command (a channel with a provider per platform picks one)."""
        return self

    async def find(self, command: dict[str, Any], since: str) -> Delivery | None:
        """After a crash in the middle of a send: did the provider take it? None when it
        did not, or when its API cannot tell (then the send goes again, and the provider's
        own de-duplication, where it has one, drops the repeat)."""
        return None

    async def close(self) -> None:
        return None


class ByPlatform(Sender):
    """App push: FCM for Android tokens, APNs for Apple's, by the recipient's platform."""

    def __init__(self, channel: str, senders: dict[str, Sender], default: str) -> None:
        self.channel, self.senders, self.default = channel, senders, default
        self.provider = senders[default].provider

    def pick(self, command: dict[str, Any]) -> Sender:
        return self.senders.get(command["recipient"].get("platform", ""), self.senders[self.default])

    async def send(self, command: dict[str, Any]) -> Delivery:
        return await self.pick(command).send(command)

    async def close(self) -> None:
        for sender in self.senders.values():
            await sender.close()

