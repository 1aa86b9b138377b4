"""Each organization's share of this process's delivery slots. Pure.

An organization whose receivers answer slowly (a 2xx after 14 s is a success, not a
failure, so the failing lane does not catch it) would otherwise fill every slot with its
attempts, and every other organization's deliveries would wait behind them. Claims give
an organization at most `per_owner` attempts in flight in this process."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

# (owners with attempts in flight, the room each has left, the room of an owner not listed)
Room = tuple[list[str], list[int], int]
NO_LIMIT: Room = ([], [], 2**31 - 1)


@dataclass
class Shares:
    per_owner: int
    in_flight: Counter[str] = field(default_factory=Counter)
    # slots claims under way may fill, with deliveries of any owner: a second claim
    # beside one must count them against everyone's room, or the two together could
    # give an owner up to twice its share
    claiming: int = 0

    def started(self, owner: str) -> None:
        self.in_flight[owner] += 1

    def ended(self, owner: str) -> None:
        self.in_flight[owner] -= 1
        if self.in_flight[owner] <= 0:
            del self.in_flight[owner]

    def room(self) -> Room:
        """How many more attempts each owner may start now, claims under way counted."""
        owners = list(self.in_flight)
        return (owners, [max(0, self.per_owner - self.in_flight[o] - self.claiming)
                         for o in owners], max(0, self.per_owner - self.claiming))
