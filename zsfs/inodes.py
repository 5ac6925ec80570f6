"""The inode table: every inode's fields packed in columns, one array per field.

Why columns: an object per inode (its slots, an int object per field, a slot in
an ``ino -> Inode`` dict) cost about 640 bytes of RSS per empty file, more than
tmpfs's slab. Here an inode costs the bytes of its fields, 76 in all (slots.py
says how numbers are reused and the columns shrink). What few inodes have (a
directory's entries, a symlink's target, a device number) hangs off one ``node``
list, a regular file's chunk map number off ``data``, xattrs off a dict of the
inodes that have any.

Inode numbers are reused once free (named nowhere, forgotten by the kernel and
closed: nothing can ask for it again).

Timestamps are 64-bit nanoseconds, 1677 to 2262; times beyond are clamped to
that range, as ext4 clamps to its own (1901 to 2446).
"""

from __future__ import annotations

from array import array
from typing import Any

from .slots import Slots

FREE = 0                       # mode of an unused slot (every inode has a file type)
_NS_MIN, _NS_MAX = -(1 << 63), (1 << 63) - 1


def clamp_ns(ns: int) -> int:
    return _NS_MIN if ns < _NS_MIN else _NS_MAX if ns > _NS_MAX else ns


class InodeTable(Slots):
    """Columns of inode fields indexed by inode number; slot 0 is never used.

    The columns are public: the tree reads and writes ``table.mode[ino]`` and the
    like directly, which is what keeps a request cheap.
    """

    __slots__ = ("mode", "uid", "gid", "nlink", "opens", "lookups", "size",
                 "atime_ns", "mtime_ns", "ctime_ns", "data", "node", "xattrs")

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
        self.data = array("Q", [0])               # a regular file's chunk map, 0: none yet
        self.node: list[Any] = [None]
        self.xattrs: dict[int, dict[bytes, bytes]] = {}
        columns = (self.mode, self.uid, self.gid, self.nlink, self.opens, self.lookups,
                   self.size, self.atime_ns, self.mtime_ns, self.ctime_ns, self.data,
                   self.node)
        super().__init__(columns, (0,) * (len(columns) - 1) + (None,), self.mode, FREE)

    def __contains__(self, ino: int) -> bool:
        return 0 < ino < len(self.mode) and self.mode[ino] != FREE

    def new(self, mode: int, uid: int, gid: int, now_ns: int) -> int:
        """A new inode's number, with its fields set and everything else zero."""
        ino = self._take()
        self.mode[ino] = mode
        self.uid[ino] = uid
        self.gid[ino] = gid
        self.atime_ns[ino] = self.mtime_ns[ino] = self.ctime_ns[ino] = now_ns
        return ino

    def free(self, ino: int) -> None:
        """Give ``ino``'s slot back: its fields are zeroed and its number may be reused."""
        self.xattrs.pop(ino, None)
        self._give_back(ino)
