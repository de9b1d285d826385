"""The worker's customer-facing web: the tracking page answered by the order's owner, the
links in notifications, the providers' delivery callbacks and the engagement figures.

- ``/track`` (:mod:`worker.lookup_page`): a worker asked about an order it does not own
  forwards the request to the owner (found through Faust's table routing), signed so the
  owner knows it comes from a worker and the client was already rate limited.
- ``/c/TOKEN`` records ``notification.clicked`` and redirects to the page; ``/s/CODE``,
  an SMS's short link, does the same for the token the code stands for;
  ``/o/TOKEN.gif`` records ``notification.opened``; ``/u/TOKEN`` unsubscribes from
  marketing (one click, RFC 8058).
- ``/callbacks/sms`` (Twilio's StatusCallback), ``/callbacks/wechat``
  (``TEMPLATESENDJOBFINISH``) and ``/callbacks/email`` (bounces) become engagement events.
- ``/stats``: the engagement figures of every partition, added up.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any
from urllib.parse import urlencode
from xml.etree import ElementTree

import aiohttp
import faust
from aiohttp import web
from faust.types import TP
from faust.web import View

from worker import metrics
from worker.domain import engagement, links
from worker.domain.sms import twilio_signature
from worker.lookup_page import MESSAGES, ROUTED, SECURITY_HEADERS, LookupPage, page_locale
from worker.render import page

if TYPE_CHECKING:
    from worker.stream import Pipeline

log = logging.getLogger("worker.tracking")

ASK_A_WORKER = aiohttp.ClientTimeout(total=5)
PIXEL = bytes.fromhex("47494638396101000100800000000000ffffff21f90401000000002c00000000010001000002024401003b")


class TrackingSite(LookupPage):
    """The worker's site: the page, answered by the order's owner, and everything else."""

    def __init__(self, pipeline: Pipeline) -> None:
        super().__init__(pipeline.settings, pipeline)
        self.pipeline = pipeline
        self.own_url = self.settings.own_url

    def register(self, app: faust.App) -> None:
        # The page itself straight on the aiohttp application: Faust's view layer and
        # sensors cost a tenth of every lookup.
        app.web.web_app.router.add_get("/track", self.track)
        for path, get, post in (
            ("/c/{token}", self.click, None),
            ("/s/{code}", self.short_click, None),
            ("/o/{token}.gif", self.opened, None),
            ("/u/{token}", self.unsubscribe, self.unsubscribe),
            ("/callbacks/sms", None, self.sms_status),
            ("/callbacks/wechat", self.wechat_check, self.wechat_event),
            ("/callbacks/email", None, self.email_bounce),
            ("/stats", self.stats, None),
            ("/internal/inbox", self.internal_inbox, None),
        ):
            app.page(path)(_view(path, get, post))

    async def _from_owner(self, order_id: str, request: web.Request) -> web.Response | None:
        owner = self._owner(order_id)
        return None if owner is None else await self._forward(owner, request)

    def _owner(self, key: str, table: str = "orders") -> str | None:
        """The URL of the worker that owns the key's partition of ``table``; None when it is
        this one. Faust's router would answer the same (``router.key_store``) at several
        times the cost: it hashes the key again and builds a URL object every time."""
        changelog = self.pipeline.app.tables[table].changelog_topic.get_topic_name()
        tp = TP(changelog, self.pipeline.partition_of(changelog, key.encode()))
        url = self.pipeline.app.assignor._tps_url.get(tp)  # the assignor's map, set at each rebalance
        if url is None:  # between assignments: answered here, from a standby copy if any
            return None
        url = url.rstrip("/")
        return None if url == self.own_url else url

    async def _inbox(self, customer_id: str, order_id: str) -> bytes:
        """The order's in-app messages, from the worker that holds the customer's inbox."""
        owner = self._owner(customer_id, "inbox")
        if owner is None:
            return await super()._inbox(customer_id, order_id)
        path = "/internal/inbox?" + urlencode({"customer": customer_id, "order": order_id})
        try:
            async with self._get(owner + path, {ROUTED: links.request_mac(path, self.secret)}) as answer:
                return await answer.read() if answer.status == 200 else b"[]"
        except (aiohttp.ClientError, TimeoutError):
            log.warning("the inbox of a looked-up order could not be read")
            return b"[]"  # the page without its messages rather than no page

    async def internal_inbox(self, request: web.Request) -> web.Response:
        """For the other workers only: their request carries the workers' signature."""
        if not hmac.compare_digest(request.headers.get(ROUTED, ""),
                                   links.request_mac(request.path_qs, self.secret)):
            return web.Response(status=403)
        q = request.query
        return web.json_response(self.pipeline.inbox_of(q.get("customer", ""), q.get("order", "")))

    def _get(self, url: str, headers: dict[str, str]) -> Any:
        """A request to another worker, on Faust's client session (closed with the app)."""
        return self.pipeline.app.http_client.get(url, headers=headers, timeout=ASK_A_WORKER)

    async def _forward(self, owner: str, request: web.Request) -> web.Response:
        headers = {ROUTED: links.request_mac(request.path_qs, self.secret),
                   "x-forwarded-for": request.remote or "",
                   "accept-language": request.headers.get("accept-language", "")}
        metrics.lookups.labels("forwarded").inc()
        try:
            async with self._get(owner + request.path_qs, headers) as answer:
                body = await answer.read()
                response = web.Response(body=body, status=answer.status, headers=SECURITY_HEADERS,
                                        content_type="text/html", charset="utf-8")
        except (aiohttp.ClientError, TimeoutError):
            log.warning("the owner of a looked-up order did not answer")
            return web.Response(text="Please try again in a moment.", status=503, headers=SECURITY_HEADERS)
        if answer.status in (404, 410):
            return response
        self.guesses.refund(request.remote or "")
        return response

    # -- links in notifications -------------------------------------------------------

    async def click(self, request: web.Request, token: str) -> web.Response:
        link = self._link(token)
        if link is not None:
            await self._record("notification.clicked", link)
        raise web.HTTPSeeOther(f"/track?t={token}" if link else "/track",
                               headers=SECURITY_HEADERS)

    async def short_click(self, request: web.Request, code: str) -> web.Response:
        token = self.pipeline.short_links.token(code)
        if token is None:  # made up, or its token expired: the form, as for a forged link
            metrics.lookups.labels("forged").inc()
            raise web.HTTPSeeOther("/track", headers=SECURITY_HEADERS)
        return await self.click(request, token)

    async def opened(self, request: web.Request, token: str) -> web.Response:
        if (link := self._link(token)) is not None:
            await self._record("notification.opened", link)
        return web.Response(body=PIXEL, content_type="image/gif", headers=SECURITY_HEADERS)

    async def unsubscribe(self, request: web.Request, token: str) -> web.Response:
        """GET shows a button (mail scanners follow links: they must not unsubscribe anyone);
        POST, the button or a mail client's one-click, unsubscribes."""
        link = self._link(token)
        locale = page_locale(request.query.get("lang"), request)
        if link is None:
            return self._page(404, locale, form={}, message=MESSAGES["not_found"])
        if request.method == "POST":
            await self._record("notification.unsubscribed", link)
            return web.Response(text=_unsubscribed(locale), content_type="text/html", headers=SECURITY_HEADERS)
        return web.Response(text=_unsubscribe_form(locale), content_type="text/html", headers=SECURITY_HEADERS)

    def _link(self, token: str) -> links.Link | None:
        try:
            return links.read(token, self.secret)
        except links.Forged:
            metrics.lookups.labels("forged").inc()
            return None

    async def _record(self, event_type: str, link: links.Link, event_id: str = "",
                      **extra: Any) -> None:
        data = {"notification_id": link.notification_id, "order_id": link.order_id,
                "customer_id": link.customer_id, "kind": link.kind, "channel": link.channel,
                "at": datetime.now(UTC).isoformat(), **extra}
        if link.variant:
            data["variant"] = link.variant
        await self.pipeline.send_engagement(link.customer_id, event_type,
                                            event_id or f"eng-{uuid.uuid4().hex}", link.order_id, data)

    # -- providers' callbacks ---------------------------------------------------------

    async def sms_status(self, request: web.Request) -> web.Response:
        """Twilio's StatusCallback: delivered, or undelivered/failed (a bounce). Signed by
        Twilio with the account's auth token over the URL it called and the form."""
        form = await request.post()
        url = self.settings.public_url.rstrip("/") + request.path_qs
        expected = twilio_signature(self.settings.sms_auth_token, url, {k: str(v) for k, v in form.items()})
        if not hmac.compare_digest(request.headers.get("X-Twilio-Signature", ""), expected):
            metrics.lookups.labels("forged").inc()
            return web.Response(status=403)
        link = self._link(request.query.get("l", ""))
        status = str(form.get("MessageStatus", ""))
        event_type = {"delivered": "notification.delivered", "undelivered": "notification.bounced",
                      "failed": "notification.bounced"}.get(status)
        if link is not None and event_type:
            await self._record(event_type, link, f"twilio-{form.get('MessageSid', '')}-{status}",
                               provider_status=status, error_code=str(form.get("ErrorCode", "")))
        return web.Response(status=204)

    async def wechat_check(self, request: web.Request) -> web.Response:
        """WeChat's server check: echo ``echostr`` when the signature holds."""
        q = request.query
        if not _wechat_signed(self.settings.wechat_callback_token, q.get("signature", ""), q.get("timestamp", ""), q.get("nonce", "")):
            return web.Response(status=403)
        return web.Response(text=q.get("echostr", ""))

    async def wechat_event(self, request: web.Request) -> web.Response:
        """``TEMPLATESENDJOBFINISH``: the template message arrived, or the user blocks us."""
        q = request.query
        if not _wechat_signed(self.settings.wechat_callback_token, q.get("signature", ""), q.get("timestamp", ""), q.get("nonce", "")):
            return web.Response(status=403)
        try:
            xml = ElementTree.fromstring(await request.read())
        except ElementTree.ParseError:
            return web.Response(status=400)
        link = self._link(q.get("l", ""))
        status = xml.findtext("Status", "")
        if link is not None and xml.findtext("Event") == "TEMPLATESENDJOBFINISH":
            event_type = "notification.delivered" if status == "success" else "notification.bounced"
            await self._record(event_type, link, f"wechat-{xml.findtext('MsgID', '')}",
                               provider_status=status)
        return web.Response(text="success")

    async def email_bounce(self, request: web.Request) -> web.Response:
        """A bounce from the mail relay: ``{"link": TOKEN, "type": "hard"|"soft"}`` (the
        token is in every message's ``X-Notification-Link`` header)."""
        try:
            body = await request.json()
        except ValueError:
            return web.Response(status=400)
        link = self._link(str(body.get("link", ""))) if isinstance(body, dict) else None
        if link is None:
            return web.Response(status=404)
        await self._record("notification.bounced", link, bounce_type=str(body.get("type", "soft")))
        return web.Response(status=202)

    # -- figures ----------------------------------------------------------------------

    async def stats(self, request: web.Request) -> web.Response:
        return web.json_response({"figures": engagement.summary(
            (key.split("|", 1)[1], figures) for key, figures in self.pipeline.engagement_figures.items()),
                                  "as_of": datetime.now(UTC).isoformat()})


def _view(path: str, get: Callable[..., Awaitable[Any]] | None,
          post: Callable[..., Awaitable[Any]] | None) -> type[View]:
    methods: dict[str, Any] = {}
    if get:
        methods["get"] = get
    if post:
        methods["post"] = post
    return type(f"View{path.replace('/', '_')}", (View,), methods)


def _wechat_signed(token: str, signature: str, timestamp: str, nonce: str) -> bool:
    """WeChat signs its calls with the token set in the official account's server settings."""
    expected = hashlib.sha1("".join(sorted((token, timestamp, nonce))).encode()).hexdigest()
    return bool(signature) and signature == expected


def _unsubscribe_form(locale: str) -> str:
    return page("unsubscribe.html.j2", locale, "UTC", {"done": False})


def _unsubscribed(locale: str) -> str:
    return page("unsubscribe.html.j2", locale, "UTC", {"done": True})
