"""Open-loop load: requests go out at a target arrival rate, whatever the server does.

Closed-loop users (the next request on the last answer) set latency by their number (Little's
law) and slow down with a slow server, hiding how late its answers are. Here the arrivals are a
schedule — evenly spaced, or Poisson — that the users of a fixed pool take turns to serve: a user
takes the next due time, sleeps until it, sends. Each request is timed from the moment it was
due, so when every user is busy (the server, or the generator, fell behind) the wait before
sending is counted in its latency, not hidden. The schedule's own lateness (how long after its
due time each request went out) is kept as the generator's lag.

Locust stays the engine: the users are the closed-loop ones (users.py), their timing and answer
checks unchanged; only the wait before each request, and its addition to the reported time, are
this module's.
"""

from __future__ import annotations

import bisect
import math
import random
import threading
import time

import gevent

# Greenlet-local under Locust's gevent patching: the lag of the request this user is sending.
_sending = threading.local()


class Arrivals:
    """A shared schedule of due times at `rate` per second; users take the next one in turn.

    The schedule is drawn ahead of the users when asked how many requests fell due in a window
    (`due_between`), so the offered load of a window is what the schedule asked for, whether or not
    the users kept up: with Poisson arrivals a 4 s window at 20/s holds 80 ± 9, and achieved ÷
    offered is measured against that count, not against the nominal rate."""

    def __init__(self, rate: float, poisson: bool = False, seed: int = 0):
        if rate <= 0:
            raise ValueError(f"an arrival rate must be positive, not {rate}")
        self.rate, self.poisson = rate, poisson
        self._random = random.Random(seed)
        self._due = [time.monotonic()]  # every due time drawn so far, in order
        self._taken = 0  # how many of them users have taken
        self.lags: list[float] = []  # seconds each request went out after it was due, while recording
        self.recording = False
        # Requests sent, and finished (answered or failed; `finish` is a listener of Locust's request event):
        # their difference is what is in flight, which a window's close cuts through.
        self.sent = self.finished = 0

    def _gap(self) -> float:
        return self._random.expovariate(self.rate) if self.poisson else 1.0 / self.rate

    def _draw_through(self, index: int = -1, until: float = -math.inf) -> None:
        while len(self._due) <= index or self._due[-1] < until:
            self._due.append(self._due[-1] + self._gap())

    def wait(self) -> float:
        """Sleep until this user's next due time; returns how late it is (seconds), to add to its latency."""
        self._draw_through(index=self._taken)
        due = self._due[self._taken]
        self._taken += 1
        delay = due - time.monotonic()
        if delay > 0:
            gevent.sleep(delay)
        lag = max(0.0, time.monotonic() - due)
        self.sent += 1
        if self.recording:
            self.lags.append(lag)
        _sending.lag = lag
        return lag

    def finish(self, **_) -> None:
        self.finished += 1

    @property
    def in_flight(self) -> int:
        return self.sent - self.finished

    def due_between(self, start: float, end: float) -> int:
        """How many requests the schedule made due in [start, end) (time.monotonic() seconds)."""
        self._draw_through(until=end)
        return bisect.bisect_left(self._due, end) - bisect.bisect_left(self._due, start)


def sending_lag() -> float:
    """The lag of the request the current user is sending (0 in closed-loop load)."""
    return getattr(_sending, "lag", 0.0)


def percentile_ms(values: list[float], q: float) -> float:
    """The q-quantile of `values` (seconds) in milliseconds; 0 for none."""
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)] * 1000  # nearest rank
