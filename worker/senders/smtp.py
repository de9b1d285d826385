"""Email over SMTP: multipart/alternative, plain text beside HTML."""

from __future__ import annotations

import ssl
from email.message import EmailMessage
from email.utils import format_datetime
from datetime import datetime
from typing import Any

import aiosmtplib

from worker.senders import Delivery, PermanentFailure, RetryLater
from worker.settings import Settings


def build_message(command: dict[str, Any], sender: str, public_url: str) -> EmailMessage:
    content = command["content"]
    message = EmailMessage()
    message["From"] = sender
    message["To"] = command["recipient"]["email"]
    message["Subject"] = content.get("subject", "")
    message["Date"] = format_datetime(datetime.fromisoformat(command["created_at"]))
    # Stable per notification, so a provider or client can recognise a repeat.
    message["Message-ID"] = f"<{command['notification_id']}@order-notifier>"
    message["X-Notification-Id"] = command["notification_id"]
    message["X-Notification-Kind"] = command["kind"]
    if command.get("priority") == "marketing":
        unsubscribe = f"{public_url.rstrip('/')}/unsubscribe?n={command['notification_id']}"
        message["List-Unsubscribe"] = f"<{unsubscribe}>"
        message["List-Unsubscribe-Post"] = "List-Unsubscribe=One-Click"
    message.set_content(content["text"])
    if content.get("html"):
        message.add_alternative(content["html"], subtype="html")
    return message


class EmailSender:
    channel = "email"
    provider = "smtp"

    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    async def send(self, command: dict[str, Any]) -> Delivery:
        s = self.settings
        message = build_message(command, s.email_from, s.public_url)
        try:
            await aiosmtplib.send(
                message,
                hostname=s.smtp_host,
                port=s.smtp_port,
                username=s.smtp_username or None,
                password=s.smtp_password or None,
                start_tls=s.smtp_starttls,
                tls_context=ssl.create_default_context() if s.smtp_starttls else None,
                timeout=10,
            )
        except aiosmtplib.SMTPRecipientsRefused as exc:
            raise PermanentFailure("invalid_recipient", str(exc)) from None
        except aiosmtplib.SMTPResponseException as exc:
            if 500 <= exc.code < 600:
                raise PermanentFailure("provider_rejected", f"{exc.code}") from None
            raise RetryLater(f"smtp {exc.code}") from None
        except (aiosmtplib.SMTPException, OSError) as exc:
            raise RetryLater(type(exc).__name__) from None
        return Delivery(provider_message_id=message["Message-ID"])

    async def close(self) -> None:
        return None
