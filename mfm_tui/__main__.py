"""``python -m mfm_tui`` is the ``mfm`` command."""

from mfm_tui.cli import main

if __name__ == "__main__":
    main()
