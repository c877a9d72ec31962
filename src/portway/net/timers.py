"""Coarse deadlines for many connections on one loop timer: connect and idle timeouts.

A loop timer per connection costs an allocation and a libuv timer to arm and another call to
cancel, and it stays in memory for as long as the connection lives (an idle connection with a
one-hour timeout holds one for an hour). Here a deadline is an entry in a dict, bucketed by
``resolution``:

Rule 1: arming and disarming are dict operations; the wheel keeps one loop timer, for its
earliest bucket.

Rule 2: deadlines are rounded *up* to the next bucket: a timeout fires up to one
``resolution`` late, never early.

Rule 3: an item is told with ``on_deadline(now)`` and is disarmed by then; it may arm itself
again (an idle timer whose connection saw traffic moves its deadline on).

Time is ``time.monotonic()``, the clock the relay stamps activity with.
"""

from __future__ import annotations

import asyncio
import heapq
import logging
import math
import time
from typing import Protocol

log = logging.getLogger("portway.timers")


class Timed(Protocol):
    """Something with a deadline on a :class:`TimerWheel`."""

    wheel_slot: int | None
    """The bucket the item is armed in; ``None`` when not armed (set by the wheel)."""

    def on_deadline(self, now: float) -> None:
        """The deadline passed (the item is no longer armed)."""


class TimerWheel:
    """Buckets of deadlines ``resolution`` seconds wide, fired by one loop timer."""

    __slots__ = (
        "_buckets",
        "_firing",
        "_firing_slot",
        "_handle",
        "_heap",
        "_loop",
        "_scheduled",
        "resolution",
    )

    def __init__(self, loop: asyncio.AbstractEventLoop, resolution: float = 0.05) -> None:
        self._loop = loop
        self.resolution = resolution
        self._buckets: dict[int, dict[Timed, None]] = {}
        self._heap: list[int] = []
        self._handle: asyncio.TimerHandle | None = None
        self._scheduled: int | None = None
        self._firing: dict[Timed, None] = {}
        self._firing_slot: int | None = None

    def arm(self, item: Timed, delay: float) -> None:
        """Call ``item.on_deadline`` once ``delay`` seconds have passed (re-arming moves it)."""
        if item.wheel_slot is not None:
            self.disarm(item)
        slot = math.ceil((time.monotonic() + delay) / self.resolution)
        bucket = self._buckets.get(slot)
        if bucket is None:
            bucket = self._buckets[slot] = {}
            heapq.heappush(self._heap, slot)
            if self._scheduled is None or slot < self._scheduled:
                self._schedule(slot)
        bucket[item] = None
        item.wheel_slot = slot

    def disarm(self, item: Timed) -> None:
        """Forget ``item``'s deadline, if armed."""
        slot = item.wheel_slot
        if slot is None:
            return
        item.wheel_slot = None
        if slot == self._firing_slot:  # disarmed by another item's callback in the same bucket
            self._firing.pop(item, None)
            return
        bucket = self._buckets.get(slot)
        if bucket is not None:
            bucket.pop(item, None)
            if not bucket:
                del self._buckets[slot]  # its heap entry is skipped when reached

    @property
    def armed(self) -> int:
        """Number of armed items."""
        return sum(len(b) for b in self._buckets.values())

    def _schedule(self, slot: int) -> None:
        if self._handle is not None:
            self._handle.cancel()
        self._scheduled = slot
        delay = max(0.0, slot * self.resolution - time.monotonic())
        self._handle = self._loop.call_later(delay, self._fire)

    def _fire(self) -> None:
        self._handle = None
        self._scheduled = None
        now = time.monotonic()
        current = math.floor(now / self.resolution)
        heap = self._heap
        while heap and heap[0] <= current:
            slot = heapq.heappop(heap)
            bucket = self._buckets.pop(slot, None)
            if not bucket:
                continue
            self._firing, self._firing_slot = bucket, slot
            try:
                while bucket:
                    item, _ = bucket.popitem()
                    item.wheel_slot = None
                    try:
                        item.on_deadline(now)
                    except Exception:  # one item's bug must not lose the others' deadlines
                        log.exception("timeout handler of %r failed", item)
            finally:
                self._firing, self._firing_slot = {}, None
        while heap and heap[0] not in self._buckets:
            heapq.heappop(heap)
        if heap:
            self._schedule(heap[0])

    def close(self) -> None:
        """Cancel the loop timer and forget every deadline."""
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
        self._buckets.clear()
        self._heap.clear()
        self._scheduled = None
