"""Widgets of the mfm app (one per module)."""
