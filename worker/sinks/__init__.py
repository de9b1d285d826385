"""Local stand-ins for the providers, for `make run` and the tests.

A real SMTP server (aiosmtpd) listens where ``NOTIFIER_SMTP_HOST``/``PORT`` point, and
HTTP servers shaped like the providers' APIs where ``NOTIFIER_SMS_URL``, ``PUSH_URL``,
``APNS_URL`` (HTTP/2), ``WECHAT_URL``, ``WEBHOOK_URL`` and ``EMAIL_EVENTS_URL`` (the mail
relay's events API) point (:mod:`worker.sinks.providers`). Everything
received is appended to ``NOTIFIER_OUTBOX`` as one JSON object a line (``channel``,
``received_at``, ``request`` as the provider saw it), and an inbox page on
``NOTIFIER_SINKS_WEB_PORT`` shows the latest messages.

Like a real mail server, the SMTP sink refuses mailboxes that cannot exist: any address
in the reserved ``.invalid`` domain gets ``550 5.1.1`` (a bounce, for fallback tests).
"""

from __future__ import annotations

import asyncio
from email.header import decode_header, make_header
from email.parser import BytesHeaderParser
import html
import logging
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import orjson
from aiohttp import web
from aiosmtpd.smtp import SMTP, Envelope, Session

from worker.settings import Settings
from worker.sinks import providers

log = logging.getLogger("worker.sinks")
HEADERS = BytesHeaderParser()


class Outbox:
    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._file = path.open("ab")

    def record(self, channel: str, request: dict[str, Any]) -> None:
        entry = {"channel": channel, "received_at": datetime.now(UTC).isoformat(), "request": request}
        self._file.write(orjson.dumps(entry) + b"\n")
        self._file.flush()

    def latest(self, limit: int) -> list[dict[str, Any]]:
        return read_outbox(self.path)[::-1][:limit]


def read_outbox(path: Path) -> list[dict[str, Any]]:
    """Every entry of an outbox file so far, oldest first. A line still being written (no
    newline yet) is left for the next read."""
    if not path.exists():
        return []
    data = path.read_bytes()
    return [orjson.loads(line) for line in data[:data.rfind(b"\n") + 1].splitlines() if line.strip()]


class SmtpSink:
    """aiosmtpd handler: accept every deliverable message and record it."""

    def __init__(self, outbox: Outbox, faults: providers.Faults,
                 accepted: list[dict[str, Any]]) -> None:
        self.outbox, self.faults = outbox, faults
        self.accepted = accepted  # what the relay's events API tells of

    async def handle_RCPT(self, server: SMTP, session: Session, envelope: Envelope,
                          address: str, rcpt_options: list[str]) -> str:
        if address.lower().rstrip(">").endswith(".invalid"):
            return "550 5.1.1 Recipient address rejected: mailbox unavailable"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        if await self.faults.roll():  # a busy mail server: come back later
            return "451 4.3.0 Temporary failure, try again later"
        raw = envelope.content if isinstance(envelope.content, bytes) else envelope.content.encode()
        headers = HEADERS.parsebytes(raw)  # the headers only: the bodies stay as they came
        subject = str(make_header(decode_header(headers.get("Subject", ""))))
        self.outbox.record("email", {
            "mail_from": envelope.mail_from,
            "rcpt_tos": list(envelope.rcpt_tos),
            "notification_id": headers.get("X-Notification-Id"),
            "subject": subject,
            "data": raw.decode("utf-8", "replace"),
        })
        self.accepted.append(providers.mail_event(headers, time.time()))
        return "250 Message accepted for delivery"


async def serve(settings: Settings) -> list[Any]:
    """Start every sink; return what must be closed on shutdown."""
    outbox = Outbox(settings.outbox)
    faults = providers.Faults.parse(settings.sink_faults)
    loop = asyncio.get_running_loop()
    # The relay remembers what it took before a restart of the sinks, too.
    accepted = [providers.mail_event(HEADERS.parsebytes(e["request"]["data"].encode()),
                                     datetime.fromisoformat(e["received_at"]).timestamp())
                for e in read_outbox(settings.outbox) if e["channel"] == "email"]
    smtp = await loop.create_server(
        lambda: SMTP(SmtpSink(outbox, faults, accepted), hostname="sinks.local",
                     data_size_limit=16 * 1024 * 1024),
        host=settings.smtp_host, port=settings.smtp_port,
    )
    app = web.Application()
    app.router.add_get("/", _inbox_page(outbox))
    app.router.add_get("/outbox.json", _outbox_json(outbox))
    app.router.add_route("*", "/_faults", providers.faults_view(faults))
    runners = [await _start(app, settings.smtp_host, settings.sinks_web_port)]
    for make, url in ((providers.sms_app, settings.sms_url), (providers.push_app, settings.push_url),
                      (providers.wechat_app, settings.wechat_url),
                      (providers.webhook_app, settings.webhook_url)):
        provider = make(settings, outbox.record, faults)
        provider.router.add_route("*", "/_faults", providers.faults_view(faults))
        where = urlsplit(url)
        runners.append(await _start(provider, where.hostname or "127.0.0.1", where.port or 80))
    if settings.email_events_url:
        events = urlsplit(settings.email_events_url)
        runners.append(await _start(providers.mail_events_app(settings, accepted),
                                    events.hostname or "127.0.0.1", events.port or 80))
    apns = urlsplit(settings.apns_url)
    runners.append(await providers.Http2Sink(providers.apns_app(settings, outbox.record, faults),
                                             apns.hostname or "127.0.0.1", apns.port or 80).listening())
    log.info("sinks ready: smtp %s:%s, sms %s, push %s (FCM) %s (APNs), wechat %s, webhook %s, "
             "inbox http://%s:%s/", settings.smtp_host, settings.smtp_port, settings.sms_url,
             settings.push_url, settings.apns_url, settings.wechat_url, settings.webhook_url,
             settings.smtp_host, settings.sinks_web_port)
    return [smtp, *runners]


async def _start(app: web.Application, host: str, port: int) -> web.AppRunner:
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, host, port).start()
    return runner


def _inbox_page(outbox: Outbox) -> Any:
    async def page(request: web.Request) -> web.Response:
        rows = []
        for entry in outbox.latest(100):
            req = entry["request"]
            to = ", ".join(req.get("rcpt_tos", [])) or req.get("to") or "?"
            rows.append(
                f"<tr><td>{html.escape(entry['received_at'][:19])}</td>"
                f"<td>{html.escape(entry['channel'])}</td><td>{html.escape(to)}</td>"
                f"<td>{html.escape(req.get('subject') or req.get('body') or '')}</td></tr>"
            )
        body = (
            "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>"
            "<meta http-equiv='refresh' content='3'><title>Sinks inbox</title>"
            "<style>body{font-family:sans-serif;margin:2em}td,th{padding:4px 10px;"
            "border-bottom:1px solid #ddd;text-align:left}</style></head><body>"
            f"<h1>Sinks inbox</h1><p>{len(rows)} latest of what the providers received.</p>"
            "<table><tr><th>received</th><th>channel</th><th>to</th><th>subject</th></tr>"
            + "".join(rows) + "</table></body></html>"
        )
        return web.Response(text=body, content_type="text/html")

    return page


def _outbox_json(outbox: Outbox) -> Any:
    async def page(request: web.Request) -> web.Response:
        limit = int(request.query.get("limit", "100"))
        return web.json_response(outbox.latest(limit), dumps=lambda o: orjson.dumps(o).decode())

    return page
