"""The tracking page: ``/track``, the form, a lookup by order number and email or phone
digits, or a signed link; ``&lang=`` switches language. A wrong pair, an unknown order and
a forged link get the same answer; lookups are rate limited per client address.

Served by the worker (:mod:`worker.tracking_site`, which answers from the order's owner)
and by the page servers (:mod:`worker.page_server`, from their copy of the worker's tables).
A lookup in the order's own language draws the page's outline and keeps it for the next
lookups of the same state, which only fill in what moves with the clock (:class:`Outline`).
"""

from __future__ import annotations

import functools
import hmac
import logging
import time
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Generic, Protocol, TypeVar

import lz4.block
import orjson
from aiohttp import web
from markupsafe import Markup, escape

from worker import metrics, packing
from worker.domain import links, tracking
from worker.domain.limiter import Buckets
from worker.domain.order import OrderState
from worker.domain.rules import Rules
from worker.render import CATALOGS, catalog_locale, page, page_blocks, style_hashes, translate
from worker.settings import Settings

V = TypeVar("V")
log = logging.getLogger("worker.pages")

LANGUAGES = (("zh-CN", "简体中文"), ("zh-TW", "繁體中文"), ("en", "English"))
ROUTED = "x-notifier-routed"  # a worker's signature on a request it forwards
TRACK, OUTLINE = "track.html.j2", "track_outline.html.j2"
HOLE = "<hole>"  # where the outline leaves a link or a block of TRACK out
_HOLE_BYTES = HOLE.encode()
PAGE_STYLES = style_hashes(TRACK, "unsubscribe.html.j2")  # the only styles allowed
SECURITY_HEADERS = {
    "Cache-Control": "no-store",
    "Referrer-Policy": "no-referrer",  # a signed link must not leak to other sites
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Content-Security-Policy": f"default-src 'none'; style-src {PAGE_STYLES}; img-src 'self'; "
                               "form-action 'self'; base-uri 'none'; frame-ancestors 'none'",
}
HTML_HEADERS = {**SECURITY_HEADERS, "Content-Type": "text/html; charset=utf-8"}
FOUND = metrics.lookups.labels("found")
LOOKUP_KEYS = ("t", "order", "email", "phone4")  # what a lookup is asked by; the rest is display
DICTIONARY_BYTES = 32 << 10  # the outlines' LZ4 dictionary (LZ4 reaches back 64 KB at most)
PAGE_FRESH_SECONDS = 60  # how long a drawn page is shown again to customers refreshing it
MESSAGES = {  # translated in the catalogs like the templates' strings
    "not_found": "We could not find an order with these details. Check the order number and the "
                 "email address or phone digits.",
    "too_many": "Too many tries. Please wait a minute and try again.",
    "expired": "This link has expired. Enter your order number to see your order.",
}


class PageRequest(Protocol):
    """What a lookup reads of a request: aiohttp's, or a page server's (:mod:`worker.page_http`)."""

    path_qs: str
    query_string: str

    @property
    def query(self) -> Mapping[str, str]: ...

    @property
    def headers(self) -> Mapping[str, str]: ...

    @property
    def remote(self) -> str | None: ...


class Orders(Protocol):
    """What a lookup reads: a worker's own tables, or a page server's copy of them."""

    rules: Rules

    def saved_order(self, order_id: str) -> bytes | None: ...

    def now_for(self, order_id: str) -> datetime: ...

    def lanes_of(self, keys: Any) -> list[dict[str, Any]]: ...

    def inbox_of(self, customer_id: str, order_id: str) -> list[dict[str, Any]]: ...


@dataclass(frozen=True, slots=True)
class Drawn:
    """A page as it was drawn, and what it was drawn from."""

    saved: bytes  # the order's state
    customer_id: str
    messages: bytes  # the order's in-app messages
    body: bytes
    at: float  # the order's clock, in seconds


@dataclass(frozen=True, slots=True)
class Outline:
    """An order's page in one language with a hole for each part that changes while the
    order's state does not (:data:`OUTLINE`), and what fills them."""

    locale: str  # the page's (a catalog's)
    order_locale: str  # the order's own: a lookup's language when it asks for none
    credentials: tracking.Credentials
    customer_id: str
    timezone: str
    parcels: list[tuple[str | None, str | None, tracking.Arrival]]  # delivered, exception, arrival
    page: bytes

    def packed(self) -> bytes:
        """Compressed, some 420 bytes (the page alone is 4 KB): kept for the orders looked up lately."""
        return lz4.block.compress(self.serialized(), dict=_dictionary(), store_size=True)

    def serialized(self) -> bytes:
        """What fills the holes (JSON), a line break, then the page."""
        parcels = [(delivered, exception, arrival.as_list()) for delivered, exception, arrival in self.parcels]
        return orjson.dumps([self.locale, self.order_locale, *self.credentials, self.customer_id,
                             self.timezone, parcels]) + b"\n" + self.page

    @classmethod
    def unpacked(cls, packed: bytes) -> Outline:
        text = lz4.block.decompress(packed, dict=_dictionary())
        facts, _, page = text.partition(b"\n")  # JSON escapes a line break
        locale, order_locale, email, phone4, customer_id, timezone, parcels = orjson.loads(facts)
        return cls(locale, order_locale, (email, phone4), customer_id, timezone, [
            (delivered, exception, tracking.Arrival.of(arrival)) for delivered, exception, arrival in parcels], page)


@dataclass(frozen=True, slots=True)
class Kept:
    """An order's page outline, packed, and the state it was drawn from."""

    saved: bytes
    outline: bytes


class LookupPage:
    """``/track``: the form, a lookup by order number and email or phone digits, a signed
    link. Answers from ``orders``; a worker overrides where an order or an inbox lives."""

    def __init__(self, settings: Settings, orders: Orders) -> None:
        self.settings, self.orders = settings, orders
        self.secret = settings.link_secret
        self.guesses = Buckets(settings.lookups_per_minute, settings.lookups_per_minute)
        # Drawn pages, by the order and the request.
        self.pages = Recent[Drawn](settings.page_cache_size)
        # Outlines of the orders' pages looked up lately, by the order.
        self.outlines = Recent[Kept](settings.page_outlines)
        for code, _ in LANGUAGES:  # compiled now, rather than by the first customers' lookups
            for template in (TRACK, OUTLINE):
                self._html(catalog_locale(code), form={}, template=template)

    async def track(self, request: PageRequest) -> web.Response:
        q = request.query
        routed = ROUTED in request.headers and hmac.compare_digest(
            request.headers[ROUTED], links.request_mac(request.path_qs, self.secret))
        if not (q.get("t") or q.get("order")):
            return self._page(200, page_locale(q.get("lang"), request), form=dict(q))
        client = request.headers.get("x-forwarded-for", "") if routed else (request.remote or "")
        if not routed and not self.guesses.take(client, time.monotonic()):
            metrics.lookups.labels("rate_limited").inc()
            response = self._page(429, page_locale(q.get("lang"), request), form={},
                                  message=MESSAGES["too_many"])
            response.headers["Retry-After"] = str(self.guesses.retry_after(client))
            return response
        link: links.Link | None = None
        if q.get("t"):
            try:
                link = links.read(q["t"], self.secret)
            except links.Forged:
                return self._not_found(request)
            if link.expired(datetime.now(UTC)):
                metrics.lookups.labels("expired").inc()
                return self._page(410, page_locale(q.get("lang"), request), form={},
                                  message=MESSAGES["expired"])
        order_id = link.order_id if link else q["order"].strip()
        if not routed and (answer := await self._from_owner(order_id, request)) is not None:
            return answer
        saved = self.orders.saved_order(order_id)
        # The page of an order changes with its state, its messages and the time (the
        # expected window never starts in the past, lanes learn): customers refreshing it get
        # it from memory for a minute after it was drawn, each page on its own minute, so
        # pages are drawn again a few at a time rather than all at once. A page drawn for
        # this very request and state was drawn for a verified pair.
        key = (order_id, request.query_string, request.headers.get("accept-language", ""))
        drawn = self.pages.get(key)
        if saved is not None and drawn is not None and drawn.saved == saved:
            messages = await self._inbox(drawn.customer_id, order_id)
            if messages == drawn.messages and (
                    self.orders.now_for(order_id).timestamp() - drawn.at < PAGE_FRESH_SECONDS):
                return self._found(client, drawn.body)
        kept = self.outlines.get(order_id)  # one drawn from an earlier state is not the page
        outline = Outline.unpacked(kept.outline) if kept is not None and kept.saved == saved else None
        state = OrderState.from_dict(packing.unpack(saved)) if saved and not outline else None
        known = outline.credentials if outline else tracking.credentials(state)
        if (outline is None and (state is None or state.order is None)) or (
                link is None and not tracking.matches(known, q.get("email", ""), q.get("phone4", ""))):
            return self._not_found(request)
        own = outline.order_locale if outline else tracking.order_locale(state)
        locale = page_locale(q.get("lang") or own, request)
        now = self.orders.now_for(order_id)
        if outline is None and state is not None and self.outlines.size and locale == catalog_locale(own):
            # Drawn at a lookup rather than as the order changes: only the orders customers
            # look at cost their outline, however fast the orders change.
            outline = self._keep_outline(order_id, saved, state, locale)
        if outline is not None and outline.locale == locale:
            customer_id = outline.customer_id
            messages = await self._inbox(customer_id, order_id)
            body = self._filled(outline, now, request.query_string, orjson.loads(messages))
        else:  # the whole page, drawn now
            state = state or OrderState.from_dict(packing.unpack(saved))
            customer_id = tracking.customer_id(state)
            messages = await self._inbox(customer_id, order_id)
            view = tracking.view(state, now, self.orders.rules, self.orders.lanes_of)
            body = page(TRACK, locale, view["timezone"], _page_context(
                view, request.query_string, orjson.loads(messages))).encode()
        self.pages.put(key, Drawn(saved, customer_id, messages, body, now.timestamp()))
        return self._found(client, body)

    def _filled(self, outline: Outline, now: datetime, query: str, inbox: list[dict[str, Any]]) -> bytes:
        """The page: its outline, with the language links for this request, each parcel's
        expected delivery as of ``now`` and the order's messages in the holes."""
        fills = [str(escape(link)) for link in _language_links(query).values()]
        blocks = []
        for delivered_at, exception, arrival in outline.parcels:
            blocks.append(("arrival", {"p": {
                "delivered_at": delivered_at, "exception": exception,
                **tracking.expected(arrival, now, self.orders.rules, self.orders.lanes_of)}}))
        if inbox:
            blocks.append(("messages", {"inbox": inbox}))
        fills += page_blocks(TRACK, outline.locale, outline.timezone, blocks)
        if not inbox:
            fills.append("")  # what the messages block shows without messages
        parts = outline.page.split(_HOLE_BYTES)
        return b"".join(part + fill.encode() for part, fill in zip(parts, [*fills, ""], strict=True))

    def _keep_outline(self, order_id: str, saved: bytes, state: OrderState, locale: str) -> Outline | None:
        try:
            outline = _outline(state, locale)
        except Exception:  # the page is drawn whole instead: say so, answer the customer
            log.exception("an order's page outline could not be drawn", extra={"order_id": order_id})
            return None
        self.outlines.put(order_id, Kept(saved, outline.packed()))
        return outline

    def _found(self, client: str, body: bytes) -> web.Response:
        # A lookup that found its order costs the client nothing.
        self.guesses.refund(client)
        FOUND.inc()
        return web.Response(body=body, headers=HTML_HEADERS)

    def _not_found(self, request: PageRequest) -> web.Response:
        metrics.lookups.labels("not_found").inc()
        return self._page(404, page_locale(request.query.get("lang"), request), form={},
                          message=MESSAGES["not_found"])

    def _page(self, status: int, locale: str, **context: Any) -> web.Response:
        return html_response(status, self._html(locale, **context))

    def _html(self, locale: str, *, form: dict[str, str], message: str = "", template: str = TRACK) -> str:
        """The form, with what was typed in it, and a message."""
        return page(template, locale, "UTC", _page_context(
            None, form=form, message=translate(locale, message) if message else ""))

    async def _from_owner(self, order_id: str, request: PageRequest) -> web.Response | None:
        """The answer of the process that holds the order; None when it is this one."""
        return None

    async def _inbox(self, customer_id: str, order_id: str) -> bytes:
        """The order's in-app messages (a JSON list)."""
        return orjson.dumps(self.orders.inbox_of(customer_id, order_id))


class Recent(Generic[V]):
    """The latest ``size`` entries, the least recently used forgotten first."""

    def __init__(self, size: int) -> None:
        self.size, self._entries = size, OrderedDict[Any, V]()

    def get(self, key: Any) -> V | None:
        if key in self._entries:
            self._entries.move_to_end(key)
            return self._entries[key]
        return None

    def put(self, key: Any, value: V) -> None:
        if not self.size:
            return
        self._entries[key] = value
        if len(self._entries) > self.size:
            self._entries.popitem(last=False)

    def __len__(self) -> int:
        return len(self._entries)


def _language_links(query: str) -> dict[str, str]:
    """The page in each language: the links keep what opened it (the client's own encoding:
    the template escapes it), without a decoding and encoding of it on every page."""
    kept = "&".join(part for part in query.split("&") if part.split("=", 1)[0] in LOOKUP_KEYS)
    return {code: f"/track?{kept}&lang={code}" if kept else f"/track?lang={code}"
            for code, _ in LANGUAGES}


def _page_context(view: dict[str, Any] | None, query: str = "", inbox: list[dict[str, Any]] | None = None,
                  form: dict[str, str] | None = None, message: str = "") -> dict[str, Any]:
    return {"view": view, "form": {"order": "", "email": "", **(form or {})}, "message": message,
            "languages": LANGUAGES, "switch": _language_links(query), "inbox": inbox or []}


def _outline(state: OrderState, locale: str) -> Outline:
    facts = tracking.outline(state)
    return Outline(locale, facts["locale"], tracking.credentials(state), tracking.customer_id(state),
                   facts["timezone"], [(p["delivered_at"], p["exception"], p["arrival"]) for p in facts["shipments"]],
                   page(OUTLINE, locale, facts["timezone"], {
                       **_page_context(facts), "switch": {code: Markup(HOLE) for code, _ in LANGUAGES}}).encode())


@functools.cache
def _dictionary() -> bytes:
    """Outlines are compressed against the outlines of the typical states packing has, by
    LZ4: about 1.5 µs of unpacking a lookup, where deflate took 8. An equal share of each
    language's (the style, the header, the words): some 420 bytes an outline, where the
    last 64 KB of them all, mostly the last language's, made 550, and LZ4 loads a smaller
    dictionary faster on every outline it packs (11 µs against 19)."""
    samples = [OrderState.from_dict(orjson.loads(line)) for line in packing.SAMPLE.splitlines()]
    share = DICTIONARY_BYTES // len(CATALOGS)
    return b"".join(b"".join(_outline(state, locale).serialized() for state in samples if state.order)[-share:]
                    for locale in CATALOGS)


def html_response(status: int, html: str) -> web.Response:
    return web.Response(text=html, status=status, content_type="text/html", charset="utf-8",
                        headers=SECURITY_HEADERS)


def page_locale(tag: str | None, request: PageRequest) -> str:
    """The page's language: asked for, else the browser's first we have, else English."""
    if tag:
        return catalog_locale(tag)
    accepted = request.headers.get("accept-language", "").split(",")[0].split(";")[0].strip()
    return catalog_locale(accepted or "en")
