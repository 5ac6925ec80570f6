"""Chunk maps: for each file with data, chunk index -> entry, and the RAM its chunks hold.

A map is a number (slots.py), not an object, so a file's data costs no Python
object of its own: most files have one chunk, chunk 0, and its entry sits in the
``first`` column beside the map's stored bytes, 16 bytes in all (a map object
with its entry and counter as int objects took about 130). A map with any other
chunk keeps all its entries in an ``array('Q')`` by chunk index, 0 for a hole:
8 bytes a chunk and one object a file, where a dict took about 330 bytes a file
and an int object of 32 a chunk (2.4 MB for the corpus's 4,800 larger files,
which stayed in CPython's small-object arenas after they were deleted). A map
whose entries are too sparse for an array (a chunk far past the last one) or
wider than 64 bits (a fill chunk's word is 64 bits itself) uses a dict instead.
A map goes back to the column when it is down to chunk 0 again.

An entry is never 0, so 0 in ``first`` (or in an array) means "no chunk": every
entry holds a length of at least one byte (chunkstore.py packs it). A free map
holds no chunk and the all-ones word as its stored bytes.
"""

from __future__ import annotations

import sys
from array import array

from .slots import Slots

_FREE_MAP = (1 << 64) - 1      # stored bytes of a free map
_WIDE = 1 << 64                # entries from here on do not fit the column
_GAP = 64                      # an array grows by at most its length plus this many holes


class ChunkMaps(Slots):
    """Every file's chunk map, by map number; ``stored[m]`` is the RAM map ``m``'s
    chunks hold (what ``st_blocks`` shows), 0 for number 0."""

    __slots__ = ("stored", "_first", "_more")

    def __init__(self) -> None:
        self._first = array("Q", [0])
        self.stored = array("Q", [0])
        self._more: dict[int, array | dict[int, int]] = {}
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
        if more is None:
            return None
        if type(more) is array:
            return (more[index] or None) if index < len(more) else None
        return more.get(index)

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
            more = self._more[m] = array("Q", [first[m]])
            first[m] = 0
        if type(more) is array:
            if entry < _WIDE and index <= 2 * len(more) + _GAP:
                if index >= len(more):
                    more.frombytes(bytes(8 * (index + 1 - len(more))))
                more[index] = entry
                return
            more = self._more[m] = {i: e for i, e in enumerate(more) if e}
        more[index] = entry

    def pop(self, m: int, index: int) -> int:
        """Remove chunk ``index``'s entry and return it (KeyError if there is none)."""
        first = self._first
        if index == 0 and first[m]:
            entry = first[m]
            first[m] = 0
            return entry
        more = self._more[m]
        if type(more) is array:
            entry = more[index] if index < len(more) else 0
            if not entry:
                raise KeyError(index)
            more[index] = 0
            while more and not more[-1]:
                del more[-1]
            if len(more) <= 1:
                del self._more[m]
                first[m] = more[0] if more else 0
            return entry
        entry = more.pop(index)
        if not more:
            del self._more[m]
        elif len(more) == 1 and more.get(0, _WIDE) < _WIDE:
            del self._more[m]
            first[m] = more[0]
        return entry

    def indexes(self, m: int) -> list[int]:
        more = self._more.get(m)
        if more is None:
            return [0] if self._first[m] else []
        if type(more) is array:
            return [i for i, entry in enumerate(more) if entry]
        return list(more)

    def entries(self, m: int) -> list[int]:
        more = self._more.get(m)
        if more is None:
            return [self._first[m]] if self._first[m] else []
        if type(more) is array:
            return [entry for entry in more if entry]
        return list(more.values())

    def chunks(self, m: int) -> int:
        """How many chunks map ``m`` holds."""
        more = self._more.get(m)
        if more is None:
            return int(self._first[m] != 0)
        return len(more) - more.count(0) if type(more) is array else len(more)

    def memory(self) -> int:
        """Bytes held by the columns and by the arrays and dicts (with their entries'
        int objects) of maps with more than chunk 0."""
        return super().memory() + sys.getsizeof(self._more) + sum(
            sys.getsizeof(more) + (0 if type(more) is array else sum(map(sys.getsizeof, more.values())))
            for more in self._more.values())
