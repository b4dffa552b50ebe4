"""Waiting for an event in a test: a condition polled until it holds, with a deadline that
only bounds a failure (generous: a loaded machine is slow, not wrong). Tests wait for events
(a marker file, a status, a process gone), never for time to pass."""
from __future__ import annotations

import time


def wait_for(condition, timeout: float = 180, what: str = "condition", interval: float = 0.3):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:g}s waiting for {what}")
