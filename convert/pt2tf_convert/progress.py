"""One line per step, with its duration: long work shows where it is."""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def step(what: str) -> Iterator[None]:
    """Print `what`, run the block, then print how long it took (or that it failed)."""
    print(f"  → {what} …", file=sys.stderr, flush=True)
    started = time.monotonic()
    try:
        yield
    except BaseException:
        print(f"  ✗ {what} failed after {time.monotonic() - started:.1f} s", file=sys.stderr, flush=True)
        raise
    print(f"  ✓ {what} ({time.monotonic() - started:.1f} s)", file=sys.stderr, flush=True)
