"""How long to wait before trying again: the one backoff of the bridge.

Every retry loop uses it: the AMI listener's reconnect, the worker's job retries and its
wait for Redis, the hand-over to Redis, the ledger writes kept trying. It lives here, in
the lowest package both ``telephony/`` and ``worker/`` import, and touches no clock, no
socket and no global randomness of its own: callers pass ``now`` and may pass ``rng``.

    Backoff(first_s=5, max_s=600, jitter=0.25).delay(3)  # 20 s, +-25 %

- ``delay(attempt)``: the exponential delay before retry ``attempt`` (1 = after the first
  failure): ``first_s * factor ** (attempt - 1)``, capped at ``max_s``, scaled by a random
  factor in ``[1 - jitter, 1 + jitter]`` and never above ``max_s``. Pure: for callers that
  keep the count themselves (a job's attempts are in its ledger).
- ``next(now)`` / ``reset()``: for a loop that keeps retrying one thing. ``next`` is told
  of a failure and says how long to wait. With a fast phase (``fast_for_s > 0``) the
  failures of the first ``fast_for_s`` seconds are retried every ``fast_s`` (jittered
  alike): a link that dropped is usually back within seconds, and a PBX restart should not
  turn into a minute of silence; after that the exponential starts from ``first_s``.
  ``reset`` after a success: the next failure starts over, fast phase and all.

Why not redis-py's ``redis.backoff`` classes: none has a fast phase, their jitter draws
from the global ``random`` (not injectable), and ``ExponentialBackoff`` has no factor.
"""

from __future__ import annotations

import random


class Backoff:
    """Delays between attempts: exponential with jitter and a cap, optionally fast at first."""

    def __init__(
        self,
        first_s: float,
        max_s: float,
        *,
        factor: float = 2.0,
        jitter: float = 0.0,
        fast_s: float = 0.0,
        fast_for_s: float = 0.0,
        rng: random.Random | None = None,
    ) -> None:
        if not 0 < first_s <= max_s:
            raise ValueError(f"backoff: need 0 < first_s <= max_s, not {first_s:g}, {max_s:g}")
        if factor < 1 or not 0 <= jitter < 1:
            raise ValueError(
                f"backoff: need factor >= 1 and 0 <= jitter < 1, not {factor:g}, {jitter:g}"
            )
        if fast_for_s < 0 or (fast_for_s > 0 and fast_s <= 0):
            raise ValueError("backoff: a fast phase (fast_for_s > 0) needs fast_s > 0")
        self.first_s = first_s
        self.max_s = max_s
        self.factor = factor
        self.jitter = jitter
        self.fast_s = fast_s
        self.fast_for_s = fast_for_s
        self._rng = rng
        self._since: float | None = None  # when the current run of failures began
        self._slow = 0  # failures since the fast phase ended

    def __repr__(self) -> str:
        fast = f", fast {self.fast_s:g}s for {self.fast_for_s:g}s" if self.fast_for_s else ""
        return (
            f"Backoff({self.first_s:g}s x{self.factor:g} up to {self.max_s:g}s, "
            f"jitter {self.jitter:g}{fast})"
        )

    def delay(self, attempt: int, rng: random.Random | None = None) -> float:
        """The delay before retry ``attempt`` (1 = after the first failure); ``rng``
        overrides the one given at construction."""
        try:
            base = min(self.max_s, self.first_s * self.factor ** max(0, attempt - 1))
        except OverflowError:  # a PBX down for days: thousands of attempts
            base = self.max_s
        return self._jittered(base, rng)

    def next(self, now: float) -> float:
        """A failure at ``now`` (any monotonic clock): how long to wait before the next try."""
        if self._since is None:
            self._since = now
        if now - self._since < self.fast_for_s:
            return self._jittered(min(self.fast_s, self.max_s), None)
        self._slow += 1
        return self.delay(self._slow)

    def reset(self) -> None:
        """It worked: the next failure starts a new run (fast phase first, if any)."""
        self._since = None
        self._slow = 0

    def _jittered(self, base: float, rng: random.Random | None) -> float:
        if not self.jitter:
            return base
        r = (rng or self._rng or random).random()
        return min(self.max_s, base * (1 - self.jitter + 2 * self.jitter * r))
