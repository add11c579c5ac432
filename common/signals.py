"""The one stop event of a daemon: SIGTERM or SIGINT sets it; a second one exits at once."""

from __future__ import annotations

import asyncio
import logging
import os
import signal

logger = logging.getLogger(__name__)


def stop_on_signals(doing: str) -> asyncio.Event:
    """An event set by the first SIGTERM/SIGINT (logged as "SIGTERM: <doing> ..."); the second exits 1."""
    stop = asyncio.Event()

    def on_signal(signum: int) -> None:
        name = signal.Signals(signum).name
        if stop.is_set():
            logger.warning("second %s: exiting now", name)
            os._exit(1)
        logger.info("%s: %s (send it again to exit at once)", name, doing)
        stop.set()

    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, on_signal, signum)
    return stop
