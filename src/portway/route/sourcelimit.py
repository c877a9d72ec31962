"""Per-source limits on failed gateway handshakes: slow a source down, then refuse it a while.

A gateway answers anyone who connects, so a source that keeps sending bad tokens (guessing,
probing for an oracle, or just broken) must cost it more than it costs the gateway. Each source
address has a token bucket (:class:`~portway.config.model.SourceLimit`):

Rule 1. A failed handshake takes a token; tokens come back at ``rate`` per second, up to
        ``burst``. Successful handshakes cost nothing.
Rule 2. Below half a bucket, the source's answers are delayed (:data:`SLOW_DELAY` seconds).
Rule 3. With no token left the source is refused for ``ban`` seconds: its connections are
        closed on accept, before anything is read.
Rule 4. Memory is bounded: past :data:`MAX_SOURCES` tracked addresses the oldest entries are
        dropped (a dropped source starts again with a full bucket).

The state lives in each worker (sources are spread over workers by the kernel, so a source is
limited per worker; the bound on what it gets away with is ``workers × burst``).
"""

from __future__ import annotations

from portway.config.model import SourceLimit

#: Seconds an answer to a source is held back once its bucket is below half.
SLOW_DELAY = 1.0
#: Source addresses tracked per listener and worker.
MAX_SOURCES = 100_000


class SourceLimiter:
    """Token buckets by source address for one listener in one worker."""

    __slots__ = ("_buckets", "limit")

    def __init__(self, limit: SourceLimit) -> None:
        self.limit = limit
        #: address -> [tokens, time of the last update, banned until]
        self._buckets: dict[str, list[float]] = {}

    def _bucket(self, ip: str, now: float) -> list[float]:
        bucket = self._buckets.get(ip)
        if bucket is None:
            if len(self._buckets) >= MAX_SOURCES:
                for old in list(self._buckets)[: MAX_SOURCES // 10]:
                    del self._buckets[old]
            bucket = self._buckets[ip] = [float(self.limit.burst), now, 0.0]
            return bucket
        tokens = bucket[0] + (now - bucket[1]) * self.limit.rate
        bucket[0] = min(float(self.limit.burst), tokens)
        bucket[1] = now
        return bucket

    def refused_for(self, ip: str, now: float) -> float:
        """Seconds ``ip`` is still refused (Rule 3); 0 when it may go on."""
        bucket = self._buckets.get(ip)
        if bucket is None or bucket[2] <= now:
            return 0.0
        return bucket[2] - now

    def failed(self, ip: str, now: float) -> float:
        """Count a failed handshake from ``ip``; the delay to put before answering it."""
        bucket = self._bucket(ip, now)
        bucket[0] -= 1.0
        if bucket[0] < 1.0:
            bucket[2] = now + self.limit.ban
            bucket[0] = 0.0
        return SLOW_DELAY if bucket[0] < self.limit.burst / 2 else 0.0

    def delay(self, ip: str, now: float) -> float:
        """The delay before answering ``ip`` even when this handshake does not fail (Rule 2)."""
        bucket = self._buckets.get(ip)
        if bucket is None:
            return 0.0
        return SLOW_DELAY if self._bucket(ip, now)[0] < self.limit.burst / 2 else 0.0

    def __len__(self) -> int:
        return len(self._buckets)
