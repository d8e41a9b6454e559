"""Audit trail (21 CFR 11.10(e)): append-only, hash-chained, written in the change's transaction."""
