"""WeChat official-account template messages, with the access token cached and renewed."""

from __future__ import annotations

import asyncio
import time
from typing import Any
from urllib.parse import quote

from worker.senders import Delivery, PermanentFailure, RetryLater, Sender, http
from worker.settings import Settings

TOKEN_EXPIRED = {40001, 40014, 42001}  # invalid, malformed, expired access token
# The user unfollowed, blocked or never existed: no retry helps.
PERMANENT = {43004: "blocked_by_user", 40003: "invalid_recipient", 43101: "blocked_by_user"}
BUSY = {-1, 45009, 45047}  # system busy, quota reached, too frequent


class WechatSender(Sender):
    channel = "wechat"
    provider = "wechat"
    drops_repeats = True  # client_msg_id

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.base = settings.wechat_url.rstrip("/")
        self.http = http.session(settings.provider_timeout_seconds)
        self.token: str | None = None
        self.token_expires = 0.0
        self.lock = asyncio.Lock()

    async def send(self, command: dict[str, Any]) -> Delivery:
        content = command["content"]
        message = {"touser": command["recipient"]["wechat_openid"],
                   "template_id": content["template_id"], "url": command.get("tracking_url", ""),
                   "data": content["data"],
                   # WeChat drops a second message with the same id: a retry cannot double.
                   "client_msg_id": command["notification_id"]}
        for _ in range(2):
            token = await self._token()
            url = f"{self.base}/cgi-bin/message/template/send?access_token={quote(token, safe='')}"
            response, body = await http.call(http.post_json(self.http, url, message))
            http.judge(response)
            code = (body or {}).get("errcode", 0)
            if code in TOKEN_EXPIRED:
                await self._forget(token)
                continue
            if code in PERMANENT:
                raise PermanentFailure(PERMANENT[code], f"wechat {code}")
            if code in BUSY:
                raise RetryLater(f"wechat {code}")
            if code:
                raise PermanentFailure("provider_rejected", f"wechat {code}")
            return Delivery(provider_message_id=str(body.get("msgid", "")))
        raise RetryLater("wechat token refused twice")

    async def _token(self) -> str:
        """The cached access token, fetched anew five minutes before it expires."""
        async with self.lock:
            if self.token and time.monotonic() < self.token_expires - 300:
                return self.token
            response, body = await http.call(self.http.get(f"{self.base}/cgi-bin/token", params={
                "grant_type": "client_credential", "appid": self.settings.wechat_app_id,
                "secret": self.settings.wechat_app_secret}))
            http.judge(response)
            if not (body or {}).get("access_token"):
                raise RetryLater(f"wechat token: {(body or {}).get('errcode')}")
            self.token = body["access_token"]
            self.token_expires = time.monotonic() + float(body.get("expires_in", 7200))
            return self.token

    async def _forget(self, token: str) -> None:
        async with self.lock:
            if self.token == token:
                self.token = None

    async def close(self) -> None:
        await self.http.close()
