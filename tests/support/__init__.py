"""Test helpers shared by several test packages (private brokers and the like)."""
