"""The code passes its static checks: ruff's rules (``[tool.ruff.lint]`` in pyproject.toml)
everywhere, and mypy's strict mode on the pure core (``[tool.mypy]``)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def check(*command: str) -> None:
    done = subprocess.run([sys.executable, "-m", *command], cwd=ROOT, capture_output=True,
                          text=True, check=False)
    assert done.returncode == 0, done.stdout + done.stderr


def test_ruff_finds_nothing():
    check("ruff", "check", ".")


def test_the_domain_type_checks_strictly():
    check("mypy", "worker/domain")
