"""Integration fixtures: a real Kafka broker per session, real processes per test."""

from __future__ import annotations

import os
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from worker import runtime
from worker.broker import EmbeddedBroker, free_port, port_open
from worker.settings import PROJECT_ROOT
from worker.sinks import read_outbox

pytestmark = pytest.mark.integration


@pytest.fixture(scope="session")
def kafka(tmp_path_factory) -> Iterator[str]:
    broker = EmbeddedBroker(PROJECT_ROOT / ".cache" / "kafka-libs",
                            tmp_path_factory.mktemp("kafka"))
    yield broker.start()
    broker.stop()


class Stack:
    """Settings for one test: its own topics, app id and ports, so tests never share state."""

    def __init__(self, bootstrap: str, workdir: Path) -> None:
        run = uuid.uuid4().hex[:8]
        self.workdir = workdir
        self.outbox = workdir / "outbox.jsonl"
        self.topics = {name: f"t{run}.{name}" for name in (
            "orders", "tracking", "preferences", "engagement", "sent", "alerts", "dlq", "intents",
            "lanes", "lane_figures", "engagement_figures", "addresses", "inbox", "retry", "attempts",
            "short_links")}
        self.dispatch_prefix = f"t{run}.dispatch"
        self.web_port = free_port()
        self.env = {
            **os.environ,
            "NOTIFIER_KAFKA_BOOTSTRAP": bootstrap,
            "NOTIFIER_APP_ID": f"notifier-{run}",
            "NOTIFIER_OUTBOX": str(self.outbox),
            "NOTIFIER_DATA_DIR": str(workdir / "data"),
            "NOTIFIER_WEB_PORT": str(self.web_port),
            # Links in notifications and the providers' callbacks lead to this test's worker.
            "NOTIFIER_PUBLIC_URL": f"http://127.0.0.1:{self.web_port}",
            "NOTIFIER_SENDERS_WEB_PORT": str(free_port()),
            "NOTIFIER_SINKS_WEB_PORT": str(free_port()),
            "NOTIFIER_SMTP_PORT": str(free_port()),
            "NOTIFIER_SMS_URL": f"http://127.0.0.1:{free_port()}",
            "NOTIFIER_PUSH_URL": f"http://127.0.0.1:{free_port()}",
            "NOTIFIER_APNS_URL": f"http://127.0.0.1:{free_port()}",
            "NOTIFIER_WECHAT_URL": f"http://127.0.0.1:{free_port()}",
            "NOTIFIER_WEBHOOK_URL": f"http://127.0.0.1:{free_port()}/webhooks",
            "NOTIFIER_EMAIL_EVENTS_URL": f"http://127.0.0.1:{free_port()}",
            "NOTIFIER_TOPIC_DISPATCH_PREFIX": self.dispatch_prefix,
            # Tests send many SMS from one number; the per-number limit has its unit tests.
            "NOTIFIER_SMS_PER_NUMBER_PER_SECOND": "0",
            # Tests kill workers: their partitions move after 10 s, not a minute.
            "NOTIFIER_SESSION_TIMEOUT_SECONDS": "10",
            **{f"NOTIFIER_TOPIC_{k.upper()}": v for k, v in self.topics.items()},
        }
        self.processes: dict[str, subprocess.Popen[bytes]] = {}

    def start(self, command: str, name: str = "", **env: str) -> subprocess.Popen[bytes]:
        """Start ``notifier <command>``; ``name`` tells a second process of one command apart."""
        name = name or command
        process = runtime.spawn(command, self.workdir / f"{name}.log", append=True,
                                env={**self.env, **env}, cwd=self.workdir)
        self.processes[name] = process
        return process

    def without_quiet_hours(self) -> None:
        """The default rules with no quiet hours: under the wall clock, customers whose night
        it is now would rightly wait for morning."""
        rules = self.workdir / "rules.toml"
        rules.write_text((PROJECT_ROOT / "worker" / "rules.toml").read_text().replace(
            'quiet_hours = { start = "22:00", end = "08:00" }',
            'quiet_hours = { start = "00:00", end = "00:00" }'))
        self.env["NOTIFIER_RULES"] = str(rules)

    def log(self, command: str) -> str:
        return (self.workdir / f"{command}.log").read_text(errors="replace")

    def noticed(self, command: str) -> str:
        """The log's warnings and errors: what a failing test shows, where an assertion's
        message would cut the whole log short."""
        return "\n".join(line for line in self.log(command).splitlines()
                         if '"level":"info"' not in line and '"level":"debug"' not in line)

    def out_of_turn(self) -> list[str]:
        """The workers' log lines of an order event handled before its order was created:
        records handled out of offset order (a partition's events run strictly in turn)."""
        return [line for log in self.workdir.glob("worker*.log")
                for line in log.read_text(errors="replace").splitlines()
                if "for an order never created here" in line]

    def wait_ready(self, timeout: float = 90) -> None:
        """Wait until sinks listen, the senders joined, and the worker's /readyz says ready."""
        import urllib.request

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for name, process in self.processes.items():
                assert process.poll() is None, f"{name} exited:\n{self.log(name)[-3000:]}"
            ready = True
            if "sinks" in self.processes:
                ready &= port_open(int(self.env["NOTIFIER_SMTP_PORT"]))
            if "senders" in self.processes:
                ready &= "senders ready" in self.log("senders")
            if "worker" in self.processes:
                try:
                    with urllib.request.urlopen(f"http://127.0.0.1:{self.web_port}/readyz",
                                                timeout=2) as answer:
                        ready &= answer.status == 200
                except OSError:
                    ready = False
            if ready:
                return
            time.sleep(0.5)
        raise TimeoutError("stack not ready:\n" + "\n".join(
            f"--- {n}\n{self.log(n)[-2000:]}" for n in self.processes))

    def outbox_entries(self) -> list[dict]:
        return read_outbox(self.outbox)

    def stop(self) -> None:
        for process in self.processes.values():
            if process.poll() is None:
                process.terminate()
        for process in self.processes.values():
            try:
                process.wait(20)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


@pytest.fixture
def stack(kafka, tmp_path) -> Iterator[Stack]:
    s = Stack(kafka, tmp_path)
    yield s
    s.stop()


def wait_for(predicate, timeout: float, interval: float = 0.5):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    return predicate()


def promtool_check_metrics(port: int) -> str:
    """What ``promtool check metrics`` finds wrong in a live scrape ('' when nothing)."""
    import shutil
    import urllib.request

    if shutil.which("promtool") is None:
        pytest.fail("promtool is missing: `make tools` installs Debian's prometheus package")
    body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read()
    assert b"notifier_build_info" in body
    checked = subprocess.run(["promtool", "check", "metrics"], input=body, capture_output=True)
    return (checked.stdout + checked.stderr).decode() + ("" if checked.returncode == 0 else " (failed)")
