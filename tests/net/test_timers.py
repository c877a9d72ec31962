"""The timer wheel on a real uvloop loop: never early, at most a tick late, disarm and re-arm."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import uvloop

from portway.net.timers import TimerWheel


class Item:
    """A Timed that records when it fired and runs an optional hook."""

    def __init__(self, name: str, fired: list[tuple[str, float]], hook: Callable[[], None] | None = None):
        self.name = name
        self.wheel_slot: int | None = None
        self.fired = fired
        self.hook = hook

    def on_deadline(self, now: float) -> None:
        self.fired.append((self.name, now))
        if self.hook is not None:
            self.hook()


def _run(main: Callable[[], object]) -> None:
    uvloop.run(main())  # type: ignore[arg-type]


def test_fires_in_order_never_early_at_most_one_tick_late() -> None:
    async def main() -> None:
        wheel = TimerWheel(asyncio.get_running_loop(), resolution=0.02)
        fired: list[tuple[str, float]] = []
        start = time.monotonic()
        done = asyncio.get_running_loop().create_future()
        items = [Item(n, fired) for n in ("c", "a", "b")]
        delays = {"a": 0.05, "b": 0.10, "c": 0.15}
        items[0].hook = lambda: done.set_result(None)
        for item in items:
            wheel.arm(item, delays[item.name])
        await asyncio.wait_for(done, 5)
        assert [name for name, _ in fired] == ["a", "b", "c"]
        for name, at in fired:
            assert at - start >= delays[name]
            assert at - start < delays[name] + 0.02 + 0.05  # a tick, plus scheduling slack
        assert wheel.armed == 0

    _run(main)


def test_disarm_and_rearm() -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        wheel = TimerWheel(loop, resolution=0.02)
        fired: list[tuple[str, float]] = []
        done = loop.create_future()
        gone = Item("gone", fired)
        moved = Item("moved", fired, hook=lambda: done.set_result(None))
        wheel.arm(gone, 0.05)
        wheel.arm(moved, 0.05)
        wheel.disarm(gone)
        start = time.monotonic()
        wheel.arm(moved, 0.12)  # re-arming moves the deadline
        await asyncio.wait_for(done, 5)
        assert [n for n, _ in fired] == ["moved"]
        assert fired[0][1] - start >= 0.12
        assert gone.wheel_slot is None and moved.wheel_slot is None

    _run(main)


def test_callback_may_disarm_a_neighbour_and_errors_are_contained() -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        wheel = TimerWheel(loop, resolution=0.05)
        fired: list[tuple[str, float]] = []
        done = loop.create_future()
        items: dict[str, Item] = {}

        def disarm_all_others() -> None:
            for other in items.values():
                wheel.disarm(other)

        def boom() -> None:
            raise RuntimeError("bug in one handler")

        items["a"] = Item("a", fired, hook=disarm_all_others)
        items["b"] = Item("b", fired, hook=disarm_all_others)
        bad = Item("bad", fired, hook=boom)
        last = Item("last", fired, hook=lambda: done.set_result(None))
        for item in (*items.values(), bad):
            wheel.arm(item, 0.01)  # all in one bucket
        wheel.arm(last, 0.2)
        await asyncio.wait_for(done, 5)
        names = [n for n, _ in fired]
        assert names[-1] == "last"  # the failing handler did not stop the wheel
        assert "bad" in names
        assert not ({"a", "b"} <= set(names))  # whichever ran first disarmed the other

    _run(main)
