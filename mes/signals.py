"""Stopping a long-running command (``mes ingest``, ``mes background``) on SIGTERM or Ctrl-C."""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import Iterator

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


@contextlib.contextmanager
def stop_requested() -> Iterator[asyncio.Event]:
    """An event set by SIGTERM or SIGINT while the block runs (on the running loop); the
    default handlers are back afterwards. Enter it before starting anything, so that a signal
    during start-up also ends in a clean stop."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in STOP_SIGNALS:
        loop.add_signal_handler(sig, stop.set)
    try:
        yield stop
    finally:
        for sig in STOP_SIGNALS:
            loop.remove_signal_handler(sig)
