"""A page server's copy of what the page reads, from the worker's changelog records."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta
from urllib.parse import urlencode

import orjson
import pytest
from aiokafka.partitioner import DefaultPartitioner
from multidict import CIMultiDict

from worker import lookup_page, packing, page_http, simulate
from worker.lookup_page import LookupPage
from worker.page_server import Replica, changelog
from tests.unit.stories import ORDER, at, created, paid, scan, shipped
from tests.unit.stories import run as story_run
from worker.replay import Replay
from worker.settings import Settings
from worker.stream import load_rules


def replica(**settings: object) -> Replica:
    s = dataclasses.replace(Settings(), **settings)
    return Replica(s, load_rules(s))


def test_the_latest_value_of_each_key_is_kept_and_a_tombstone_forgets_it():
    r = replica()
    orders = changelog(r.settings, "orders")
    r.apply(orders, b"SO-1", packing.pack({"order": {"order_id": "SO-1"}, "v": 1}, None))
    r.apply(orders, b"SO-1", packing.pack({"order": {"order_id": "SO-1"}, "v": 2}, None))
    assert packing.unpack(r.saved_order("SO-1"))["v"] == 2
    r.apply(orders, b"SO-1", None)  # the worker forgot the order
    assert r.saved_order("SO-1") is None


def test_inbox_and_lane_figures_are_read_as_the_worker_wrote_them():
    r = replica()
    messages = [{"notification_id": "n1", "order_id": "SO-1", "title": "Shipped"},
                {"notification_id": "n2", "order_id": "SO-2", "title": "Other order"}]
    r.apply(changelog(r.settings, "inbox"), b"C-1", orjson.dumps(messages))
    assert [m["notification_id"] for m in r.inbox_of("C-1", "SO-1")] == ["n1"]
    assert r.inbox_of("C-unknown", "SO-1") == []
    r.apply(r.settings.topics.lane_figures, b"sf|CN-ZJ|CN-SH", orjson.dumps({"samples": 40}))
    assert r.lanes_of(["sf|CN-ZJ|CN-SH", "sf|*|CN"]) == [{"samples": 40}]
    assert changelog(r.settings, "orders") in r.topics and r.settings.topics.lane_figures in r.topics


def test_under_the_event_clock_an_order_is_seen_at_its_partitions_time():
    r = replica(clock="event")
    n = r.settings.partitions
    partition = DefaultPartitioner()(b"SO-1", list(range(n)), list(range(n)))
    r.apply(changelog(r.settings, "clock"), str(partition).encode(), b"2026-10-03T12:00:00+00:00")
    assert r.now_for("SO-1").isoformat() == "2026-10-03T12:00:00+00:00"
    assert replica().now_for("SO-1").year >= 2026  # the wall clock otherwise


# -- pages filled from their outlines ------------------------------------------------------

NOW = datetime(2026, 12, 3, 12, tzinfo=UTC)


@pytest.fixture(scope="module")
def shop() -> Replica:
    """A page server's copy of 150 simulated orders, their lanes and some messages, at NOW."""
    r = replica()
    records = list(simulate.stories(r.settings, count=150, seed=7, days=3, start=NOW - timedelta(days=4)))
    replayed = Replay(r.rules)
    outcome = replayed.run(record for record in records if record.time <= NOW)
    for order_id, state in replayed.states.items():
        r.apply(changelog(r.settings, "orders"), order_id.encode(), packing.pack(state.to_dict(), None))
        if state.order and order_id[-1] in "02468":
            customer = state.order["customer"]["id"]
            r.apply(changelog(r.settings, "inbox"), customer.encode(), orjson.dumps([{
                "notification_id": f"n-{order_id}", "order_id": order_id, "title": "<b>Shipped</b>",
                "text": "On its way & soon there", "created_at": "2026-12-02T08:00:00+00:00"}]))
    r.lane_figures.update(outcome.lane_figures)
    r.now_for = lambda order_id: NOW  # type: ignore[method-assign]
    return r


def lookup(order_id: str, email: str, lang: str = "") -> page_http.Request:
    query = urlencode({"order": order_id, "email": email, **({"lang": lang} if lang else {})})
    return page_http.Request("GET", f"/track?{query}", CIMultiDict(), "127.0.0.1", True)


async def test_a_page_filled_from_its_outline_is_the_page_drawn_whole(shop: Replica):
    pages = await filled_and_drawn(shop)
    assert len(pages) > 400  # of 600 lookups, four languages each; the rest have no email
    shown = "".join(pages)
    for part in ("Expected delivery: between", "Delivered on", "running about", "Parcel 2 of",
                 "This order was cancelled.", "&lt;b&gt;Shipped&lt;/b&gt;"):
        assert part in shown


@pytest.mark.parametrize("reason, told", [
    ("weather", "Bad weather"), ("customs", "waiting in customs"), ("address", "better address"),
    (None, "slower than usual")])
async def test_a_late_parcel_filled_from_its_outline_says_why_as_drawn_whole(reason, told):
    late = story_run(created(promised_delivery_by=at(24).isoformat()), paid(), shipped(5),
                     scan(8, "PICKED_UP"), *([scan(20, "EXCEPTION", reason=reason)] if reason else []))
    late.state.delays["P1"] = 2  # a delay notice told two days
    one = replica()
    one.apply(changelog(one.settings, "orders"), ORDER.encode(), packing.pack(late.state.to_dict(), None))
    one.now_for = lambda order_id: at(30)  # type: ignore[method-assign]
    pages = await filled_and_drawn(one)
    own, english = pages[0], pages[1]  # the order's language is zh-CN
    assert len(pages) == 4 and "约 2 天" in own and told in english and "running about 2 day" in english


async def filled_and_drawn(shop: Replica) -> list[str]:
    """Each order looked up in its own language and in each, by two page servers: one
    keeping the outlines it draws, one drawing every page whole. Their answers must be the
    same, byte for byte, whether the outline was drawn for the lookup or kept from an
    earlier one; the pages found."""
    ahead, whole = (LookupPage(dataclasses.replace(shop.settings, page_cache_size=0, page_outlines=n), shop)
                    for n in (1000, 0))
    found = []
    for order_id, saved in shop.orders.items():
        email = ((packing.unpack(saved).get("order") or {}).get("customer") or {}).get("email", "")
        for lang in ("", "en", "zh-CN", "zh-TW"):
            request = lookup(order_id.decode(), email, lang)
            filled, drawn = await ahead.track(request), await whole.track(request)
            assert (filled.status, filled.body) == (drawn.status, drawn.body)
            if filled.status == 200:
                found.append(filled.body.decode())
    assert ahead.outlines and not whole.outlines
    return found


async def test_an_outline_is_drawn_at_a_lookup_and_drawn_again_once_the_order_changed(shop: Replica):
    page = LookupPage(dataclasses.replace(shop.settings, page_cache_size=0), shop)
    (order_id, email), *_ = _some_orders(shop)
    before = shop.orders[order_id]
    assert not page.outlines
    await page.track(lookup(order_id.decode(), email))
    assert page.outlines.get(order_id.decode()).saved == before  # kept for the next lookups
    state = packing.unpack(before)
    state["cancelled_at"] = "2026-12-03T11:00:00+00:00"
    shop.apply(changelog(shop.settings, "orders"), order_id, packing.pack(state, None))
    try:
        assert "This order was cancelled." in (await page.track(lookup(order_id.decode(), email))).body.decode()
        assert page.outlines.get(order_id.decode()).saved == shop.orders[order_id]
    finally:
        shop.apply(changelog(shop.settings, "orders"), order_id, before)


async def test_an_outline_that_cannot_be_drawn_leaves_the_page_drawn_whole(shop: Replica, monkeypatch, caplog):
    (order_id, email), *_ = _some_orders(shop)
    whole = await LookupPage(dataclasses.replace(shop.settings, page_outlines=0), shop).track(
        lookup(order_id.decode(), email))

    def broken(*_: object) -> None:
        raise ValueError("a state the outline does not expect")

    monkeypatch.setattr(lookup_page, "_outline", broken)
    page = LookupPage(shop.settings, shop)
    answer = await page.track(lookup(order_id.decode(), email))
    assert (answer.status, answer.body) == (200, whole.body) and not page.outlines
    assert "could not be drawn" in caplog.text


def _some_orders(shop: Replica) -> list[tuple[bytes, str]]:
    customers = {order_id: (packing.unpack(saved).get("order") or {}).get("customer") or {}
                 for order_id, saved in shop.orders.items()}
    return [(o, c["email"]) for o, c in customers.items() if c.get("email") and c.get("locale") == "en"]
