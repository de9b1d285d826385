"""``python -m worker [COMMAND]``: the ``notifier`` CLI; with no command, the worker."""

import sys

from worker.cli import main

sys.exit(main(sys.argv[1:] or ["worker"]))
