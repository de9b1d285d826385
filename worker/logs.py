"""Structured logs: one JSON object a line. Never log an email, phone, name or token."""

from __future__ import annotations

import logging
import sys
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
        for key in ("order_id", "notification_id", "channel", "kind"):
            if hasattr(record, key):
                entry[key] = getattr(record, key)
        if record.exc_info:
            entry["error"] = self.formatException(record.exc_info)
        return orjson.dumps(entry).decode()


def logging_config(level: str, fmt: str) -> dict[str, Any]:
    """A dictConfig for our loggers and Faust's, on stderr."""
    formatter = {"()": JsonFormatter} if fmt == "json" else {
        "format": "%(asctime)s %(levelname)s %(name)s %(message)s"}
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"default": formatter},
        "handlers": {"stderr": {"class": "logging.StreamHandler", "stream": sys.stderr,
                                "formatter": "default"}},
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
