"""The runtime's private parts: executor, scheduler, attempt pipeline, resume analysis, IO plumbing.

Public entry points live in :mod:`engine.runtime`; nothing here is a stable API.
"""
