import base64
import json
from pathlib import Path

import orjson

FIXTURES = Path(__file__).resolve().parent / "fixtures"


def example(name: str) -> dict:
    """One event of tests/fixtures (copies of the contract's examples): key, headers, value."""
    return json.loads((FIXTURES / f"{name}.json").read_text())


def record(name: str) -> tuple[bytes, bytes, dict[str, bytes]]:
    e = example(name)
    return e["key"].encode(), orjson.dumps(e["value"]), {k: v.encode() for k, v in e["headers"].items()}


def b64(raw: bytes) -> str:
    """As tokens are written: base64url, unpadded."""
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
