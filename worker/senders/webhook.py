"""Outgoing webhooks signed by the Standard Webhooks scheme.

``webhook-id`` is the notification id, the same on every retry, so the receiver can drop
a repeat; ``webhook-signature`` is ``v1,`` and the base64 HMAC-SHA256 of
``id.timestamp.body`` under the secret's key (the base64 after ``whsec_``).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import time
from typing import Any

import orjson

from worker.senders import Delivery, Sender, http
from worker.settings import Settings


def sign(secret: str, webhook_id: str, timestamp: int, body: bytes) -> str:
    key = base64.b64decode(secret.removeprefix("whsec_"))
    signed = f"{webhook_id}.{timestamp}.".encode() + body
    return "v1," + base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()


def payload(command: dict[str, Any]) -> bytes:
    """The event the shop's endpoint receives: what was decided, without the rendering."""
    data = {k: command[k] for k in ("notification_id", "kind", "priority", "order_id",
                                    "customer_id", "locale", "created_at") if k in command}
    data.update({k: command[k] for k in ("shipment_id", "tracking_url") if command.get(k)})
    data["title"] = command["content"].get("subject", "")
    data["text"] = command["content"]["text"]
    return orjson.dumps({"type": f"notification.{command['kind']}",
                         "timestamp": command["created_at"], "data": data})


class WebhookSender(Sender):
    channel = "webhook"
    provider = "webhook"
    drops_repeats = True  # webhook-id, as Standard Webhooks asks of receivers

    def __init__(self, settings: Settings) -> None:
        self.secret = settings.webhook_secret
        self.http = http.session(settings.provider_timeout_seconds)

    async def send(self, command: dict[str, Any]) -> Delivery:
        body, webhook_id, now = payload(command), command["notification_id"], int(time.time())
        headers = {"content-type": "application/json", "webhook-id": webhook_id,
                   "webhook-timestamp": str(now),
                   "webhook-signature": sign(self.secret, webhook_id, now, body)}
        response, _ = await http.call(self.http.post(command["recipient"]["url"], data=body,
                                                     headers=headers))
        http.judge(response)
        return Delivery(provider_message_id=webhook_id)

    async def close(self) -> None:
        await self.http.close()
