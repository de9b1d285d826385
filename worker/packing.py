"""How order and customer states are kept in their tables: when each is next due, then its
JSON deflated against a preset dictionary of typical states.

The tables are most of a worker's memory. A held order's state is about 2.6 KB of JSON;
deflated on its own, 1.1 KB; against the dictionary, 0.6 KB (the keys, the shops, carriers
and statuses every state repeats are in it). It costs about 25 µs to pack and 8 µs to
inflate a state. The due time stands in front, in the clear: the index of wake-ups is built
from every state a worker holds whenever partitions move, and reading nine bytes is some
twenty times cheaper than inflating a state.

Three forms are read: ``DUE_FIRST`` + due + deflated JSON (written now), deflated JSON
alone, and plain JSON (both written by earlier versions).
"""

from __future__ import annotations

import zlib
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson

# Typical states, from a simulated run. Frozen: every saved state was deflated against it,
# and a stream names its dictionary (zlib's DICTID); a new sample needs a new file beside
# this one and an unpack that picks by that id.
SAMPLE = Path(__file__).with_name("state_sample.jsonl").read_bytes()
DICTIONARY = SAMPLE[-32768:]
LEVEL = 1  # the fastest: the higher levels gain a few per cent for twice the time
DUE_FIRST = b"\x01"  # then the due time: epoch second, 8 bytes big-endian, 0 for never
_HEAD = len(DUE_FIRST) + 8

# Primed once: loading the dictionary is most of what a fresh (de)compressor costs (about
# 40 µs of a 65 µs pack); a copy of a primed one costs its memory only, for the same bytes.
_PACKER = zlib.compressobj(LEVEL, zdict=DICTIONARY)
# A zlib stream asks for its dictionary once its header is read, so a copy of a primed zlib
# decompressor loads it again for every state (an adler32 over it and a copy: 10 of 19 µs).
# A raw inflater takes it at once, so its copies come primed; it reads the stream after its
# header and leaves the checksum unread: Kafka's and RocksDB's own checksums cover the bytes.
_RAW_UNPACKER = zlib.decompressobj(-zlib.MAX_WBITS, zdict=DICTIONARY)
_DICTIONARY_ID = zlib.adler32(DICTIONARY).to_bytes(4, "big")


def pack(state: dict[str, Any], due: str | None) -> bytes:
    """``state`` as a table keeps it, with when it is next due (a stamp, or None: never)."""
    return pack_json(orjson.dumps(state), due)


def pack_json(json: bytes, due: str | None) -> bytes:
    """:func:`pack` for a state already in JSON."""
    second = int(datetime.fromisoformat(due).timestamp()) if due else 0
    return DUE_FIRST + second.to_bytes(8, "big") + deflate(json)


def unpack(saved: bytes) -> dict[str, Any]:
    return orjson.loads(inflate(saved))


def due(saved: bytes, read: Callable[[dict[str, Any]], str | None]) -> datetime | str | None:
    """When a saved state is next due, without inflating it; ``read`` finds it in a state
    saved before the due time stood in front."""
    if saved[:1] != DUE_FIRST:
        return read(unpack(saved))
    second = int.from_bytes(saved[1:_HEAD], "big")
    return datetime.fromtimestamp(second, UTC) if second else None


def deflate(raw: bytes) -> bytes:
    packer = _PACKER.copy()
    return packer.compress(raw) + packer.flush()


def inflate(saved: bytes) -> bytes:
    """The JSON of a saved state, whichever of the three forms it is in."""
    if saved[:1] == b"{":
        return saved
    body = saved[_HEAD:] if saved[:1] == DUE_FIRST else saved
    if body[2:6] == _DICTIONARY_ID and body[0] == 0x78 and body[1] & 0x20:  # deflated on it
        return _RAW_UNPACKER.copy().decompress(body[6:])
    unpacker = zlib.decompressobj(zdict=DICTIONARY)
    return unpacker.decompress(body) + unpacker.flush()


def renamed(saved: bytes, rename: Callable[[bytes], bytes]) -> bytes:
    """A saved state with its JSON changed by ``rename``, in the form it was in."""
    json = rename(inflate(saved))
    if saved[:1] == DUE_FIRST:
        return saved[:_HEAD] + deflate(json)
    return json if saved[:1] == b"{" else deflate(json)
