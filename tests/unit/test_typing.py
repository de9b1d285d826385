"""The pure core type-checks under mypy's strict mode (``[tool.mypy]`` in pyproject.toml)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_the_domain_type_checks_strictly():
    checked = subprocess.run([sys.executable, "-m", "mypy", "worker/domain"], cwd=ROOT,
                             capture_output=True, text=True, check=False)
    assert checked.returncode == 0, checked.stdout + checked.stderr
