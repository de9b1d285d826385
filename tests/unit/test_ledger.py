"""The senders' ledger holds the outcomes a command can still meet again, and no more."""

from worker.senders.ledger import Ledger

DAY = 86400.0


def test_a_long_running_ledger_keeps_its_last_days_only():
    ledger = Ledger(days=7)
    for day in range(60):  # two months of a process that never restarts
        for n in range(100):
            ledger.add(f"ntf-{day}-{n}", day * DAY)
    assert len(ledger) == 8 * 100  # the last day and the seven full days before it
    assert "ntf-59-99" in ledger and "ntf-52-0" in ledger
    assert "ntf-51-99" not in ledger and "ntf-0-0" not in ledger


def test_an_outcome_written_again_is_kept_from_its_latest():
    ledger = Ledger(days=1)
    ledger.add("ntf-a", 0)
    ledger.add("ntf-b", 10)
    ledger.add("ntf-a", DAY)  # a later outcome of the same notification
    ledger.add("ntf-c", DAY + 11)
    assert "ntf-a" in ledger and "ntf-b" not in ledger and len(ledger) == 2
