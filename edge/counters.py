"""Counters that several threads add to, and the one policy for logging a repeating problem."""

from __future__ import annotations

import logging
import threading


class Counter:
    """A whole number that capture, inference, publishing and paho's network thread may all add
    to: `+=` on a plain attribute is a read and a write, and two threads can lose an increment."""

    __slots__ = ("_lock", "_value")

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._value = 0

    def add(self, n: int = 1) -> int:
        """Add n; returns the new total."""
        with self._lock:
            self._value += n
            return self._value

    def reset(self) -> None:
        with self._lock:
            self._value = 0

    @property
    def value(self) -> int:
        return self._value


class ThrottledLog:
    """Logs the first `first` occurrences of a problem, then every `every`-th, each with the count
    so far. A misbehaving PLC, a broken engine or a broker that refuses the login repeats the same
    line thousands of times an hour; the journal must stay readable and still say how often."""

    def __init__(self, logger: logging.Logger, level: int, first: int = 5, every: int = 100, count: Counter | None = None):
        """count: the counter to add to (a stats counter), so the problem is counted once."""
        self.logger = logger
        self.level = level
        self.first = first
        self.every = every
        self.count = count if count is not None else Counter()

    def __call__(self, message: str, *args: object, exc_info: bool = False) -> int:
        """Count one occurrence and log it if it is due; returns the count."""
        n = self.count.add()
        if n <= self.first or n % self.every == 0:
            self.logger.log(self.level, message + " (%d so far)", *args, n, exc_info=exc_info and n == 1)
        return n

    def reset(self) -> None:
        """Start counting afresh (a new outage is worth saying again)."""
        self.count.reset()
