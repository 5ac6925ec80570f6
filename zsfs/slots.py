"""Numbered records held as columns, one array (or list) per field.

Why columns: an object per record costs a header, a slot per field and an int
object per field, several times the fields' own bytes, and every object of a
record that lives as long as a file pins CPython's small-object arenas. A record
here costs the bytes of its fields, and the fields of record ``n`` are
``column[n]``. The inode table and the chunk maps are kept this way.

Numbers start at 1 (slot 0 is never used, so 0 can mean "none") and are reused
once free, so the columns stay as long as the most records held at once. Once at
most half the slots are used, the run of free slots at the end is cut off the
columns whenever the last slot is freed, so a table that shrinks gives its memory
back whatever order its records go in. The free list is not searched at a cut: a
number at or past the end is stale, dropped when popped, and the list is rebuilt
only once stale numbers outnumber the live ones.
"""

from __future__ import annotations

import sys
from array import array
from typing import Any, MutableSequence

_FREE_LIST_SLACK = 1024        # stale free numbers tolerated beyond twice the live ones


class Slots:
    """Columns of record fields indexed by record number, and the numbers' bookkeeping.

    ``marker`` is the column that tells a free slot: it holds ``unused`` there,
    which must also be its blank value. Every column's free slots hold its blank.
    """

    __slots__ = ("count", "_free", "_columns", "_blanks", "_marker", "_unused")

    def __init__(self, columns: tuple[MutableSequence[Any], ...], blanks: tuple[Any, ...],
                 marker: array, unused: int) -> None:
        self.count = 0                                    # records in use
        self._free = array("Q")           # free numbers, last freed on top; some stale
        self._columns = columns
        self._blanks = blanks
        self._marker = marker
        self._unused = unused

    def __len__(self) -> int:
        """Slots, used or free, including slot 0: every record number is below it."""
        return len(self._marker)

    def _take(self) -> int:
        """A free number (its fields blank), the most recently freed first."""
        free, slots = self._free, len(self._marker)
        self.count += 1
        while free:
            n = free.pop()
            if n < slots:
                return n
        for column, blank in zip(self._columns, self._blanks):
            column.append(blank)
        return slots

    def _give_back(self, n: int) -> None:
        """Blank record ``n``'s fields and make its number free."""
        for column, blank in zip(self._columns, self._blanks):
            column[n] = blank
        self.count -= 1
        self._free.append(n)
        marker = self._marker
        if marker[-1] == self._unused and 2 * self.count <= len(marker):
            self._cut_tail()

    def _cut_tail(self) -> None:
        """Cut the run of free slots at the end of the columns (amortized: each slot is
        cut once per time it was appended); rebuild the free list if mostly stale."""
        marker, unused = self._marker, self._unused
        end = len(marker)
        while end > 1 and marker[end - 1] == unused:
            end -= 1
        for column in self._columns:
            del column[end:]
        if len(self._free) > 2 * (end - 1 - self.count) + _FREE_LIST_SLACK:
            self._free = array("Q", [n for n in self._free if n < end])

    def memory(self) -> int:
        """Bytes held by the columns and the free list (their buffers, as allocated)."""
        return sum(map(sys.getsizeof, self._columns)) + sys.getsizeof(self._free)
