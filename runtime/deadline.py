"""A deadline as an object: how long is left, and whether it has passed."""

from __future__ import annotations

import time
from dataclasses import dataclass


@dataclass(frozen=True)
class Deadline:
    at: float | None  # time.monotonic() value; None = no deadline

    @classmethod
    def after(cls, seconds: float | None) -> "Deadline":
        return cls(None if seconds is None else time.monotonic() + seconds)

    @classmethod
    def never(cls) -> "Deadline":
        return cls(None)

    def remaining(self) -> float | None:
        """Seconds left (never negative), or None when there is no deadline."""
        if self.at is None:
            return None
        return max(0.0, self.at - time.monotonic())

    def expired(self) -> bool:
        return self.at is not None and time.monotonic() >= self.at

    def sooner(self, seconds: float | None) -> "Deadline":
        """The earlier of this deadline and `seconds` from now."""
        other = Deadline.after(seconds)
        if other.at is None:
            return self
        if self.at is None:
            return other
        return self if self.at <= other.at else other
