"""Wait for what a test can observe, never for a fixed time.

A fixed sleep is either too short on a loaded machine (a flaky failure) or too long everywhere (a
slow suite), and it does not say what the test is waiting for. :func:`until` polls a probe and
returns as soon as the condition holds, failing with what it waited for and the last value seen.
Synchronous code uses :func:`devstack.stack.process.wait_until`, the same idea.
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

T = TypeVar("T")


async def until(probe: Callable[[], T | Awaitable[T]], ok: Callable[[T], bool] = bool, *,
                what: str, timeout_s: float = 10.0, interval_s: float = 0.02) -> T:
    """Poll ``probe()`` (a coroutine function or a cheap synchronous one; wrap blocking calls in
    ``asyncio.to_thread``) until ``ok`` holds for its value; return that value.

    Raises TimeoutError naming ``what`` and the last value after ``timeout_s``: the bound is a
    guard against a hang, far above the time the condition normally takes.
    """
    deadline = time.monotonic() + timeout_s
    while True:
        value = probe()
        if inspect.isawaitable(value):
            value = await value
        if ok(value):
            return value
        if time.monotonic() >= deadline:
            raise TimeoutError(f"{what}: not reached within {timeout_s:g} s (last value {value!r})")
        await asyncio.sleep(interval_s)
