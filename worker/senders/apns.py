"""App push to Apple devices through APNs: HTTP/2 (httpx with h2), token-based auth.

The provider token is a JWT signed with the team's ES256 key (``.p8``), kept for 50
minutes (Apple refuses tokens older than an hour, and too frequent new ones). The
notification id becomes the ``apns-id`` (a UUID derived from it) and the collapse id, so
a repeat replaces the first on the device.
"""

from __future__ import annotations

import time
import uuid
from typing import Any

import httpx
import jwt

from worker.senders import Delivery, PermanentFailure, RetryLater, Sender
from worker.settings import Settings

TOKEN_SECONDS = 50 * 60
# Apple's reasons that no retry will mend, and what they mean for us.
PERMANENT = {"Unregistered": "unregistered_token", "BadDeviceToken": "unregistered_token",
             "DeviceTokenNotForTopic": "invalid_recipient", "PayloadTooLarge": "provider_rejected"}


class ApnsSender(Sender):
    channel = "push"
    provider = "apns"

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.base = settings.apns_url.rstrip("/")
        # Prior knowledge HTTP/2, as APNs speaks; over TLS in production, h2c to the sink.
        self.http = httpx.AsyncClient(http1=False, http2=True,
                                      timeout=settings.provider_timeout_seconds)
        self.key = settings.apns_key_file.read_text()
        self.token = ""
        self.token_made = 0.0

    async def send(self, command: dict[str, Any]) -> Delivery:
        content, nid = command["content"], command["notification_id"]
        headers = {"authorization": f"bearer {self._token()}", "apns-topic": self.settings.apns_topic,
                   "apns-push-type": "alert", "apns-id": str(uuid.uuid5(uuid.NAMESPACE_URL, nid)),
                   "apns-collapse-id": nid[:64]}
        body = {"aps": {"alert": {"title": content.get("subject", ""), "body": content["text"]},
                        "sound": "default"},
                "notification_id": nid, "order_id": command["order_id"],
                "url": command.get("tracking_url", "")}
        try:
            response = await self.http.post(
                f"{self.base}/3/device/{command['recipient']['push_token']}", json=body, headers=headers)
        except httpx.TimeoutException:
            raise RetryLater("timeout", answered=False) from None
        except httpx.HTTPError as error:
            raise RetryLater(type(error).__name__, answered=False) from None
        if response.status_code == 200:
            return Delivery(provider_message_id=response.headers.get("apns-id"))
        reason = _reason(response)
        if reason == "ExpiredProviderToken":
            self.token = ""  # a new one on the next attempt
            raise RetryLater(reason)
        if reason in PERMANENT or response.status_code == 410:
            raise PermanentFailure(PERMANENT.get(reason, "unregistered_token"), reason)
        if response.status_code == 429 or response.status_code >= 500:
            raise RetryLater(f"apns {response.status_code} {reason}",
                             _seconds(response.headers.get("retry-after")))
        raise PermanentFailure("provider_rejected", f"apns {response.status_code} {reason}")

    def _token(self) -> str:
        now = time.time()
        if not self.token or now - self.token_made > TOKEN_SECONDS:
            self.token = jwt.encode({"iss": self.settings.apns_team_id, "iat": int(now)}, self.key,
                                    algorithm="ES256", headers={"kid": self.settings.apns_key_id})
            self.token_made = now
        return self.token

    async def close(self) -> None:
        await self.http.aclose()


def _reason(response: httpx.Response) -> str:
    try:
        return str(response.json().get("reason", ""))
    except ValueError:
        return ""


def _seconds(raw: str | None) -> float | None:
    try:
        return float(raw) if raw else None
    except ValueError:
        return None
