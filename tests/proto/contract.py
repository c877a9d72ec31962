"""Checks of the three-way parser contract shared by every sans-IO parser in ``portway.proto``."""

from __future__ import annotations

from collections.abc import Callable

from portway.proto import NEED_DATA


def assert_decision_is_final(outcome: Callable[[bytes], object], data: bytes) -> object:
    """Every prefix of ``data`` gives ``NEED_DATA`` or the outcome of the whole; return that.

    ``outcome`` is the test's wrapper that turns a parse into a comparable value (the
    result, or the error class), failing on anything outside the contract.
    """
    whole = outcome(data)
    for n in range(len(data)):
        prefix = outcome(data[:n])
        assert prefix is NEED_DATA or prefix == whole, (n, prefix, whole)
    return whole


def mutate(raw: bytes, index: int, value: int, cut: int) -> bytes:
    """``raw`` cut to ``cut`` bytes (0: whole) with one byte replaced, for corruption tests."""
    data = bytearray(raw[:cut] if cut else raw)
    if data:
        data[index % len(data)] = value
    return bytes(data)
