"""Running a coroutine from a sync test, wherever the test runs."""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor


def run_async(coroutine):
    """asyncio.run in its own thread: the browser tests leave an event loop on the main thread, where
    asyncio.run and async_to_sync refuse to start another."""
    with ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, coroutine).result()
