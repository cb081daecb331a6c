"""Exponential backoff after failures, reset by a success (pure: times are passed in)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class Backoff:
    """When to try again after ``failures`` failures in a row: ``initial`` seconds, doubling up to ``maximum``."""

    initial: float
    maximum: float
    failures: int = 0
    retry_at: float = 0.0

    def failed(self, now: float) -> float:
        """Record a failure at ``now``; return the delay until the next attempt."""
        self.failures += 1
        delay = min(self.maximum, self.initial * 2 ** (self.failures - 1))
        self.retry_at = now + delay
        return delay

    def succeeded(self) -> None:
        """Record a success: the next failure waits ``initial`` again."""
        self.failures = 0
        self.retry_at = 0.0

    def ready(self, now: float) -> bool:
        """True once the delay after the last failure has passed."""
        return now >= self.retry_at
