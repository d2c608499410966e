"""Screens of the mfm app: runs (home), run, artifact, help and dialogs."""
