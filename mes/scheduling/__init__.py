"""Finite-capacity scheduling of work orders (CP-SAT), rescheduling, calendars, changeovers."""
