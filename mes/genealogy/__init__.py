"""Batch genealogy: where a lot came from, where it went, and what a recall must reach."""
