"""A directory's entries: names to inode numbers, with stable readdir cookies.

Each new entry takes the next value of the directory's cookie counter. A listing
resumes after the last cookie it reported: entries created meanwhile get higher
cookies (they may or may not be seen), entries removed are never reported again,
none is repeated. Cookies 1 and 2 are ``.`` and ``..``.

Packed for memory, with no object per entry: entries sit in cookie order as rows
of four words in one array (cookie, inode, name hash, where the name starts and
its length), the names end to end in one bytearray, and an open-addressing index
(an array of entry positions, at most half full, probed linearly from the name's
hash) finds a name. An entry costs about 40 bytes plus its name, where a dict
slot, a name object and an int took about 150; a directory costs three buffers
(one array per field took six, about 500 bytes of the interpreter's small-object
arenas for a small directory). A removed entry stays as a tombstone (inode 0)
until most entries are; the rows and the index are then rebuilt, so that ``rm -r``
stays linear and a directory that shrinks gives its memory back.
"""

from __future__ import annotations

import sys
from array import array
from typing import Iterator

FIRST_COOKIE = 3
_PRUNE_SLACK = 64
_EMPTY = -1                    # index slot never used since the index was built
_GONE = -2                     # index slot of a removed entry: probes go on past it
_MIN_INDEX = 8
_ROW = 4                       # words per entry: cookie, inode, hash, name start << 8 | length
                               # (written as 4 where a lookup runs: a literal is faster)
_HASH_MASK = (1 << 64) - 1     # hashes are kept as unsigned words


class Directory:
    """The entries of one directory and its parent's inode number."""

    __slots__ = ("_rows", "_names", "_index", "_used", "_live", "_next_cookie", "parent")

    def __init__(self, parent: int) -> None:
        self._rows = array("Q")
        self._names = bytearray()
        self._index = array("i", [_EMPTY]) * _MIN_INDEX
        self._used = 0                   # index slots not _EMPTY
        self._live = 0
        self._next_cookie = FIRST_COOKIE
        self.parent = parent

    def __len__(self) -> int:
        return self._live

    def __contains__(self, name: bytes) -> bool:
        return self._slot(name, hash(name) & _HASH_MASK) >= 0

    def _slot(self, name: bytes, h: int) -> int:
        """The index slot of the entry named ``name`` (hash ``h``), or -1."""
        index, rows, names = self._index, self._rows, self._names
        mask = len(index) - 1
        i = h & mask
        while True:
            pos = index[i]
            if pos == _EMPTY:
                return -1
            if pos >= 0 and rows[4 * pos + 2] == h:
                where = rows[4 * pos + 3]
                start = where >> 8
                if names[start:start + (where & 0xFF)] == name:
                    return i
            i = (i + 1) & mask

    def _slot_of(self, name: bytes) -> int:
        """The index slot of the entry named ``name``; KeyError if there is none."""
        i = self._slot(name, hash(name) & _HASH_MASK)
        if i < 0:
            raise KeyError(name)
        return i

    def get(self, name: bytes) -> int | None:
        """The inode number of ``name``, or None."""
        i = self._slot(name, hash(name) & _HASH_MASK)
        return None if i < 0 else self._rows[4 * self._index[i] + 1]

    def add(self, name: bytes, ino: int) -> None:
        """Name ``ino``; ``name`` must not be in the directory (names are at most 255 bytes)."""
        if len(name) > 0xFF:
            raise ValueError(f"name of {len(name)} bytes")
        h = hash(name) & _HASH_MASK
        rows, names = self._rows, self._names
        pos = len(rows) >> 2
        rows.extend((self._next_cookie, ino, h, len(names) << 8 | len(name)))
        self._next_cookie += 1
        names += name
        self._live += 1
        if 2 * (self._used + 1) > len(self._index):
            self._build_index()
        else:
            self._place(pos, h)

    def _place(self, pos: int, h: int) -> None:
        index = self._index
        mask = len(index) - 1
        i = h & mask
        while index[i] >= 0:
            i = (i + 1) & mask
        if index[i] == _EMPTY:
            self._used += 1
        index[i] = pos

    def _build_index(self) -> None:
        """A new index for the live entries, a quarter full at most."""
        size = _MIN_INDEX
        while size < 4 * self._live:
            size <<= 1
        self._index = array("i", [_EMPTY]) * size
        self._used = 0
        rows = self._rows
        hashes = rows[2::_ROW]
        for pos, ino in enumerate(rows[1::_ROW]):
            if ino:
                self._place(pos, hashes[pos])

    def remove(self, name: bytes) -> int:
        """Remove ``name`` (KeyError if absent); return its inode number."""
        i = self._slot_of(name)
        at = 4 * self._index[i] + 1
        self._index[i] = _GONE
        ino = self._rows[at]
        self._rows[at] = 0
        self._live -= 1
        if len(self._rows) > 4 * (2 * self._live + _PRUNE_SLACK):
            self._prune()
        return ino

    def _prune(self) -> None:
        """Drop the tombstones: the rows, the names and the index are built anew."""
        rows, names = self._rows, self._names
        kept, packed = [], bytearray()
        for at in [at for at in range(0, len(rows), _ROW) if rows[at + 1]]:
            where = rows[at + 3]
            start = where >> 8
            kept += (rows[at], rows[at + 1], rows[at + 2], len(packed) << 8 | (where & 0xFF))
            packed += names[start:start + (where & 0xFF)]
        self._rows, self._names = array("Q", kept), packed
        self._build_index()

    def replace(self, name: bytes, ino: int) -> None:
        """Point an existing name at another inode, keeping its cookie."""
        self._rows[_ROW * self._index[self._slot_of(name)] + 1] = ino

    def _first_after(self, cookie: int) -> int:
        """The position of the first entry with a cookie above ``cookie`` (rows are in
        cookie order)."""
        rows = self._rows
        lo, hi = 0, len(rows) // _ROW
        while lo < hi:
            mid = (lo + hi) // 2
            if rows[_ROW * mid] <= cookie:
                lo = mid + 1
            else:
                hi = mid
        return lo

    def entries_after(self, cookie: int) -> Iterator[tuple[bytes, int, int]]:
        """(name, inode, cookie) of entries with cookies above ``cookie``, in order."""
        rows, names = self._rows, self._names
        for at in range(_ROW * self._first_after(cookie), len(rows), _ROW):
            ino = rows[at + 1]
            if ino:
                where = rows[at + 3]
                start = where >> 8
                yield bytes(names[start:start + (where & 0xFF)]), ino, rows[at]

    def memory(self) -> int:
        """Bytes of Python memory held: the object, its arrays and its names."""
        return sys.getsizeof(self) + sum(map(sys.getsizeof, (self._rows, self._names, self._index)))
