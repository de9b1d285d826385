"""Signed, expiring links: what a notification's tracking link, open pixel and provider
callbacks carry.

A token is the link's facts, packed, and an HMAC-SHA256 of them under the shop's secret,
in base64url: some 90 characters, where the facts as JSON made some 150, and an SMS in
Chinese carries 67 characters a segment. Nobody without the secret can make one or
change what one says (the order it opens, the notification it counts a click for), and
none is valid after its expiry. The facts are readable by whoever holds the link, so they
hold ids only: no name, email or phone number.

An SMS carries a short link instead, a code that stands for the token (``/s/CODE``): a
token's link is some 120 characters, which leaves a Chinese SMS of two segments no room
for the carrier and the tracking number. The code is a MAC of the token, so the same
notification always gets the same code and nobody can make one up; what it stands for is
kept server-side until the token expires.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import struct
from collections import deque
from dataclasses import dataclass
from datetime import datetime

import orjson

MAC_BYTES = 16  # 128 bits: forging one is out of reach, and the link stays short
SHORT_BYTES = 9  # 72 bits in 12 characters: a million codes live, one guess in 4.7e15 finds one
PACKED = 1  # the format's version: the first byte of a token's facts
# The contract's kinds and channels, each packed as its place in these; others by name.
# The format's own lists, not `rules.CHANNELS` (which also orders the default channels):
# a place is what tokens already sent say, so these only ever grow at the end.
KINDS = ("order_confirmed", "ship_delayed", "shipped", "in_transit_update", "customs_hold",
         "out_for_delivery", "available_for_pickup", "delivery_failed", "delivered",
         "delivery_exception", "delay_notice", "tracking_stalled", "arriving_soon",
         "review_request", "post_delivery_care", "replenishment_reminder", "return_update",
         "order_cancelled")
CHANNELS = ("email", "sms", "push", "wechat", "webhook", "in_app")
NAMED = 255  # a kind or channel not in the lists: its name follows the ids
HEAD = struct.Struct(">BBIBB")  # version, flags, expiry, kind, channel
HASHED_ID = re.compile(r"ntf-([0-9a-f]{20})(.*)", re.DOTALL)  # notification ids as the worker makes them


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
    facts = _pack(link)
    return _b64(facts + _mac(facts, secret))


def read(token: str, secret: str) -> Link:
    """The link a token says, if we signed it; expiry is the caller's to check (an expired
    link still tells which notification was opened, but never opens the order)."""
    try:
        if "." in token:  # signed before tokens were packed: good until they expire
            json_facts, _, json_mac = token.partition(".")
            fields = orjson.loads(_unb64(json_facts)) if hmac.compare_digest(
                _unb64(json_mac), _mac(json_facts.encode(), secret)) else None
            return Link(*fields) if isinstance(fields, list) else _forged()
        raw = _unb64(token)
        facts, mac = raw[:-MAC_BYTES], raw[-MAC_BYTES:]
        return _unpack(facts) if facts and hmac.compare_digest(mac, _mac(facts, secret)) else _forged()
    except (ValueError, TypeError, IndexError, struct.error) as error:
        raise Forged("not a valid link") from error


def short_code(token: str, secret: str) -> str:
    """The code an SMS's link carries for ``token``: the same for the same token."""
    return _b64(hmac.new(("short:" + secret).encode(), token.encode(), hashlib.sha256).digest()[:SHORT_BYTES])


class ShortLinks:
    """The token each live code stands for, as a worker reads them from their topic;
    forgotten once the token has expired (the topic keeps them no longer either)."""

    def __init__(self) -> None:
        self._tokens: dict[str, str] = {}
        # (expiry, code) as they came: in expiry order but for the spread of the
        # partitions' reads, so one expired later only holds the others a little longer.
        self._expiring: deque[tuple[int, str]] = deque()

    def keep(self, code: str, token: str, expires: int, now: int) -> None:
        if expires <= now:
            return
        if code not in self._tokens:
            self._expiring.append((expires, code))
        self._tokens[code] = token
        while self._expiring and self._expiring[0][0] <= now:
            self._tokens.pop(self._expiring.popleft()[1], None)

    def token(self, code: str) -> str | None:
        return self._tokens.get(code)

    def __len__(self) -> int:
        return len(self._tokens)


def request_mac(text: str, secret: str) -> str:
    """A signature for a request one worker routes to another: only workers know the secret."""
    return _b64(_mac(_b64(text.encode()).encode(), "route:" + secret))


def _pack(link: Link) -> bytes:
    """The head (the expiry, the kind and channel by their place), then the ids, each
    its length and its UTF-8 bytes; a notification id the worker made, as 10 bytes."""
    hashed = HASHED_ID.fullmatch(link.notification_id)
    kind = KINDS.index(link.kind) if link.kind in KINDS else NAMED
    channel = CHANNELS.index(link.channel) if link.channel in CHANNELS else NAMED
    texts = [link.order_id, link.customer_id, hashed.group(2) if hashed else link.notification_id,
             link.variant, *([link.kind] if kind == NAMED else []), *([link.channel] if channel == NAMED else [])]
    return b"".join([HEAD.pack(PACKED, bool(hashed), link.expires, kind, channel),
                     bytes.fromhex(hashed.group(1)) if hashed else b"",
                     *(_sized(text.encode()) for text in texts)])


def _unpack(facts: bytes) -> Link:
    version, hashed, expires, kind, channel = HEAD.unpack_from(facts)
    if version != PACKED:
        raise ValueError("unknown token version")
    at = HEAD.size + (10 if hashed else 0)
    texts = []
    while at < len(facts):
        size, at = (facts[at], at + 1) if facts[at] < 0x80 else (
            (facts[at] & 0x7F) << 8 | facts[at + 1], at + 2)
        texts.append(facts[at:at + size].decode())
        at += size
    order_id, customer_id, notification_id, variant, *names = texts
    if hashed:
        notification_id = f"ntf-{facts[HEAD.size:HEAD.size + 10].hex()}{notification_id}"
    kind_name = KINDS[kind] if kind != NAMED else names.pop(0)
    channel_name = CHANNELS[channel] if channel != NAMED else names.pop(0)
    return Link(order_id, customer_id, notification_id, kind_name, channel_name, variant, expires)


def _sized(raw: bytes) -> bytes:
    """Its length in one byte up to 127, else two (ids are at most 200 characters)."""
    size = len(raw)
    return (bytes([size]) if size < 0x80 else bytes([0x80 | size >> 8, size & 0xFF])) + raw


def _forged() -> Link:
    raise Forged("not a valid link")


def _mac(facts: bytes, secret: str) -> bytes:
    return hmac.new(secret.encode(), facts, hashlib.sha256).digest()[:MAC_BYTES]


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
