"""Throttling of failed authentication: a client that presents `limit` invalid keys within `window_s`
gets 429 with `Retry-After` until the oldest of those failures leaves the window.

Keys hold 256 random bits, so guessing is hopeless anyway; the throttle keeps a scanner from costing the
database a query per guess. It counts per client address in this API process (each replica counts on its
own) and keeps a bounded number of clients.
"""

from __future__ import annotations

import math
import threading
import time
from collections import OrderedDict, deque

MAX_CLIENTS = 10_000


class FailedAuthThrottle:
    def __init__(self, limit: int, window_s: float):
        self.limit, self.window_s = limit, window_s
        self._failures: OrderedDict[str, deque[float]] = OrderedDict()
        self._lock = threading.Lock()

    def retry_after(self, client: str) -> int | None:
        """Seconds the client must wait before its next attempt, or None when it may try now."""
        now = time.monotonic()
        with self._lock:
            failures = self._failures.get(client)
            if failures is None:
                return None
            while failures and failures[0] <= now - self.window_s:
                failures.popleft()
            if len(failures) < self.limit:
                return None
            return max(1, math.ceil(failures[0] + self.window_s - now))

    def record_failure(self, client: str) -> None:
        with self._lock:
            failures = self._failures.pop(client, None) or deque(maxlen=self.limit)
            failures.append(time.monotonic())
            self._failures[client] = failures  # most recent last
            while len(self._failures) > MAX_CLIENTS:
                self._failures.popitem(last=False)

    def clear(self, client: str) -> None:
        """A valid key from this client: its earlier failures were typos, not a scan."""
        with self._lock:
            self._failures.pop(client, None)
