"""The command line stops on bad arguments with one clear line, before any work starts."""

import pytest

from worker import cli


@pytest.mark.parametrize("active", ["0", "1000,-5", "many", ""])
def test_bench_memory_counts_must_be_positive(active, capsys):
    with pytest.raises(SystemExit) as stop:
        cli.main(["bench", "worker", "--active", active])
    assert stop.value.code == 2
    [line] = [x for x in capsys.readouterr().err.splitlines() if "error:" in x]
    assert "--active" in line and "expected positive counts" in line
