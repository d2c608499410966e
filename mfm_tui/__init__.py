"""mfm-tui: the terminal UI and the ``mfm`` command line over the mfm engine."""

__version__ = "0.1.0"
