"""``python -m engine.workers …``: the worker command line that spawned workers and ``mfm worker`` run (see
:mod:`engine.workers`)."""

import sys

from engine.workers.main import main

if __name__ == "__main__":
    sys.exit(main(guard_output=True))
