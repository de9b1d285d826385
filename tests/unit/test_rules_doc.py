from worker import rules_doc
from worker.settings import Settings
from worker.stream import load_rules


def test_notifications_page_matches_the_rules_file():
    expected = rules_doc.markdown(load_rules(Settings()))
    assert rules_doc.PAGE.read_text() == expected, (
        "docs/notifications.md is stale: run `python -m worker.rules_doc`")
