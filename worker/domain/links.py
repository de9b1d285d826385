"""Signed, expiring links: what a notification's tracking link, open pixel and provider
callbacks carry.

A token is the link's facts and an HMAC-SHA256 of them under the shop's secret, both
base64url. Nobody without the secret can make one or change what one says (the order it
opens, the notification it counts a click for), and none is valid after its expiry.
The facts are readable by whoever holds the link, so they hold ids only: no name, email
or phone number.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from dataclasses import astuple, dataclass
from datetime import datetime

import orjson

MAC_BYTES = 16  # 128 bits: forging one is out of reach, and the link stays short


@dataclass(frozen=True, slots=True)
class Link:
    order_id: str
    customer_id: str
    notification_id: str
    kind: str
    channel: str
    variant: str
    expires: int  # unix seconds

    def expired(self, now: datetime) -> bool:
        return now.timestamp() >= self.expires


class Forged(ValueError):
    """Not a token we signed (or damaged on the way)."""


def sign(link: Link, secret: str) -> str:
    facts = _b64(orjson.dumps(astuple(link)))
    return f"{facts}.{_b64(_mac(facts, secret))}"


def read(token: str, secret: str) -> Link:
    """The link a token says, if we signed it; expiry is the caller's to check (an expired
    link still tells which notification was opened, but never opens the order)."""
    facts, _, mac = token.partition(".")
    try:
        valid = hmac.compare_digest(_unb64(mac), _mac(facts, secret))
        fields = orjson.loads(_unb64(facts)) if valid else None
        return Link(*fields) if isinstance(fields, list) else _forged()
    except (ValueError, TypeError) as error:
        raise Forged("not a valid link") from error


def request_mac(text: str, secret: str) -> str:
    """A signature for a request one worker routes to another: only workers know the secret."""
    return _b64(_mac(_b64(text.encode()), "route:" + secret))


def _forged() -> Link:
    raise Forged("not a valid link")


def _mac(facts: str, secret: str) -> bytes:
    return hmac.new(secret.encode(), facts.encode(), hashlib.sha256).digest()[:MAC_BYTES]


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
