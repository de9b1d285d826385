"""`notifier bench domain` runs the decision code on the worker benchmark's stream: the
messages it renders are the ones the stream calls for, and it says how fast."""

import re

from worker import bench_domain
from worker.settings import load


def test_the_stream_is_decided_and_rendered_and_rates_printed(capsys, tmp_path):
    page = tmp_path / "performance.md"
    assert bench_domain.run(load({"NOTIFIER_DATA_DIR": str(tmp_path)}), 2000, page) == 0
    out = capsys.readouterr().out
    assert "notifier bench domain --events 2000" in page.read_text()  # the figures, for the docs
    counts = re.search(r"2,000 events, ([\d,]+) intents, ([\d,]+) messages rendered", out)
    assert counts, out
    intents, rendered = (int(n.replace(",", "")) for n in counts.groups())
    assert 0 < rendered <= intents * 2  # some intents are held or suppressed, some go two ways
    for stage in ("(1) order and lane stages", "(2) customer stage and rendering", "both"):
        assert re.search(rf"{re.escape(stage)}: .*[\d,]+ events/s", out), out
    assert re.search(r"second half alone, with its lanes learned, [\d,]+ events/s", out), out
