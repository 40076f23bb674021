"""Bounded per-page journals: entries of one kind by navigation, the oldest dropped first.

A `Journal` keeps the current navigation and the `KEPT_NAVIGATIONS` - 1 before it, at most
``max_entries`` entries and ``max_bytes`` of accounted size; a `Budget` bounds what all the
journals of one browser hold together.
"""

from collections import OrderedDict, deque
from collections.abc import Callable
from typing import Any, Generic, Protocol, TypeVar

KEPT_NAVIGATIONS = 3


class Entry(Protocol):
    """What a journal keeps: anything with an ``id`` (given here, through ``numbered``) and a
    ``cost`` (its size)."""

    id: int
    cost: int

    def numbered(self, entry_id: int) -> None: ...


EntryT = TypeVar("EntryT", bound=Entry)


def _keep_no_index(entry: object) -> None:
    pass


class _Navigation(Generic[EntryT]):
    __slots__ = ("entries", "dropped")

    def __init__(self) -> None:
        self.entries: OrderedDict[int, EntryT] = OrderedDict()
        self.dropped = 0


class Journal(Generic[EntryT]):
    """Entries of one kind for one page, by navigation, bounded in number and size.

    Entries carry ``id`` (assigned here) and ``cost`` (their accounted size). ``on_drop``
    is told about every entry that leaves, so indexes of it can forget it.
    """

    def __init__(
        self,
        max_entries: int,
        max_bytes: int,
        on_drop: Callable[[EntryT], None] = _keep_no_index,
        budget: "Budget | None" = None,
    ):
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self._on_drop = on_drop
        self._budget = budget
        self._navigations: deque[_Navigation[EntryT]] = deque([_Navigation()])
        self._count = 0
        self._cost = 0
        self._next_id = 1
        if budget is not None:
            budget.journals.add(self)

    def __len__(self) -> int:
        return self._count

    @property
    def cost(self) -> int:
        """The accounted size of the entries kept."""
        return self._cost

    def add(self, entry: EntryT) -> EntryT:
        """Give ``entry`` the next id and keep it in the current navigation."""
        entry.numbered(self._next_id)
        self._next_id += 1
        self._navigations[-1].entries[entry.id] = entry
        self._count += 1
        self._account(entry.cost)
        self._trim()
        return entry

    def charge(self, entry: EntryT, extra: int) -> None:
        """``entry`` (kept) grew by ``extra``."""
        entry.cost += extra
        self._account(extra)
        self._trim()

    def _account(self, cost: int) -> None:
        self._cost += cost
        if self._budget is not None:
            self._budget.cost += cost

    def navigated(self, keep: Callable[[EntryT], bool] | None = None) -> None:
        """A new navigation starts; entries of the last one matching ``keep`` move into it."""
        last = self._navigations[-1]
        current: _Navigation[EntryT] = _Navigation()
        if keep is not None:
            for entry_id in [i for i, e in last.entries.items() if keep(e)]:
                current.entries[entry_id] = last.entries.pop(entry_id)
        self._navigations.append(current)
        while len(self._navigations) > KEPT_NAVIGATIONS:
            for entry in self._navigations.popleft().entries.values():
                self._forget(entry)

    def _trim(self) -> None:
        while self._count > self.max_entries or (self._cost > self.max_bytes and self._count > 1):
            self.drop_oldest()
        if self._budget is not None:
            self._budget.trim()

    def drop_oldest(self) -> None:
        """Drop the oldest entry kept, for room (it counts as dropped)."""
        navigation = next(n for n in self._navigations if n.entries)
        _, entry = navigation.entries.popitem(last=False)
        navigation.dropped += 1
        self._forget(entry)

    def _forget(self, entry: EntryT) -> None:
        self._count -= 1
        self._account(-entry.cost)
        self._on_drop(entry)

    def release(self) -> None:
        """The page is gone: its entries no longer count against the browser's budget."""
        if self._budget is not None:
            self._budget.journals.discard(self)
            self._budget.cost -= self._cost
            self._budget = None

    def entries(self, preserved: bool = False) -> list[EntryT]:
        """The current navigation's entries (all kept navigations' with ``preserved``), oldest first."""
        if not preserved:
            return list(self._navigations[-1].entries.values())
        return [entry for navigation in self._navigations for entry in navigation.entries.values()]

    def dropped(self, preserved: bool = False) -> int:
        """How many entries of the current (or every kept) navigation were dropped for room."""
        if not preserved:
            return self._navigations[-1].dropped
        return sum(navigation.dropped for navigation in self._navigations)

    def get(self, entry_id: int) -> EntryT | None:
        """The kept entry with this id, or None."""
        for navigation in self._navigations:
            entry = navigation.entries.get(entry_id)
            if entry is not None:
                return entry
        return None

    def limits(self) -> str:
        """The bounds, for messages that explain a drop."""
        return f"a page keeps at most {self.max_entries} entries and {self.max_bytes / 2**20:g} MiB"

    def issued(self, entry_id: int) -> bool:
        """Whether this id was ever given out (so a missing entry was dropped, not invented)."""
        return 0 < entry_id < self._next_id


class Budget:
    """What the collected pages of one browser hold together, bounded by ``max_bytes``."""

    def __init__(self, max_bytes: int):
        self.max_bytes = max_bytes
        self.cost = 0
        self.journals: set[Journal[Any]] = set()

    def trim(self) -> None:
        """Over the bound: the journal holding most drops its oldest entries (never a
        journal's last one, as within a page)."""
        while self.cost > self.max_bytes:
            fullest = max((j for j in self.journals if len(j) > 1), key=lambda j: j.cost, default=None)
            if fullest is None:
                return
            fullest.drop_oldest()
