"""Local stand-ins for the providers, for `make run` and the tests.

A real SMTP server (aiosmtpd) listens where ``NOTIFIER_SMTP_HOST``/``PORT`` point;
everything received is appended to ``NOTIFIER_OUTBOX`` as one JSON object a line
(``channel``, ``received_at``, ``request`` as the provider saw it), and an inbox
page on ``NOTIFIER_SINKS_WEB_PORT`` shows the latest messages.
"""

from __future__ import annotations

import asyncio
import email
import email.policy
import html
import logging
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
from aiohttp import web
from aiosmtpd.smtp import SMTP, Envelope, Session

from worker.settings import Settings

log = logging.getLogger("worker.sinks")


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
        if not self.path.exists():
            return []
        lines = self.path.read_bytes().splitlines()[-limit:]
        return [orjson.loads(line) for line in reversed(lines) if line.strip()]


class SmtpSink:
    """aiosmtpd handler: accept every message and record it."""

    def __init__(self, outbox: Outbox) -> None:
        self.outbox = outbox

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        raw = envelope.content if isinstance(envelope.content, bytes) else envelope.content.encode()
        parsed = email.message_from_bytes(raw, policy=email.policy.default)
        self.outbox.record("email", {
            "mail_from": envelope.mail_from,
            "rcpt_tos": list(envelope.rcpt_tos),
            "notification_id": parsed.get("X-Notification-Id"),
            "subject": parsed.get("Subject"),
            "data": raw.decode("utf-8", "replace"),
        })
        return "250 Message accepted for delivery"


async def serve(settings: Settings) -> list[Any]:
    """Start every sink; return what must be closed on shutdown."""
    outbox = Outbox(settings.outbox)
    loop = asyncio.get_running_loop()
    smtp = await loop.create_server(
        lambda: SMTP(SmtpSink(outbox), hostname="sinks.local", data_size_limit=16 * 1024 * 1024),
        host=settings.smtp_host, port=settings.smtp_port,
    )
    app = web.Application()
    app.router.add_get("/", _inbox_page(outbox))
    app.router.add_get("/outbox.json", _outbox_json(outbox))
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, settings.smtp_host, settings.sinks_web_port).start()
    log.info("sinks ready: smtp %s:%s, inbox http://%s:%s/", settings.smtp_host,
             settings.smtp_port, settings.smtp_host, settings.sinks_web_port)
    return [smtp, runner]


def _inbox_page(outbox: Outbox) -> Any:
    async def page(request: web.Request) -> web.Response:
        rows = []
        for entry in outbox.latest(100):
            req = entry["request"]
            to = ", ".join(req.get("rcpt_tos", [])) or "?"
            rows.append(
                f"<tr><td>{html.escape(entry['received_at'][:19])}</td>"
                f"<td>{html.escape(entry['channel'])}</td><td>{html.escape(to)}</td>"
                f"<td>{html.escape(req.get('subject') or '')}</td></tr>"
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
