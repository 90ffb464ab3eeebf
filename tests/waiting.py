"""The tests' one polling wait (importable from every test: pytest puts ``tests/`` on sys.path for its conftest)."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any


def wait_for(pred: Callable[[], Any], timeout: float = 10.0, period: float = 0.02) -> Any:
    """Poll ``pred`` every ``period`` s until it returns something truthy (returned) or ``timeout`` s pass.

    After the timeout ``pred`` is asked once more and its (falsy, or late) answer returned, so
    ``assert wait_for(...)`` fails only when the condition still does not hold.
    """
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        v = pred()
        if v:
            return v
        time.sleep(period)
    return pred()
