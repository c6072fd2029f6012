"""Dead-letter handling, and the breaker that keeps a bad deploy from emptying the topic into it."""

from __future__ import annotations

from collections import deque


class PoisonBreakerTripped(RuntimeError):
    """Most recent events were poison: stop and let a human look, instead of dead-lettering all."""


class PoisonBreaker:
    """Counts poison over the last ``window`` messages. Pure; ``record`` raises when tripped."""

    def __init__(self, window: int, max_ratio: float) -> None:
        self._flags: deque[bool] = deque(maxlen=window)
        self._poison = 0
        self._max_ratio = max_ratio

    def record(self, poison: bool) -> None:
        if not poison and not self._poison:
            self._flags.append(False)  # no poison in the window: nothing to count, it cannot trip
            return
        if len(self._flags) == self._flags.maxlen and self._flags[0]:
            self._poison -= 1
        self._flags.append(poison)
        self._poison += poison
        # Judge only a full window: three bad messages at start-up are not a trend.
        if len(self._flags) == self._flags.maxlen and self._poison / len(self._flags) > self._max_ratio:
            raise PoisonBreakerTripped(
                f"{self._poison} of the last {len(self._flags)} events were undecodable; "
                "stopping instead of dead-lettering the topic"
            )
