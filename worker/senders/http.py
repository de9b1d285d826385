"""What the HTTP providers' answers mean for a send: accepted, try again later, or never."""

from __future__ import annotations

from typing import Any

import aiohttp
import orjson

from worker.senders import PermanentFailure, RetryLater


def session(timeout_seconds: float, connections: int = 256) -> aiohttp.ClientSession:
    """Kept-alive connections, as many as the senders' calls in flight; JSON bodies by
    orjson (the standard library's encoder was a tenth of the senders' CPU)."""
    return aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout_seconds),
                                 connector=aiohttp.TCPConnector(limit=connections),
                                 json_serialize=_json, raise_for_status=False)


def _json(value: Any) -> str:
    return orjson.dumps(value).decode()


def retry_after(response: aiohttp.ClientResponse) -> float | None:
    """``Retry-After`` in seconds (providers send seconds; an HTTP date is rare here)."""
    raw = response.headers.get("Retry-After", "")
    try:
        return max(0.0, float(raw))
    except ValueError:
        return None


def judge(response: aiohttp.ClientResponse, permanent_reason: str = "provider_rejected") -> None:
    """429 and 5xx pass; another 4xx will not."""
    status = response.status
    if status == 429 or status >= 500:
        raise RetryLater(f"http {status}", retry_after(response))
    if status >= 400:
        raise PermanentFailure(permanent_reason, f"http {status}")


async def call(request: Any) -> tuple[aiohttp.ClientResponse, Any]:
    """Send ``request`` (an aiohttp request context) and read its JSON body; a network
    failure or a timeout may pass."""
    try:
        async with request as response:
            body = await response.json(content_type=None) if response.content_length != 0 else None
            return response, body
    except (aiohttp.ClientError, TimeoutError) as error:
        raise RetryLater(type(error).__name__, answered=False) from None
