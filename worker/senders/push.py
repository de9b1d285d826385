"""App push to Android devices through FCM HTTP v1: one message per token, OAuth bearer."""

from __future__ import annotations

from typing import Any

from worker.senders import Delivery, PermanentFailure, Sender, http
from worker.settings import Settings


class FcmSender(Sender):
    channel = "push"
    provider = "fcm"

    def __init__(self, settings: Settings) -> None:
        self.url = f"{settings.push_url.rstrip('/')}/v1/projects/{settings.push_project}/messages:send"
        self.headers = {"Authorization": f"Bearer {settings.push_access_token}"}
        self.http = http.session(settings.provider_timeout_seconds)

    async def send(self, command: dict[str, Any]) -> Delivery:
        if command["recipient"].get("platform", "fcm") != "fcm":
            raise PermanentFailure("unsupported_platform", command["recipient"]["platform"])
        content = command["content"]
        message = {"message": {
            "token": command["recipient"]["push_token"],
            "notification": {"title": content.get("subject", ""), "body": content["text"]},
            "data": {"notification_id": command["notification_id"], "kind": command["kind"],
                     "order_id": command["order_id"], "url": command.get("tracking_url", "")},
            # A repeat (a resend after a crash) replaces the first on the device.
            "android": {"collapse_key": command["order_id"],
                        "notification": {"tag": command["notification_id"]}},
            "apns": {"headers": {"apns-collapse-id": command["notification_id"][:64]}},
        }}
        response, body = await http.call(http.post_json(self.http, self.url, message, self.headers))
        if response.status in (400, 404) and _error_code(body) in ("UNREGISTERED", "INVALID_ARGUMENT"):
            # The app was uninstalled or the token is stale: remove it, never retry it.
            raise PermanentFailure("unregistered_token", _error_code(body))
        http.judge(response)
        return Delivery(provider_message_id=(body or {}).get("name"))

    async def close(self) -> None:
        await self.http.close()


def _error_code(body: Any) -> str:
    """FCM's own error code, from the details of a Google API error."""
    details = ((body or {}).get("error") or {}).get("details") or []
    return next((d.get("errorCode", "") for d in details if "errorCode" in d), "")
