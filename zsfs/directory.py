"""A directory's entries: names to inode numbers, with stable readdir cookies.

Each new entry takes the next value of the directory's cookie counter. A listing
resumes after the last cookie it reported: entries created meanwhile get higher
cookies (they may or may not be seen), entries removed are never reported again,
none is repeated. Cookies 1 and 2 are ``.`` and ``..``.

Packed for memory: an entry is one slot of a dict (name -> ``cookie << INO_BITS |
ino``, one int object) plus a slot of two parallel sequences in cookie order, an
``array`` of cookies and a list of the names (the dict's own name objects: a name
is held once). A removed entry leaves ``None`` in the list until most of it is
stale; the list is then rebuilt, so that ``rm -r`` stays linear. A dict never
shrinks when keys are deleted, so the rebuild copies it too.
"""

from __future__ import annotations

import bisect
import sys
from array import array
from typing import Iterator

FIRST_COOKIE = 3
INO_BITS = 40
_INO_MASK = (1 << INO_BITS) - 1
_PRUNE_SLACK = 64


class Directory:
    """The entries of one directory and its parent's inode number."""

    __slots__ = ("_entries", "_cookies", "_names", "_next_cookie", "parent", "name_bytes")

    def __init__(self, parent: int) -> None:
        self._entries: dict[bytes, int] = {}
        self._cookies = array("Q")
        self._names: list[bytes | None] = []
        self._next_cookie = FIRST_COOKIE
        self.parent = parent
        self.name_bytes = 0     # sys.getsizeof of the names, for memory()

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, name: bytes) -> bool:
        return name in self._entries

    def get(self, name: bytes) -> int | None:
        """The inode number of ``name``, or None."""
        value = self._entries.get(name)
        return None if value is None else value & _INO_MASK

    def add(self, name: bytes, ino: int) -> None:
        cookie = self._next_cookie
        self._next_cookie += 1
        self._entries[name] = cookie << INO_BITS | ino
        self._cookies.append(cookie)
        self._names.append(name)
        self.name_bytes += sys.getsizeof(name)

    def remove(self, name: bytes) -> int:
        """Remove ``name`` (KeyError if absent); return its inode number."""
        value = self._entries.pop(name)
        self.name_bytes -= sys.getsizeof(name)
        self._names[bisect.bisect_left(self._cookies, value >> INO_BITS)] = None
        if len(self._names) > 2 * len(self._entries) + _PRUNE_SLACK:
            self._prune()
        return value & _INO_MASK

    def _prune(self) -> None:
        names = self._names
        keep = [i for i, name in enumerate(names) if name is not None]
        self._cookies = array("Q", [self._cookies[i] for i in keep])
        self._names = [names[i] for i in keep]
        self._entries = dict(self._entries)

    def replace(self, name: bytes, ino: int) -> None:
        """Point an existing name at another inode, keeping its cookie."""
        value = self._entries[name]
        self._entries[name] = value & ~_INO_MASK | ino

    def entries_after(self, cookie: int) -> Iterator[tuple[bytes, int, int]]:
        """(name, inode, cookie) of entries with cookies above ``cookie``, in order."""
        cookies, names, entries = self._cookies, self._names, self._entries
        for i in range(bisect.bisect_right(cookies, cookie), len(cookies)):
            name = names[i]
            if name is not None:
                yield name, entries[name] & _INO_MASK, cookies[i]

    def memory(self) -> int:
        """Bytes of Python memory held: containers, names and the packed values."""
        return (sys.getsizeof(self) + sys.getsizeof(self._entries) + sys.getsizeof(self._cookies)
                + sys.getsizeof(self._names) + self.name_bytes
                + len(self._entries) * sys.getsizeof(1 << 60))
