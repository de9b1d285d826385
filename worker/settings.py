"""One typed settings object, read from ``NOTIFIER_*`` environment variables.

A file named by ``NOTIFIER_ENV_FILE`` (``KEY=VALUE`` lines) may add to them; the
environment wins. A bad value raises :class:`SettingsError` with one line naming
the variable and what is allowed; the CLI prints that line and exits.
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

PREFIX = "NOTIFIER_"
PROJECT_ROOT = Path(__file__).resolve().parent.parent
CHANNELS = ("email", "sms", "push", "wechat", "webhook", "in_app")


class SettingsError(ValueError):
    """A setting has a value the program cannot use."""


@dataclass(frozen=True)
class Topics:
    orders: str = "orders.events"
    tracking: str = "tracking.events"
    preferences: str = "customers.preferences"
    engagement: str = "notifications.engagement"
    dispatch_prefix: str = "notifications.dispatch"
    sent: str = "notifications.sent"
    alerts: str = "ops.alerts"
    dlq: str = "notifications.dlq"
    intents: str = "notifications.intents"
    lanes: str = "lanes.observations"  # internal: delivered parcels' journeys, by lane
    lane_figures: str = "lanes.figures"  # compacted: each lane's latest figures
    addresses: str = "risk.addresses"  # internal: shipments by destination fingerprint
    engagement_figures: str = "engagement.figures"  # compacted: each partition's figures
    inbox: str = "notifications.inbox"  # the in-app inbox, by customer
    retry: str = "notifications.retry"  # internal: sends waiting for their next attempt
    attempts: str = "notifications.attempts"  # internal, compacted: a send begun, by id
    short_links: str = "links.short"  # internal: what each SMS link's code stands for

    def dispatch(self, channel: str) -> str:
        return f"{self.dispatch_prefix}.{channel}"


@dataclass(frozen=True)
class Settings:
    kafka_bootstrap: str = "127.0.0.1:9092"
    app_id: str = "order-notifier"  # Faust app id: consumer group and table changelog prefix
    clock: str = "wall"
    rules: Path = PROJECT_ROOT / "worker" / "rules.toml"
    partitions: int = 4
    replication_factor: int = 1  # of the topics created at start and the tables' changelogs
    standby_replicas: int = 1  # workers that keep a warm copy of each table partition
    # How long the group waits for a worker that stopped answering (killed, cut off) before
    # its partitions go to the others; Kafka allows 6 to 1,800 s by default.
    session_timeout_seconds: float = 60.0
    stop_seconds: float = 30.0  # a stop that takes longer (its broker gone) ends as a kill would
    store: str = "memory://"
    # All of RocksDB's caches and write buffers in one process, shared by every table
    # partition (worker/rocks.py); Faust's defaults are per partition.
    rocksdb_memory_mb: int = 256
    # With RocksDB, each stage's index of wake-ups holds this many of the soonest due; the
    # rest stay in the store until their time nears (worker/wakeups.py).
    wakeups_held: int = 100_000
    data_dir: Path = Path("var")
    log_level: str = "info"
    log_format: str = "json"

    web_port: int = 6066
    senders_web_port: int = 6067
    sinks_web_port: int = 6068
    pages_web_port: int = 6069  # the page servers' (notifier pages) shared port
    public_url: str = "http://127.0.0.1:6066"  # where customers reach the tracking page
    # Where the other workers reach this one (tracking lookups go to the order's owner);
    # empty: http://127.0.0.1:<web_port>. In Kubernetes, the pod's own address.
    advertised_url: str = ""
    link_secret: str = "dev-link-secret-change-me"  # signs tracking links (HMAC): a secret
    link_ttl_days: int = 60  # a notification's links open the order this long after it
    lookups_per_minute: int = 10  # tracking-page lookups a client address may try
    page_cache_size: int = 2000  # tracking pages kept rendered (about 5 KB each); 0: none
    # Orders' page outlines kept (about 0.7 KB each), drawn at a lookup; 0: pages drawn whole.
    page_outlines: int = 20000

    smtp_host: str = "127.0.0.1"
    smtp_port: int = 2525
    smtp_username: str = ""
    smtp_password: str = ""
    smtp_starttls: bool = False
    email_from: str = "notifications@shop.example"
    # The mail provider's events API (shaped like Mailgun's, for https://api.mailgun.net):
    # after a crash in the middle of a send, it tells whether the message was taken, so it is
    # not sent again. Empty: a plain SMTP server, which cannot tell.
    email_events_url: str = "http://127.0.0.1:6076"
    email_events_key: str = "dev-mail-events-key"
    sms_url: str = "http://127.0.0.1:6071"
    sms_account_sid: str = "AC0000000000000000000000000000dev"
    sms_auth_token: str = "dev-auth-token"
    sms_from: str = "+15005550006"  # the sender number; several, comma-separated, make a pool
    # Messages a second from one sender number (carriers hold a long code to about 1); each
    # customer always hears from the same number of the pool. 0: no limit.
    sms_per_number_per_second: float = 1.0
    push_url: str = "http://127.0.0.1:6072"
    push_project: str = "order-notifier-dev"
    push_access_token: str = "dev-oauth-access-token"  # FCM's OAuth 2 bearer token
    apns_url: str = "http://127.0.0.1:6075"
    apns_team_id: str = "DEVTEAM123"
    apns_key_id: str = "DEVKEY1234"
    apns_key_file: Path = PROJECT_ROOT / "worker" / "dev" / "apns-dev-key.p8"  # a dev key, no secret
    apns_topic: str = "dev.order-notifier.app"  # the app's bundle id
    wechat_url: str = "http://127.0.0.1:6073"
    wechat_app_id: str = "wx00000000000000dev"
    wechat_app_secret: str = "dev-app-secret"
    wechat_template_id: str = "order-status-update"
    wechat_callback_token: str = "dev-wechat-callback-token"  # the account's server-settings token
    webhook_url: str = "http://127.0.0.1:6074/webhooks"
    webhook_secret: str = "whsec_b3JkZXItbm90aWZpZXItZGV2ZWxvcG1lbnQta2V5"

    provider_timeout_seconds: float = 10.0
    ledger_days: int = 7  # the senders' ledger: outcomes of the last this many days (worker.senders.ledger)
    retry_attempts: int = 8  # provider calls per notification before it fails for good
    retry_base_seconds: float = 15.0  # the first wait; doubled each time, up to the max
    retry_max_seconds: float = 600.0  # so 8 attempts span about 26 minutes, with jitter
    # Calls a second per provider (token buckets); unlisted providers are not limited.
    provider_rates: str = "twilio=10,fcm=500,wechat=100,smtp=200,webhook=200"
    breaker_failures: int = 20  # N: a provider's circuit opens when N of its last 2N calls failed, nine in ten
    breaker_seconds: float = 30.0  # how long it stays open before one trial call
    outbox: Path = Path("var/outbox.jsonl")
    sink_faults: str = ""  # the sinks' injected faults: "error=0.3,throttle=0.1,timeout=0.05"
    kafka_libs: Path = PROJECT_ROOT / ".cache" / "kafka-libs"
    max_event_bytes: int = 1024 * 1024
    tick_seconds: int = 1

    topics: Topics = field(default_factory=Topics)

    @property
    def kafka_servers(self) -> list[str]:
        return [s.strip() for s in self.kafka_bootstrap.split(",")]

    @property
    def rates(self) -> dict[str, float]:
        """Calls a second per provider, from ``provider_rates``."""
        pairs = (p.split("=") for p in self.provider_rates.split(",") if p.strip())
        return {name.strip(): float(rate) for name, rate in pairs}

    @property
    def sms_numbers(self) -> list[str]:
        return [n.strip() for n in self.sms_from.split(",") if n.strip()]

    @property
    def own_url(self) -> str:
        return (self.advertised_url or f"http://127.0.0.1:{self.web_port}").rstrip("/")

    @property
    def event_clock(self) -> bool:
        return self.clock == "event"


_CHOICES: dict[str, tuple[str, ...]] = {
    "clock": ("wall", "event"),
    "log_level": ("debug", "info", "warning", "error"),
    "log_format": ("json", "text"),
}
_URLS = ("sms_url", "push_url", "apns_url", "wechat_url", "webhook_url", "public_url")


def env_names() -> list[str]:
    """Every variable the program reads, for docs and the manifest cross-check."""
    names = [PREFIX + f.name.upper() for f in dataclasses.fields(Settings) if f.name != "topics"]
    names += [f"{PREFIX}TOPIC_{f.name.upper()}" for f in dataclasses.fields(Topics)]
    return names + [f"{PREFIX}ENV_FILE"]


def load(environ: Mapping[str, str] | None = None) -> Settings:
    env = dict(os.environ if environ is None else environ)
    file = env.get(f"{PREFIX}ENV_FILE")
    if file:
        env = {**_read_env_file(Path(file)), **env}
    defaults = Settings()
    values: dict[str, Any] = {}
    for f in dataclasses.fields(Settings):
        if f.name == "topics":
            continue
        name = PREFIX + f.name.upper()
        if name in env:
            values[f.name] = _parse(name, env[name], getattr(defaults, f.name))
    topics = {
        f.name: _non_empty(f"{PREFIX}TOPIC_{f.name.upper()}", env[f"{PREFIX}TOPIC_{f.name.upper()}"])
        for f in dataclasses.fields(Topics)
        if f"{PREFIX}TOPIC_{f.name.upper()}" in env
    }
    settings = Settings(**values, topics=Topics(**topics))
    _check(settings)
    return settings


def _parse(name: str, raw: str, default: Any) -> Any:
    raw = raw.strip()
    if isinstance(default, bool):
        if raw.lower() in ("1", "true", "yes", "on"):
            return True
        if raw.lower() in ("0", "false", "no", "off", ""):
            return False
        raise SettingsError(f"{name}={raw!r}: expected true or false")
    if isinstance(default, int):
        try:
            return int(raw)
        except ValueError:
            raise SettingsError(f"{name}={raw!r}: expected a whole number") from None
    if isinstance(default, float):
        try:
            value = float(raw)
        except ValueError:
            raise SettingsError(f"{name}={raw!r}: expected a number") from None
        if value < 0:
            raise SettingsError(f"{name}={raw!r}: expected a number not below 0")
        return value
    if isinstance(default, Path):
        return Path(_non_empty(name, raw))
    return raw


def _non_empty(name: str, raw: str) -> str:
    if not raw.strip():
        raise SettingsError(f"{name} is empty: give it a value or unset it")
    return raw.strip()


def _check(s: Settings) -> None:
    for key, allowed in _CHOICES.items():
        value = getattr(s, key)
        if value not in allowed:
            raise SettingsError(
                f"{PREFIX}{key.upper()}={value!r}: expected one of {', '.join(allowed)}"
            )
    if not 6 <= s.session_timeout_seconds <= 1800:
        raise SettingsError(f"{PREFIX}SESSION_TIMEOUT_SECONDS={s.session_timeout_seconds:g}: "
                            "expected 6 to 1800 (the broker's group session limits)")
    if s.stop_seconds <= 0:
        raise SettingsError(f"{PREFIX}STOP_SECONDS={s.stop_seconds:g}: expected more than 0")
    if s.tick_seconds < 1:
        raise SettingsError(f"{PREFIX}TICK_SECONDS={s.tick_seconds}: expected 1 or more")
    if s.rocksdb_memory_mb < 16:
        raise SettingsError(f"{PREFIX}ROCKSDB_MEMORY_MB={s.rocksdb_memory_mb}: expected 16 or more")
    if s.wakeups_held < 1:
        raise SettingsError(f"{PREFIX}WAKEUPS_HELD={s.wakeups_held}: expected 1 or more")
    for key in ("web_port", "senders_web_port", "sinks_web_port", "pages_web_port", "smtp_port"):
        port = getattr(s, key)
        if not 0 < port < 65536:
            raise SettingsError(f"{PREFIX}{key.upper()}={port}: expected a port from 1 to 65535")
    for key in (*_URLS, *(("email_events_url",) if s.email_events_url else ())):
        url = urlsplit(getattr(s, key))
        if url.scheme not in ("http", "https") or not url.hostname:
            raise SettingsError(
                f"{PREFIX}{key.upper()}={getattr(s, key)!r}: expected an http(s):// URL with a host"
            )
    for server in s.kafka_servers:
        host, _, port = server.rpartition(":")
        if not host or not port.isdigit():
            raise SettingsError(
                f"{PREFIX}KAFKA_BOOTSTRAP={s.kafka_bootstrap!r}: expected host:port[,host:port…]"
            )
    if not s.sms_numbers or not all(re.fullmatch(r"\+[1-9]\d{6,14}", n) for n in s.sms_numbers):
        raise SettingsError(f"{PREFIX}SMS_FROM={s.sms_from!r}: expected E.164 numbers (+8613800000000), "
                            "comma-separated for a pool")
    if len(s.link_secret) < 16:
        raise SettingsError(f"{PREFIX}LINK_SECRET: expected a secret of 16 characters or more")
    if s.advertised_url and urlsplit(s.advertised_url).scheme not in ("http", "https"):
        raise SettingsError(f"{PREFIX}ADVERTISED_URL={s.advertised_url!r}: expected an http(s):// URL")
    if not s.webhook_secret.startswith("whsec_"):
        raise SettingsError(f"{PREFIX}WEBHOOK_SECRET: expected a Standard Webhooks secret (whsec_…)")
    for key, least in (("partitions", 1), ("replication_factor", 1), ("standby_replicas", 0)):
        if getattr(s, key) < least:
            raise SettingsError(f"{PREFIX}{key.upper()}={getattr(s, key)}: expected {least} or more")
    if not s.apns_key_file.is_file():
        raise SettingsError(f"{PREFIX}APNS_KEY_FILE={str(s.apns_key_file)!r}: no such file "
                            "(the APNs signing key, .p8)")
    try:
        s.rates
    except ValueError:
        raise SettingsError(f"{PREFIX}PROVIDER_RATES={s.provider_rates!r}: expected "
                            "provider=calls_per_second[,provider=…]") from None
    if not s.store.startswith(("memory://", "rocksdb://")):
        raise SettingsError(f"{PREFIX}STORE={s.store!r}: expected memory:// or rocksdb://")
    if not s.rules.is_file():
        raise SettingsError(f"{PREFIX}RULES={str(s.rules)!r}: no such file")


def _read_env_file(path: Path) -> dict[str, str]:
    if not path.is_file():
        raise SettingsError(f"{PREFIX}ENV_FILE={str(path)!r}: no such file")
    values = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#") and "=" in line:
            key, _, value = line.partition("=")
            values[key.strip()] = value.strip().strip("'\"")
    return values
