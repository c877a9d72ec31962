"""Fixtures shared by the integration tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.integration.backends import LoopThread


@pytest.fixture
def lt() -> Iterator[LoopThread]:
    """An asyncio loop in a thread that serves the test's backends."""
    loop_thread = LoopThread()
    yield loop_thread
    loop_thread.close()
