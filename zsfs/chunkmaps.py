"""Chunk maps: for each file with data, chunk index -> entry, and the RAM its chunks hold.

A map is a number (slots.py), not an object, so a file's data costs no Python
object of its own: most files have one chunk, chunk 0, and its entry sits in the
``first`` column beside the map's stored bytes, 16 bytes in all (a map object
with its entry and counter as int objects took about 130). A map with any other
chunk, or an entry wider than 64 bits (a fill chunk's word is 64 bits itself),
keeps all its entries in a dict instead, and goes back to the column when it is
down to chunk 0 again.

An entry is never 0, so 0 in ``first`` means "no chunk 0": every entry holds a
length of at least one byte (chunkstore.py packs it). A free map holds no chunk
and the all-ones word as its stored bytes.
"""

from __future__ import annotations

import sys
from array import array

from .slots import Slots

_FREE_MAP = (1 << 64) - 1      # stored bytes of a free map
_WIDE = 1 << 64                # entries from here on do not fit the column


class ChunkMaps(Slots):
    """Every file's chunk map, by map number; ``stored[m]`` is the RAM map ``m``'s
    chunks hold (what ``st_blocks`` shows), 0 for number 0."""

    __slots__ = ("stored", "_first", "_more")

    def __init__(self) -> None:
        self._first = array("Q", [0])
        self.stored = array("Q", [0])
        self._more: dict[int, dict[int, int]] = {}
        super().__init__((self._first, self.stored), (0, _FREE_MAP), self.stored, _FREE_MAP)

    def __contains__(self, m: int) -> bool:
        return 0 < m < len(self.stored) and self.stored[m] != _FREE_MAP

    def new(self) -> int:
        """A new, empty map's number."""
        m = self._take()
        self.stored[m] = 0
        return m

    def free(self, m: int) -> None:
        """Give back map ``m``'s number with its entries (the caller freed what they held)."""
        self._more.pop(m, None)
        self._give_back(m)

    def get(self, m: int, index: int) -> int | None:
        if index == 0:
            entry = self._first[m]
            if entry:
                return entry
        more = self._more.get(m)
        return None if more is None else more.get(index)

    def lookup(self, m: int, index: int) -> int | None:
        """``get`` for a number held across an ``await``: the map may be gone since
        (None) or be another file's by now."""
        return self.get(m, index) if m < len(self._first) else None

    def set(self, m: int, index: int, entry: int) -> None:
        more = self._more.get(m)
        if more is None:
            first = self._first
            if index == 0 and entry < _WIDE:
                first[m] = entry
                return
            more = self._more[m] = {0: first[m]} if first[m] else {}
            first[m] = 0
        more[index] = entry

    def pop(self, m: int, index: int) -> int:
        """Remove chunk ``index``'s entry and return it (KeyError if there is none)."""
        if index == 0 and self._first[m]:
            entry = self._first[m]
            self._first[m] = 0
            return entry
        more = self._more[m]
        entry = more.pop(index)
        if not more:
            del self._more[m]
        elif len(more) == 1 and more.get(0, _WIDE) < _WIDE:
            del self._more[m]
            self._first[m] = more[0]
        return entry

    def indexes(self, m: int) -> list[int]:
        more = self._more.get(m)
        if more is not None:
            return list(more)
        return [0] if self._first[m] else []

    def entries(self, m: int) -> list[int]:
        more = self._more.get(m)
        if more is not None:
            return list(more.values())
        return [self._first[m]] if self._first[m] else []

    def chunks(self, m: int) -> int:
        """How many chunks map ``m`` holds."""
        more = self._more.get(m)
        return len(more) if more is not None else int(self._first[m] != 0)

    def memory(self) -> int:
        """Bytes held by the columns, the dicts of maps with more than chunk 0 and
        their entries' int objects."""
        return super().memory() + sys.getsizeof(self._more) + sum(
            sys.getsizeof(more) + sum(map(sys.getsizeof, more.values()))
            for more in self._more.values())
