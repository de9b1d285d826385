"""``notifier bench domain``: the decision code alone, on the worker benchmark's stream.

No broker, no Faust, no decoding: the stream of ``notifier bench worker`` (cut at
``--events``) as Python objects, through (1) the order and lane stages' pure code as
:class:`worker.replay.Replay` runs it (order state, rules, wake-ups, lanes, addresses), then
(2) the customer stage's decisions for the intents that came out (preferences, channel
choice, holds) and the rendering of every message to its channel. Prints events a second
for each and for both: the most a one-process worker running this code could do on this
machine, whatever the framework around it. The order stages also over the stream's second
half alone: its lanes start with no figures, and the watch on moving parcels predicts
(which is half of what a decision costs) only once they have learned, as they have in a
worker that has run a while. Writes them to docs/performance.md.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

from worker import simulate
from worker.bench import machine
from worker.bench_worker import stream
from worker.domain import customer
from worker.figures import write_block
from worker.render import catalog_locale, for_channel, render
from worker.replay import Replay
from worker.settings import PROJECT_ROOT, Settings
from worker.stream import load_rules


def run(settings: Settings, events: int, page: Path = PROJECT_ROOT / "docs" / "performance.md") -> int:
    rules = load_rules(settings)
    records = stream(settings, events)
    halfway: list[float] = []

    def marking_halfway() -> Iterator[simulate.Record]:
        for n, record in enumerate(records):
            if n == len(records) // 2:
                halfway.append(time.perf_counter())
            yield record

    started = time.perf_counter()
    outcome = Replay(rules).run(marking_halfway())
    ended = time.perf_counter()
    orders_seconds, late = ended - started, len(records) - len(records) // 2

    started = time.perf_counter()
    customers: dict[str, customer.CustomerState] = {}
    for record in records:
        if record.event_type == "customer.preferences_updated":
            state = customers.setdefault(record.key, customer.CustomerState(record.key))
            customer.update_preferences(state, record.data, record.time)
    rendered = 0
    for intent in outcome.intents:
        now = datetime.fromisoformat(intent.created_at)
        state = customers.setdefault(intent.customer_id, customer.CustomerState(intent.customer_id))
        customer.prune(state, now, rules)
        for action in customer.decide(state, intent, now, rules, settings.webhook_url):
            for route in getattr(action, "routes", ()):
                facts = {**intent.facts, "order_id": intent.order_id, "tracking_url": "https://t.example/c/x"}
                locale = catalog_locale(route.locale, rules.fallback_locale)
                content = render(intent.kind, locale, route.timezone, facts, whole=route.channel == "email")
                for_channel(route.channel, content, intent.order_id, facts["tracking_url"],
                            settings.wechat_template_id)
                rendered += 1
    customers_seconds = time.perf_counter() - started

    n, total = len(records), orders_seconds + customers_seconds
    lines = [
        f"{n:,} events, {len(outcome.intents):,} intents, {rendered:,} messages rendered",
        f"(1) order and lane stages: {orders_seconds:.1f} s, {n / orders_seconds:,.0f} events/s; "
        f"the stream's second half alone, with its lanes learned, {late / (ended - halfway[0]):,.0f} events/s",
        f"(2) customer stage and rendering: {customers_seconds:.1f} s, "
        f"{n / customers_seconds:,.0f} events/s of the stream",
        f"both: {total * 1e6 / n:,.0f} us an event, {n / total:,.0f} events/s",
    ]
    print("\n".join(lines))
    write_block(page, "bench:domain", "Decision code alone",
                f"`notifier bench domain --events {events}` on {machine()}, {datetime.now(UTC):%Y-%m-%d}:",
                lines)
    return 0
