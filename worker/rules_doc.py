"""Writes docs/notifications.md from the rules file: ``python -m worker.rules_doc``.

tests/unit/test_rules_doc.py fails when the page and the rules drift apart.
"""

from __future__ import annotations

import sys
from pathlib import Path

from worker.domain.rules import Rules
from worker.settings import PROJECT_ROOT, Settings
from worker.stream import load_rules

PAGE = PROJECT_ROOT / "docs" / "notifications.md"


def markdown(rules: Rules) -> str:
    lines = [
        "# Notifications",
        "",
        "Generated from `worker/rules.toml` by `python -m worker.rules_doc`; do not edit by hand.",
        "Point `NOTIFIER_RULES` at a copy of the rules file to change any of this.",
        "",
        f"Default channel order (when the customer chose none): {', '.join(rules.channel_order)}.",
        f"Language: the customer's locale (zh-CN, zh-TW, en catalogs), else `{rules.fallback_locale}`.",
        "",
        "| kind | on | priority | channels | trigger | timing | expires after |",
        "|---|---|---|---|---|---|---|",
    ]
    for rule in rules.kinds.values():
        lines.append(
            f"| `{rule.kind}` | {'yes' if rule.enabled else 'no'} | {rule.priority} | "
            f"{', '.join(rule.channels)} | {rule.trigger} | {rule.timing} | "
            f"{rule.expires_after_hours:g} h |"
        )
    lines += [
        "",
        "Channel choice: the first channel, in the customer's order, that the kind allows, the",
        "customer opted into (`customer.preferences_updated`), and has a recipient (email address,",
        "E.164 phone, push token, WeChat openid). None left: `notification.suppressed` with reason",
        "`opted_out` or `no_reachable_channel`.",
        "",
        "Ids: `notification_id` is a hash of the order, the kind and the occasion, so a replay or a",
        "redelivery never yields a second notification.",
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    text = markdown(load_rules(Settings()))
    if sys.argv[1:] == ["--check"]:
        sys.exit(0 if PAGE.read_text() == text else 1)
    Path(PAGE).write_text(text)
    print(f"wrote {PAGE}")
