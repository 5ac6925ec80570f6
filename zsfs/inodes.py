"""The inode table: every inode's fields packed in columns, one array per field.

Why columns: an object per inode (its slots, an int object per field, a slot in
an ``ino -> Inode`` dict) cost about 640 bytes of RSS per empty file, more than
tmpfs's slab. Here an inode costs the bytes of its fields, 68 in all, and the
fields of ``ino`` are ``column[ino]``. What few inodes have (a directory's
entries, a symlink's target, a device number, a regular file's chunk map once
it has data) hangs off one ``node`` list, xattrs off a dict of the inodes that
have any.

Inode numbers are reused once free (named nowhere, forgotten by the kernel and
closed: nothing can ask for it again), so the columns stay as long as the most
inodes held at once. Once the table is at most half used, the run of free
numbers at its end is cut off the columns whenever the last slot is freed, so a
tree that shrinks gives its memory back whatever order its files go in (``rm -rf``
frees a directory after its entries). The free list is not searched at a cut: a
number at or past the end is stale, dropped when popped, and the list is rebuilt
only once stale numbers outnumber the live ones.

Timestamps are 64-bit nanoseconds, 1677 to 2262; times beyond are clamped to
that range, as ext4 clamps to its own (1901 to 2446).
"""

from __future__ import annotations

import sys
from array import array
from typing import Any

FREE = 0                       # mode of an unused slot (every inode has a file type)
_NS_MIN, _NS_MAX = -(1 << 63), (1 << 63) - 1
_FREE_LIST_SLACK = 1024        # stale free numbers tolerated beyond twice the live ones


def clamp_ns(ns: int) -> int:
    return _NS_MIN if ns < _NS_MIN else _NS_MAX if ns > _NS_MAX else ns


class InodeTable:
    """Columns of inode fields indexed by inode number; slot 0 is never used.

    The columns are public: the tree reads and writes ``table.mode[ino]`` and the
    like directly, which is what keeps a request cheap.
    """

    __slots__ = ("mode", "uid", "gid", "nlink", "opens", "lookups", "size",
                 "atime_ns", "mtime_ns", "ctime_ns", "node", "xattrs", "count",
                 "_free", "_columns")

    def __init__(self) -> None:
        self.mode = array("I", [FREE])
        self.uid = array("I", [0])
        self.gid = array("I", [0])
        self.nlink = array("I", [0])
        self.opens = array("I", [0])
        self.lookups = array("Q", [0])
        self.size = array("q", [0])
        self.atime_ns = array("q", [0])
        self.mtime_ns = array("q", [0])
        self.ctime_ns = array("q", [0])
        self.node: list[Any] = [None]
        self.xattrs: dict[int, dict[bytes, bytes]] = {}
        self.count = 0                                    # inodes in use
        self._free = array("Q")           # free numbers, last freed on top; some stale
        self._columns: tuple[Any, ...] = (
            self.mode, self.uid, self.gid, self.nlink, self.opens, self.lookups, self.size,
            self.atime_ns, self.mtime_ns, self.ctime_ns, self.node)

    def __len__(self) -> int:
        """Slots, used or free, including slot 0: every inode number is below it."""
        return len(self.mode)

    def __contains__(self, ino: int) -> bool:
        return 0 < ino < len(self.mode) and self.mode[ino] != FREE

    def new(self, mode: int, uid: int, gid: int, now_ns: int) -> int:
        """A new inode's number, with its fields set and everything else zero."""
        free, slots = self._free, len(self.mode)
        while free:
            ino = free.pop()
            if ino < slots:
                break
        else:
            ino = slots
            for column in self._columns:
                column.append(0 if column is not self.node else None)
        self.mode[ino] = mode
        self.uid[ino] = uid
        self.gid[ino] = gid
        self.atime_ns[ino] = self.mtime_ns[ino] = self.ctime_ns[ino] = now_ns
        self.count += 1
        return ino

    def free(self, ino: int) -> None:
        """Give ``ino``'s slot back: its fields are zeroed and its number may be reused."""
        for column in self._columns:
            column[ino] = 0 if column is not self.node else None
        self.xattrs.pop(ino, None)
        self.count -= 1
        self._free.append(ino)
        if self.mode[-1] == FREE and 2 * self.count <= len(self.mode):
            self._cut_tail()

    def _cut_tail(self) -> None:
        """Cut the run of free slots at the end of the columns (amortized: each slot is
        cut once per time it was appended); rebuild the free list if mostly stale."""
        mode = self.mode
        end = len(mode)
        while end > 2 and mode[end - 1] == FREE:
            end -= 1
        for column in self._columns:
            del column[end:]
        if len(self._free) > 2 * (end - 1 - self.count) + _FREE_LIST_SLACK:
            self._free = array("Q", [ino for ino in self._free if ino < end])

    def memory(self) -> int:
        """Bytes held by the columns and the free list (their buffers, as allocated)."""
        return sum(map(sys.getsizeof, self._columns)) + sys.getsizeof(self._free)
