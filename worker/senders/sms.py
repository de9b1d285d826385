"""SMS through an API shaped like Twilio's Messages API: form-encoded, basic auth, E.164."""

from __future__ import annotations

import asyncio
import base64
from asyncio import sleep
import hashlib
import re
from typing import Any
from urllib.parse import urlencode

from worker.senders import Delivery, PermanentFailure, Sender, http
from worker.senders.guard import TokenBucket
from worker.settings import Settings

E164 = re.compile(r"^\+[1-9]\d{6,14}$")
# Twilio error codes that no retry will mend: invalid 'To', unreachable, blocked, opted out.
PERMANENT = {21211: "invalid_recipient", 21214: "invalid_recipient", 21612: "invalid_recipient",
             21610: "blocked_by_user", 30004: "blocked_by_user", 30006: "invalid_recipient"}


class SmsSender(Sender):
    channel = "sms"
    provider = "twilio"
    tells_what_it_took = True  # its message list

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.url = (f"{settings.sms_url.rstrip('/')}/2010-04-01/Accounts/"
                    f"{settings.sms_account_sid}/Messages.json")
        account = f"{settings.sms_account_sid}:{settings.sms_auth_token}".encode()
        self.headers = {"Authorization": "Basic " + base64.b64encode(account).decode()}
        self.form_headers = {**self.headers, "Content-Type": "application/x-www-form-urlencoded"}
        self.http = http.session(settings.provider_timeout_seconds)
        rate = settings.sms_per_number_per_second
        self.per_number = {n: TokenBucket(rate, 1.0) for n in settings.sms_numbers}

    async def send(self, command: dict[str, Any]) -> Delivery:
        phone = command["recipient"].get("phone", "")
        if not E164.match(phone):
            raise PermanentFailure("invalid_recipient", "not an E.164 number")
        number = self._number(phone)
        if (pause := self.per_number[number].wait(asyncio.get_running_loop().time())) > 0:
            await sleep(pause)  # this customer's task waits; the others go on
        form = {"To": phone, "From": number, "Body": self._body(command),
                # The delivery receipt names the notification (issue: engagement).
                "StatusCallback": f"{self.settings.public_url.rstrip('/')}/callbacks/sms"
                                  f"?n={command['notification_id']}&l={command.get('link_token', '')}"}
        # Encoded here: aiohttp's FormData takes several times as long for four fields.
        response, body = await http.call(self.http.post(self.url, data=urlencode(form).encode(),
                                                        headers=self.form_headers))
        if response.status == 400 and isinstance(body, dict) and body.get("code") in PERMANENT:
            raise PermanentFailure(PERMANENT[body["code"]], f"twilio {body['code']}")
        http.judge(response)
        return Delivery(provider_message_id=(body or {}).get("sid"))

    async def find(self, command: dict[str, Any], since: str) -> Delivery | None:
        """Twilio keeps no idempotency key, but lists what it took: a message to the same
        number with the same text since the interrupted attempt is this one."""
        query = {"To": command["recipient"].get("phone", ""), "DateSent>": since[:10]}
        response, body = await http.call(self.http.get(self.url, params=query, headers=self.headers))
        http.judge(response)
        for message in (body or {}).get("messages", []):
            if message.get("body") == self._body(command):
                return Delivery(provider_message_id=message.get("sid"))
        return None

    def _number(self, phone: str) -> str:
        """The customer's own sender number of the pool: a thread of messages from one
        number, and the pool's load spread evenly."""
        numbers = self.settings.sms_numbers
        digest = hashlib.blake2b(phone.encode(), digest_size=4).digest()
        return numbers[int.from_bytes(digest, "big") % len(numbers)]

    def _body(self, command: dict[str, Any]) -> str:
        return str(command["content"]["text"])

    async def close(self) -> None:
        await self.http.close()
