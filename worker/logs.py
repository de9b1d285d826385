"""Structured logs: one JSON object a line. Never log an email, phone, name or token."""

from __future__ import annotations

import logging
import sys
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import orjson


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key in ("order_id", "notification_id", "channel", "kind", "repeated"):
            if hasattr(record, key):
                entry[key] = getattr(record, key)
        if record.exc_info:
            entry["error"] = self.formatException(record.exc_info)
        return orjson.dumps(entry).decode()


class TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        repeated = getattr(record, "repeated", 0)
        return f"{line} (and {repeated} more like it held back)" if repeated else line


class Repeats(logging.Filter):
    """The libraries' same complaint once every ``window`` seconds. With the broker gone,
    aiokafka logs every failed attempt to reach it: some 180 lines a second, which bury
    what else is said. The first of a message (its logger and wording before the values go
    in) goes through; the same message again within the window is held back, and the next
    one through says how many were (``repeated``). Our own loggers' lines all go through:
    each says something of its own (a notification, an order)."""

    LIBRARIES = ("aiokafka", "faust", "mode", "kafka")
    KEPT = 1024  # messages remembered; a library's text written out before logging is new every time

    def __init__(self, window: float = 10.0, clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__()
        self.window, self.clock = window, clock
        self._last: dict[tuple[str, str], tuple[float, int]] = {}  # when let through, held since
        self._lock = threading.Lock()

    def filter(self, record: logging.LogRecord) -> bool:
        if not record.name.startswith(self.LIBRARIES):
            return True
        key, now = (record.name, str(record.msg)), self.clock()
        with self._lock:
            last = self._last.get(key)
            if last is not None and now - last[0] < self.window:
                self._last[key] = (last[0], last[1] + 1)
                return False
            if len(self._last) >= self.KEPT:  # forget those whose window has passed
                self._last = {k: v for k, v in self._last.items() if now - v[0] < self.window}
            self._last[key] = (now, 0)
        if last is not None and last[1]:
            record.repeated = last[1]
        return True


def logging_config(level: str, fmt: str) -> dict[str, Any]:
    """A dictConfig for our loggers and Faust's, on stderr."""
    formatter = {"()": JsonFormatter} if fmt == "json" else {
        "()": TextFormatter, "format": "%(asctime)s %(levelname)s %(name)s %(message)s"}
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"default": formatter},
        "filters": {"repeats": {"()": Repeats}},
        "handlers": {"stderr": {"class": "logging.StreamHandler", "stream": sys.stderr,
                                "formatter": "default", "filters": ["repeats"]}},
        "root": {"level": level.upper(), "handlers": ["stderr"]},
        "loggers": {
            # Faust and aiokafka are chatty at info; their warnings still show. httpx logs
            # every request's URL at info, and an APNs URL holds the device token (PII).
            "faust": {"level": "WARNING"}, "aiokafka": {"level": "WARNING"},
            "mode": {"level": "WARNING"}, "httpx": {"level": "WARNING"},
            "httpcore": {"level": "WARNING"}, "hpack": {"level": "WARNING"},
        },
    }


def setup(level: str, fmt: str) -> None:
    import logging.config

    logging.config.dictConfig(logging_config(level, fmt))
