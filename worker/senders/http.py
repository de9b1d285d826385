"""What the HTTP providers' answers mean for a send: accepted, try again later, or never."""

from __future__ import annotations

from typing import Any

import aiohttp
import orjson

from worker.senders import PermanentFailure, RetryLater


def session(timeout_seconds: float, connections: int = 256) -> aiohttp.ClientSession:
    """Kept-alive connections, as many as the senders' calls in flight."""
    return aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout_seconds),
                                 connector=aiohttp.TCPConnector(limit=connections),
                                 raise_for_status=False)


def post_json(http: aiohttp.ClientSession, url: str, value: Any,
              headers: dict[str, str] | None = None) -> Any:
    """A POST of ``value`` as JSON, encoded by orjson straight to bytes (the standard
    library's encoder was a tenth of the senders' CPU; aiohttp's ``json=`` takes a str and
    encodes it again, 3 %)."""
    return http.post(url, data=orjson.dumps(value),
                     headers={"Content-Type": "application/json", **(headers or {})})


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
            if response.content_length == 0:
                return response, None
            return response, await response.json(content_type=None, loads=orjson.loads)
    except (aiohttp.ClientError, TimeoutError) as error:
        raise RetryLater(type(error).__name__, answered=False) from None
