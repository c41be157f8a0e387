"""Pixels that `--ignore-below` leaves out of exported labels, counted against all exported pixels."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class UnsurePixels:
    ignored: int = 0
    total: int = 0

    def plus(self, ignored: int, total: int) -> UnsurePixels:
        return UnsurePixels(self.ignored + ignored, self.total + total)

    @property
    def share(self) -> float:
        return self.ignored / self.total if self.total else 0.0

    def phrase(self, what: str) -> str:
        """ ", N pixels (S%) <what>" for a report line; empty when nothing was left out."""
        return f", {self.ignored} pixels ({self.share:.1%}) {what}" if self.ignored else ""
