"""Email over SMTP: multipart/alternative, plain text beside HTML.

SMTP cannot say whether a message was taken when the line broke before the answer. The
relays shops send through (Mailgun, SendGrid, SES) keep an events API that can: after a
crash in the middle of a send, :meth:`EmailSender.find` asks it (Mailgun's shape,
``GET /v3/{domain}/events?message-id=…&event=accepted``) by the message's stable
Message-ID before sending again."""

from __future__ import annotations

import base64
import logging
import ssl
from email.utils import format_datetime
from datetime import datetime
from typing import Any

import aiohttp
import aiosmtplib

from worker.senders import Delivery, PermanentFailure, RetryLater, Sender, http
from worker.settings import Settings

log = logging.getLogger("worker.senders")


def message_id(notification_id: str) -> str:
    return f"<{notification_id}@order-notifier>"


def build_message(command: dict[str, Any], sender: str, public_url: str) -> bytes:
    """The message as it goes on the wire: multipart/alternative, the plain text beside
    the HTML, UTF-8 in base64. Written by hand: the standard library's email package took
    three quarters of the senders' CPU."""
    content, nid = command["content"], command["notification_id"]
    headers = [
        ("From", sender),
        ("To", command["recipient"]["email"]),
        ("Subject", _encoded_words(content.get("subject", ""))),
        ("Date", format_datetime(datetime.fromisoformat(command["created_at"]))),
        # Stable per notification, so a provider or a mail client recognises a repeat.
        ("Message-ID", message_id(nid)),
        ("X-Notification-Id", nid),
        ("X-Notification-Kind", command["kind"]),
        ("MIME-Version", "1.0"),
    ]
    if command.get("link_token"):
        # The relay's bounce report quotes it back (``/callbacks/email``).
        headers.append(("X-Notification-Link", command["link_token"]))
        if command.get("priority") == "marketing":
            headers += [("List-Unsubscribe", f"<{public_url.rstrip('/')}/u/{command['link_token']}>"),
                        ("List-Unsubscribe-Post", "List-Unsubscribe=One-Click")]
    boundary = f"=_{nid}"
    parts = [("text/plain", content["text"])]
    if content.get("html"):
        parts.append(("text/html", content["html"]))
    lines = [f"{name}: {value}" for name, value in headers]
    lines.append(f'Content-Type: multipart/alternative; boundary="{boundary}"')
    lines.append("")
    for kind, body in parts:
        lines += [f"--{boundary}", f'Content-Type: {kind}; charset="utf-8"',
                  "Content-Transfer-Encoding: base64", "",
                  base64.encodebytes(body.encode()).decode().rstrip("\n").replace("\n", "\r\n")]
    lines += [f"--{boundary}--", ""]
    return "\r\n".join(lines).encode()


def _encoded_words(text: str) -> str:
    """RFC 2047: ASCII as it is; otherwise UTF-8 base64 words, one a line."""
    if text.isascii():
        return text
    words, chunk = [], ""
    for char in text:
        if len((chunk + char).encode()) > 39:  # 52 base64 characters: lines stay under 78
            words.append(chunk)
            chunk = ""
        chunk += char
    words.append(chunk)
    return "\r\n ".join(f"=?utf-8?b?{base64.b64encode(w.encode()).decode()}?=" for w in words)


class EmailSender(Sender):
    """Keeps up to ``POOL`` SMTP connections open: a connection and its greeting cost more
    than the message."""

    channel = "email"
    provider = "smtp"
    POOL = 128

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.tls = ssl.create_default_context() if settings.smtp_starttls else None
        self.idle: list[aiosmtplib.SMTP] = []
        self.events: aiohttp.ClientSession | None = None  # the relay's events API, when asked
        self.tells_what_it_took = bool(settings.email_events_url)

    async def send(self, command: dict[str, Any]) -> Delivery:
        s = self.settings
        message = build_message(command, s.email_from, s.public_url)
        client = await self._connect_or_retry()
        try:
            await client.sendmail(s.email_from, [command["recipient"]["email"]], message)
        except aiosmtplib.SMTPRecipientsRefused as exc:
            await _close(client)  # a refused transaction: start the next one afresh
            raise PermanentFailure("invalid_recipient", str(exc)) from None
        except aiosmtplib.SMTPResponseException as exc:
            await _close(client)
            if 500 <= exc.code < 600:
                raise PermanentFailure("provider_rejected", f"{exc.code}") from None
            raise RetryLater(f"smtp {exc.code}") from None
        except (aiosmtplib.SMTPException, OSError) as exc:
            await _close(client)  # it may have taken the message before the line broke
            raise RetryLater(type(exc).__name__, answered=False) from None
        if client.is_connected and len(self.idle) < self.POOL:
            self.idle.append(client)
        else:
            await _close(client)
        return Delivery(provider_message_id=message_id(command["notification_id"]))

    async def find(self, command: dict[str, Any], since: str) -> Delivery | None:
        """Did the relay accept this message (by its Message-ID) since the interrupted
        attempt? None when it did not, or when there is no events API to ask, or it does
        not answer: then the message goes again, with the same Message-ID."""
        s = self.settings
        if not s.email_events_url:
            return None
        wanted = message_id(command["notification_id"])
        domain = s.email_from.rpartition("@")[2]
        url = f"{s.email_events_url.rstrip('/')}/v3/{domain}/events"
        query = {"message-id": wanted.strip("<>"), "event": "accepted", "ascending": "yes",
                 "begin": str(datetime.fromisoformat(since).timestamp() - 60)}  # clocks differ
        if self.events is None:
            self.events = http.session(s.provider_timeout_seconds, connections=16)
        try:
            key = base64.b64encode(f"api:{s.email_events_key}".encode()).decode()
            response, body = await http.call(self.events.get(
                url, params=query, headers={"Authorization": f"Basic {key}"}))
            http.judge(response)
        except (RetryLater, PermanentFailure) as error:
            log.warning("the mail relay's events API could not be asked (%s); sending again",
                        error, extra={"notification_id": command["notification_id"]})
            return None
        for item in (body or {}).get("items", []):
            if item.get("message", {}).get("headers", {}).get("message-id") == wanted.strip("<>"):
                return Delivery(provider_message_id=wanted)
        return None

    async def _connect_or_retry(self) -> aiosmtplib.SMTP:
        try:
            return await self._connection()
        except (aiosmtplib.SMTPException, OSError) as exc:  # nothing was sent yet
            raise RetryLater(type(exc).__name__) from None

    async def _connection(self) -> aiosmtplib.SMTP:
        while self.idle:
            client = self.idle.pop()
            if client.is_connected:
                return client
        s = self.settings
        # A fixed greeting name: the default looks up this host's FQDN, a blocking DNS call.
        client = aiosmtplib.SMTP(hostname=s.smtp_host, port=s.smtp_port, local_hostname="order-notifier",
                                 start_tls=s.smtp_starttls, tls_context=self.tls,
                                 timeout=s.provider_timeout_seconds)
        await client.connect()
        if s.smtp_username:
            await client.login(s.smtp_username, s.smtp_password)
        return client

    async def close(self) -> None:
        while self.idle:
            await _close(self.idle.pop())
        if self.events is not None:
            await self.events.close()


async def _close(client: aiosmtplib.SMTP | None) -> None:
    if client is not None and client.is_connected:
        try:
            await client.quit()
        except aiosmtplib.SMTPException:
            client.close()
