"""A directory's entries: names to inode numbers, with stable readdir cookies.

Each new entry takes the next value of the directory's cookie counter. A listing
resumes after the last cookie it reported: entries created meanwhile get higher
cookies (they may or may not be seen), entries removed are never reported again,
none is repeated. Cookies 1 and 2 are ``.`` and ``..``.

Packed for memory, with no object per entry: entries sit in cookie order in
parallel arrays (cookie, inode, name hash, where the name starts), the names end
to end in one bytearray, and an open-addressing index (an array of entry
positions, at most half full, probed linearly from the name's hash) finds a name.
An entry costs about 45 bytes plus its name, where a dict slot, a name object and
an int took about 150. A removed entry stays as a tombstone (inode 0) until most
entries are; the arrays and the index are then rebuilt, so that ``rm -r`` stays
linear and a directory that shrinks gives its memory back.
"""

from __future__ import annotations

import bisect
import sys
from array import array
from typing import Iterator

FIRST_COOKIE = 3
_PRUNE_SLACK = 64
_EMPTY = -1                    # index slot never used since the index was built
_GONE = -2                     # index slot of a removed entry: probes go on past it
_MIN_INDEX = 8


class Directory:
    """The entries of one directory and its parent's inode number."""

    __slots__ = ("_cookies", "_inos", "_hashes", "_starts", "_names", "_index", "_used",
                 "_live", "_next_cookie", "parent")

    def __init__(self, parent: int) -> None:
        self._cookies = array("Q")
        self._inos = array("Q")          # 0: a removed entry
        self._hashes = array("q")
        self._starts = array("Q", [0])   # entry i's name is _names[_starts[i]:_starts[i + 1]]
        self._names = bytearray()
        self._index = array("i", [_EMPTY]) * _MIN_INDEX
        self._used = 0                   # index slots not _EMPTY
        self._live = 0
        self._next_cookie = FIRST_COOKIE
        self.parent = parent

    def __len__(self) -> int:
        return self._live

    def __contains__(self, name: bytes) -> bool:
        return self._slot(name, hash(name)) >= 0

    def _slot(self, name: bytes, h: int) -> int:
        """The index slot of the entry named ``name`` (hash ``h``), or -1."""
        index, hashes, starts, names = self._index, self._hashes, self._starts, self._names
        mask = len(index) - 1
        i = h & mask
        while True:
            pos = index[i]
            if pos == _EMPTY:
                return -1
            if pos >= 0 and hashes[pos] == h and names[starts[pos]:starts[pos + 1]] == name:
                return i
            i = (i + 1) & mask

    def _slot_of(self, name: bytes) -> int:
        """The index slot of the entry named ``name``; KeyError if there is none."""
        i = self._slot(name, hash(name))
        if i < 0:
            raise KeyError(name)
        return i

    def get(self, name: bytes) -> int | None:
        """The inode number of ``name``, or None."""
        i = self._slot(name, hash(name))
        return None if i < 0 else self._inos[self._index[i]]

    def add(self, name: bytes, ino: int) -> None:
        """Name ``ino``; ``name`` must not be in the directory."""
        h = hash(name)
        pos = len(self._cookies)
        self._cookies.append(self._next_cookie)
        self._next_cookie += 1
        self._inos.append(ino)
        self._hashes.append(h)
        self._names += name
        self._starts.append(len(self._names))
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
        inos, hashes = self._inos, self._hashes
        for pos in range(len(inos)):
            if inos[pos]:
                self._place(pos, hashes[pos])

    def remove(self, name: bytes) -> int:
        """Remove ``name`` (KeyError if absent); return its inode number."""
        i = self._slot_of(name)
        pos = self._index[i]
        self._index[i] = _GONE
        ino = self._inos[pos]
        self._inos[pos] = 0
        self._live -= 1
        if len(self._inos) > 2 * self._live + _PRUNE_SLACK:
            self._prune()
        return ino

    def _prune(self) -> None:
        """Drop the tombstones: the arrays, the names and the index are built anew."""
        inos, starts, names = self._inos, self._starts, self._names
        keep = [pos for pos in range(len(inos)) if inos[pos]]
        self._cookies = array("Q", [self._cookies[pos] for pos in keep])
        self._inos = array("Q", [inos[pos] for pos in keep])
        self._hashes = array("q", [self._hashes[pos] for pos in keep])
        packed = bytearray()
        new_starts = array("Q", [0])
        for pos in keep:
            packed += names[starts[pos]:starts[pos + 1]]
            new_starts.append(len(packed))
        self._names, self._starts = packed, new_starts
        self._build_index()

    def replace(self, name: bytes, ino: int) -> None:
        """Point an existing name at another inode, keeping its cookie."""
        self._inos[self._index[self._slot_of(name)]] = ino

    def entries_after(self, cookie: int) -> Iterator[tuple[bytes, int, int]]:
        """(name, inode, cookie) of entries with cookies above ``cookie``, in order."""
        cookies, inos, starts, names = self._cookies, self._inos, self._starts, self._names
        for pos in range(bisect.bisect_right(cookies, cookie), len(cookies)):
            ino = inos[pos]
            if ino:
                yield bytes(names[starts[pos]:starts[pos + 1]]), ino, cookies[pos]

    def memory(self) -> int:
        """Bytes of Python memory held: the object, its arrays and its names."""
        return sys.getsizeof(self) + sum(map(sys.getsizeof, (
            self._cookies, self._inos, self._hashes, self._starts, self._names, self._index)))
