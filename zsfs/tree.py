"""The inode tree: every file, directory, link and special file of a mount.

The tree owns POSIX semantics that the kernel leaves to the filesystem: names and
their limits, link counts, directory entries with readdir cookies, rename with its
flags, timestamps, set-group-ID inheritance, extended attributes, the lifetime of
unlinked-but-open inodes, and the capacity limits (``nr_inodes``, and ``size`` via
the chunk store). Permission checks are the kernel's (``default_permissions``),
except what only the filesystem can know: the set-ID bits the FUSE module leaves
to it and which ``trusted.*`` names a caller may list (``credentials.Caller``).

Errors are raised as ``OSError(errno, message)``; the FUSE layer turns them into
replies. File data goes through the ChunkStore; the tree only keeps each regular
file's ChunkMap and size.

Inode lifetime: an inode lives while it has a name (``nlink``), the kernel
remembers it (``lookups``, lowered by FORGET) or it is open (``opens``). The last
of the three to drop frees it and its chunks.

Readdir cookies: each directory gives every new entry the next value of a counter,
keeps the cookies in a sorted list (removed ones are pruned lazily, so that rm -r
stays linear) and resumes a listing after the last cookie it reported. Entries
created during a listing get higher cookies (they may or may not be seen); entries
removed are never reported again; none is repeated. Cookies 1 and 2 are ``.`` and
``..``.
"""

from __future__ import annotations

import bisect
import errno
import os
import stat
import sys
import time
from collections import Counter
from dataclasses import dataclass
from typing import Iterator

from . import acl as posix_acl
from .chunkstore import ChunkMap, ChunkStore
from .credentials import CAP_FSETID, CAP_SYS_ADMIN, Caller

ROOT_INODE = 1
NAME_MAX = 255
PATH_MAX = 4096
XATTR_SIZE_MAX = 65536
XATTR_NAMESPACES = (b"user.", b"trusted.", b"security.")
XATTR_TRUSTED = b"trusted."
FIRST_COOKIE = 3
RENAME_NOREPLACE = 1
RENAME_EXCHANGE = 2
_RELATIME_SECONDS = 24 * 3600
_INT_BYTES = sys.getsizeof(1 << 40)


def fs_error(code: int, what: str = "") -> OSError:
    return OSError(code, f"{os.strerror(code)}{': ' if what else ''}{what}")


class Directory:
    """Entries of a directory: name -> inode number, with stable readdir cookies."""

    __slots__ = ("children", "cookie_of", "name_of", "cookies", "next_cookie", "parent",
                 "name_bytes")

    def __init__(self, parent: int) -> None:
        self.children: dict[bytes, int] = {}
        self.cookie_of: dict[bytes, int] = {}
        self.name_of: dict[int, bytes] = {}
        self.cookies: list[int] = []
        self.next_cookie = FIRST_COOKIE
        self.parent = parent
        self.name_bytes = 0     # sys.getsizeof of the names, for metadata_bytes

    def add(self, name: bytes, ino: int) -> None:
        cookie = self.next_cookie
        self.next_cookie += 1
        self.children[name] = ino
        self.name_bytes += sys.getsizeof(name)
        self.cookie_of[name] = cookie
        self.name_of[cookie] = name
        self.cookies.append(cookie)

    def remove(self, name: bytes) -> int:
        ino = self.children.pop(name)
        self.name_bytes -= sys.getsizeof(name)
        del self.name_of[self.cookie_of.pop(name)]
        # The cookie stays in the sorted list until most of the list is stale: deleting
        # from the middle of a long list on every unlink would make rm -r quadratic.
        if len(self.cookies) > 2 * len(self.name_of) + 64:
            self.cookies = [c for c in self.cookies if c in self.name_of]
        return ino

    def replace(self, name: bytes, ino: int) -> None:
        """Point an existing name at another inode, keeping its cookie."""
        self.children[name] = ino

    def entries_after(self, cookie: int) -> Iterator[tuple[bytes, int, int]]:
        """(name, inode, cookie) of entries with cookies above ``cookie``, in order."""
        cookies = self.cookies
        i = bisect.bisect_right(cookies, cookie)
        while i < len(cookies):
            c = cookies[i]
            name = self.name_of.get(c)
            if name is not None:
                yield name, self.children[name], c
            i += 1


class Inode:
    """One inode. ``data`` is set for regular files, ``directory`` for directories,
    ``target`` for symlinks; ``xattrs`` is created on first use."""

    __slots__ = (
        "ino", "mode", "uid", "gid", "nlink", "size", "rdev",
        "atime_ns", "mtime_ns", "ctime_ns", "lookups", "opens",
        "data", "directory", "target", "xattrs",
    )

    def __init__(self, ino: int, mode: int, uid: int, gid: int, now: int) -> None:
        self.ino = ino
        self.mode = mode
        self.uid = uid
        self.gid = gid
        self.nlink = 0
        self.size = 0
        self.rdev = 0
        self.atime_ns = self.mtime_ns = self.ctime_ns = now
        self.lookups = 0
        self.opens = 0
        self.data: ChunkMap | None = None
        self.directory: Directory | None = None
        self.target: bytes | None = None
        self.xattrs: dict[bytes, bytes] | None = None


@dataclass(frozen=True)
class TreeStats:
    """Inode counts: files (regular), directories, symlinks, special, total."""

    files: int
    directories: int
    symlinks: int
    special: int
    inodes: int


def _extra_bytes(inode: Inode) -> int:
    """Bytes of an inode's symlink target and xattrs (kept in Tree.extra_bytes)."""
    total = sys.getsizeof(inode.target) if inode.target is not None else 0
    for name, value in (inode.xattrs or {}).items():
        total += sys.getsizeof(name) + sys.getsizeof(value)
    return total


# Python sizes of the bookkeeping objects, for metadata_bytes.
_INODE_BYTES = sys.getsizeof(Inode(0, 0, 0, 0, 0)) + 2 * _INT_BYTES   # + its inodes-dict slot
_CHUNK_MAP_BYTES = sys.getsizeof(ChunkMap())
_CHUNK_ENTRY_BYTES = _INT_BYTES + 24                 # the entry and (past one) its dict slot
_DIRECTORY_BYTES = sys.getsizeof(Directory(0))
_NAME_ENTRY_BYTES = _INT_BYTES + 3 * 24 + 8          # cookie, three dict slots, list slot


def _check_name(name: bytes) -> None:
    if len(name) > NAME_MAX:
        raise fs_error(errno.ENAMETOOLONG)
    if not name or b"/" in name or name in (b".", b".."):
        raise fs_error(errno.EINVAL, repr(name))


class Tree:
    """The namespace and metadata of one mount.

    Args:
        store: where regular files keep their data.
        nr_inodes: most inodes at once (0 = unlimited).
        root_mode, root_uid, root_gid: the root directory's permissions and owner.
        atime: "relatime" (the kernel default) or "noatime".
        acl: keep POSIX ACLs (``system.posix_acl_*``) with tmpfs's rules (zsfs.acl).
    """

    def __init__(self, store: ChunkStore, nr_inodes: int = 0, root_mode: int = 0o1777,
                 root_uid: int = 0, root_gid: int = 0, atime: str = "relatime",
                 acl: bool = False) -> None:
        self.store = store
        self.acl = acl
        self.nr_inodes = nr_inodes
        self.update_atime = atime != "noatime"
        self.inodes: dict[int, Inode] = {}
        self._next_ino = ROOT_INODE
        self._types: Counter[int] = Counter()       # inodes by S_IFMT
        self._directories: set[int] = set()
        self.extra_bytes = 0                         # symlink targets and xattrs
        root = self._new_inode(stat.S_IFDIR | (root_mode & 0o7777), root_uid, root_gid)
        root.directory = Directory(ROOT_INODE)
        self._directories.add(ROOT_INODE)
        root.nlink = 2
        root.lookups = 1  # the kernel never forgets the root

    # -- inode table -----------------------------------------------------------------

    def _new_inode(self, mode: int, uid: int, gid: int) -> Inode:
        if self.nr_inodes and len(self.inodes) >= self.nr_inodes:
            raise fs_error(errno.ENOSPC, "no free inodes (nr_inodes=)")
        ino = self._next_ino
        self._next_ino += 1
        inode = Inode(ino, mode, uid, gid, time.time_ns())
        self.inodes[ino] = inode
        self._types[stat.S_IFMT(mode)] += 1
        return inode

    def get(self, ino: int) -> Inode:
        try:
            return self.inodes[ino]
        except KeyError:
            raise fs_error(errno.ENOENT, f"inode {ino}") from None

    def directory(self, ino: int) -> Inode:
        inode = self.get(ino)
        if inode.directory is None:
            raise fs_error(errno.ENOTDIR)
        return inode

    def _maybe_free(self, inode: Inode) -> None:
        if inode.nlink == 0 and inode.lookups == 0 and inode.opens == 0:
            del self.inodes[inode.ino]
            self._types[stat.S_IFMT(inode.mode)] -= 1
            self._directories.discard(inode.ino)
            self.extra_bytes -= _extra_bytes(inode)
            if inode.data is not None:
                self.store.release(inode.data)

    def forget(self, ino: int, nlookup: int) -> None:
        inode = self.inodes.get(ino)
        if inode is not None:
            inode.lookups = max(0, inode.lookups - nlookup)
            self._maybe_free(inode)

    def remember(self, inode: Inode) -> Inode:
        """Count one kernel lookup of ``inode`` and return it."""
        inode.lookups += 1
        return inode

    def open(self, ino: int) -> Inode:
        inode = self.get(ino)
        inode.opens += 1
        return inode

    def close(self, inode: Inode) -> None:
        inode.opens -= 1
        self._maybe_free(inode)

    def metadata_bytes(self) -> int:
        """An estimate of the Python memory held by inodes, names, chunk maps and xattrs.

        Per-object sizes come from ``sys.getsizeof``; only directories are walked (their
        containers vary), so reading it stays cheap on a tree of many files.
        """
        total = sys.getsizeof(self.inodes) + len(self.inodes) * _INODE_BYTES
        total += self._types[stat.S_IFREG] * _CHUNK_MAP_BYTES + self.store.chunks * _CHUNK_ENTRY_BYTES
        total += self.extra_bytes
        for ino in self._directories:
            d = self.inodes[ino].directory
            total += (_DIRECTORY_BYTES + sys.getsizeof(d.children) + sys.getsizeof(d.cookie_of)
                      + sys.getsizeof(d.name_of) + sys.getsizeof(d.cookies) + d.name_bytes
                      + len(d.children) * _NAME_ENTRY_BYTES)
        return total

    def stats(self) -> TreeStats:
        types = self._types
        files, dirs, links = types[stat.S_IFREG], types[stat.S_IFDIR], types[stat.S_IFLNK]
        total = len(self.inodes)
        return TreeStats(files, dirs, links, total - files - dirs - links, total)

    # -- names -------------------------------------------------------------------------

    def lookup(self, parent: int, name: bytes) -> Inode:
        """The inode named ``name`` in ``parent`` (``.`` and ``..`` included)."""
        pdir = self.directory(parent)
        if name == b".":
            return pdir
        if name == b"..":
            return self.get(pdir.directory.parent)
        if len(name) > NAME_MAX:
            raise fs_error(errno.ENAMETOOLONG)
        try:
            return self.inodes[pdir.directory.children[name]]
        except KeyError:
            raise fs_error(errno.ENOENT) from None

    def create(self, parent: int, name: bytes, mode: int, uid: int, gid: int,
               rdev: int = 0, target: bytes | None = None, umask: int = 0) -> Inode:
        """Make a new inode of any type (from ``mode``) and name it. With ACLs on, the
        parent's default ACL or else *umask* shapes the mode (the kernel leaves both
        to the filesystem then); without, the kernel has applied the umask already."""
        pdir = self.directory(parent)
        _check_name(name)
        if name in pdir.directory.children:
            raise fs_error(errno.EEXIST)
        if target is not None and len(target) >= PATH_MAX:
            raise fs_error(errno.ENAMETOOLONG)
        if pdir.mode & stat.S_ISGID:
            gid = pdir.gid
            if stat.S_ISDIR(mode):
                mode |= stat.S_ISGID
        inherited = self._inherit_acl(pdir, mode, umask) if self.acl else None
        if inherited is not None:
            mode = inherited[0]
        inode = self._new_inode(mode, uid, gid)
        if inherited is not None:
            for xattr, value in inherited[1].items():
                self._store_xattr(inode, xattr, value)
        fmt = stat.S_IFMT(mode)
        if fmt == stat.S_IFDIR:
            inode.directory = Directory(parent)
            inode.nlink = 2
            pdir.nlink += 1
            self._directories.add(inode.ino)
        else:
            inode.nlink = 1
            if fmt == stat.S_IFREG:
                inode.data = ChunkMap()
            elif fmt == stat.S_IFLNK:
                inode.target = target
                inode.size = len(target or b"")
                self.extra_bytes += _extra_bytes(inode)
            elif fmt in (stat.S_IFCHR, stat.S_IFBLK):
                inode.rdev = rdev
        pdir.directory.add(name, inode.ino)
        pdir.mtime_ns = pdir.ctime_ns = inode.ctime_ns
        return inode

    @staticmethod
    def _inherit_acl(pdir: Inode, mode: int, umask: int) -> tuple[int, dict[bytes, bytes]]:
        """(mode, ACL xattrs) of a new inode in *pdir*: posix_acl_create()."""
        if stat.S_ISLNK(mode):
            return mode, {}
        default = (pdir.xattrs or {}).get(posix_acl.DEFAULT)
        if default is None:
            return mode & ~(umask & 0o777), {}
        entries, mode, extended = posix_acl.create_masq(posix_acl.parse(default), mode)
        xattrs = {posix_acl.ACCESS: posix_acl.build(entries)} if extended else {}
        if stat.S_ISDIR(mode):
            xattrs[posix_acl.DEFAULT] = default
        return mode, xattrs

    def link(self, ino: int, parent: int, name: bytes) -> Inode:
        inode = self.get(ino)
        pdir = self.directory(parent)
        _check_name(name)
        if inode.directory is not None:
            raise fs_error(errno.EPERM)
        if name in pdir.directory.children:
            raise fs_error(errno.EEXIST)
        pdir.directory.add(name, ino)
        inode.nlink += 1
        now = time.time_ns()
        inode.ctime_ns = pdir.mtime_ns = pdir.ctime_ns = now
        return inode

    def unlink(self, parent: int, name: bytes) -> None:
        pdir = self.directory(parent)
        inode = self.lookup(parent, name)
        if inode.directory is not None:
            raise fs_error(errno.EISDIR)
        pdir.directory.remove(name)
        self._unname(pdir, inode)

    def rmdir(self, parent: int, name: bytes) -> None:
        pdir = self.directory(parent)
        if name == b".":
            raise fs_error(errno.EINVAL)
        if name == b"..":
            raise fs_error(errno.ENOTEMPTY)
        inode = self.lookup(parent, name)
        if inode.directory is None:
            raise fs_error(errno.ENOTDIR)
        if inode.directory.children:
            raise fs_error(errno.ENOTEMPTY)
        pdir.directory.remove(name)
        self._unname(pdir, inode)

    def _unname(self, pdir: Inode, inode: Inode) -> None:
        """Account for one name of ``inode`` in ``pdir`` having gone."""
        now = time.time_ns()
        pdir.mtime_ns = pdir.ctime_ns = inode.ctime_ns = now
        if inode.directory is not None:
            inode.nlink = 0
            pdir.nlink -= 1
        else:
            inode.nlink -= 1
        self._maybe_free(inode)

    def rename(self, old_parent: int, old_name: bytes, new_parent: int, new_name: bytes,
               flags: int = 0) -> None:
        """rename(2)/renameat2(2) with RENAME_NOREPLACE and RENAME_EXCHANGE."""
        if flags & ~(RENAME_NOREPLACE | RENAME_EXCHANGE) or flags == RENAME_NOREPLACE | RENAME_EXCHANGE:
            raise fs_error(errno.EINVAL)
        src_dir = self.directory(old_parent)
        dst_dir = self.directory(new_parent)
        _check_name(new_name)
        moved = self.lookup(old_parent, old_name)
        if old_name in (b".", b".."):
            raise fs_error(errno.EBUSY)
        target_ino = dst_dir.directory.children.get(new_name)
        target = self.inodes[target_ino] if target_ino is not None else None
        if flags & RENAME_EXCHANGE:
            if target is None:
                raise fs_error(errno.ENOENT)
        elif target is not None and flags & RENAME_NOREPLACE:
            raise fs_error(errno.EEXIST)
        if moved.directory is not None:
            self._check_not_ancestor(moved, dst_dir)
        if target is not None and target.directory is not None and flags & RENAME_EXCHANGE:
            self._check_not_ancestor(target, src_dir)
        if target is moved:
            return
        now = time.time_ns()
        if flags & RENAME_EXCHANGE:
            src_dir.directory.replace(old_name, target.ino)
            dst_dir.directory.replace(new_name, moved.ino)
            self._reparent(target, src_dir, dst_dir)
            self._reparent(moved, dst_dir, src_dir)
            target.ctime_ns = now
        else:
            if target is not None:
                if moved.directory is not None and target.directory is None:
                    raise fs_error(errno.ENOTDIR)
                if moved.directory is None and target.directory is not None:
                    raise fs_error(errno.EISDIR)
                if target.directory is not None and target.directory.children:
                    raise fs_error(errno.ENOTEMPTY)
                dst_dir.directory.remove(new_name)
                self._unname(dst_dir, target)
            src_dir.directory.remove(old_name)
            dst_dir.directory.add(new_name, moved.ino)
            self._reparent(moved, dst_dir, src_dir)
        moved.ctime_ns = now
        src_dir.mtime_ns = src_dir.ctime_ns = dst_dir.mtime_ns = dst_dir.ctime_ns = now

    def _check_not_ancestor(self, directory: Inode, of: Inode) -> None:
        """EINVAL if ``directory`` is ``of`` or one of its ancestors."""
        ino = of.ino
        while True:
            if ino == directory.ino:
                raise fs_error(errno.EINVAL, "directory moved into itself")
            if ino == ROOT_INODE:
                return
            ino = self.get(ino).directory.parent

    @staticmethod
    def _reparent(inode: Inode, new_parent: Inode, old_parent: Inode) -> None:
        if inode.directory is not None and new_parent is not old_parent:
            inode.directory.parent = new_parent.ino
            new_parent.nlink += 1
            old_parent.nlink -= 1

    # -- attributes --------------------------------------------------------------------

    async def set_size(self, inode: Inode, size: int) -> None:
        if inode.directory is not None:
            raise fs_error(errno.EISDIR)
        if inode.data is None:
            raise fs_error(errno.EINVAL)
        if size < inode.size:
            await self.store.truncate(inode.data, size)
        inode.size = size
        inode.mtime_ns = inode.ctime_ns = time.time_ns()

    @staticmethod
    def set_attributes(inode: Inode, mode: int | None = None, uid: int | None = None,
                       gid: int | None = None, atime_ns: int | None = None,
                       mtime_ns: int | None = None, ctime_ns: int | None = None) -> None:
        """chmod/chown/utimes: change what is given; ctime becomes now unless given.
        A chmod rewrites an access ACL's owner, group-class and other entries."""
        if mode is not None:
            inode.mode = stat.S_IFMT(inode.mode) | stat.S_IMODE(mode)
            access = (inode.xattrs or {}).get(posix_acl.ACCESS)
            if access is not None:
                inode.xattrs[posix_acl.ACCESS] = posix_acl.build(     # same size
                    posix_acl.chmod(posix_acl.parse(access), inode.mode))
        if uid is not None:
            inode.uid = uid
        if gid is not None:
            inode.gid = gid
        if atime_ns is not None:
            inode.atime_ns = atime_ns
        if mtime_ns is not None:
            inode.mtime_ns = mtime_ns
        inode.ctime_ns = ctime_ns if ctime_ns is not None else time.time_ns()

    # -- set-user-ID and set-group-ID bits ------------------------------------------------
    #
    # With default_permissions the kernel clears these bits itself when a write,
    # truncate or chown needs it (a SETATTR with the new mode arrives first), except in
    # two cases that tmpfs handles and the FUSE module leaves to the filesystem.

    @staticmethod
    def kill_set_id(inode: Inode, caller: Caller) -> bool:
        """Clear set-ID bits as a truncation by *caller* does (the kernel's
        setattr_should_drop_suidgid()): S_ISUID always, S_ISGID when the file is
        group-executable or the caller is not in its group; nothing for a caller with
        CAP_FSETID or for anything but a regular file. True if the mode changed.

        For open(O_TRUNC): the kernel then leaves the truncation to the filesystem's
        open and drops the mode change it computed."""
        mode = inode.mode
        if not stat.S_ISREG(mode) or not mode & (stat.S_ISUID | stat.S_ISGID):
            return False
        kill = mode & stat.S_ISUID
        if mode & stat.S_ISGID and (mode & stat.S_IXGRP or not caller.in_group(inode.gid)):
            kill |= stat.S_ISGID
        if not kill or caller.capable(CAP_FSETID):
            return False
        inode.mode = mode & ~kill
        inode.ctime_ns = time.time_ns()
        return True

    @staticmethod
    def kill_set_group_id(inode: Inode, caller: Caller, gid: int) -> bool:
        """Clear a set-group-ID bit without group-execute if *caller* is neither in the
        file's group *gid* (its group before the request) nor has CAP_FSETID (the
        kernel's setattr_should_drop_sgid()). True if the mode changed.

        For the SETATTR of a write's or truncate's privilege kill, of a chown or of a
        chmod: the FUSE module clears S_ISGID only together with S_IXGRP, and strips
        it from a chmod by such a caller before it arrives, so a chmod loses nothing
        here."""
        mode = inode.mode
        if not stat.S_ISREG(mode) or mode & (stat.S_ISGID | stat.S_IXGRP) != stat.S_ISGID:
            return False
        if caller.in_group_or_capable(gid):
            return False
        inode.mode = mode & ~stat.S_ISGID
        inode.ctime_ns = time.time_ns()
        return True

    # -- data --------------------------------------------------------------------------

    async def read(self, inode: Inode, offset: int, length: int) -> bytes | bytearray:
        length = min(length, inode.size - offset)
        if length <= 0:
            return b""
        data = await self.store.read_parallel(inode.data, offset, length)
        self._touch_atime(inode)
        return data

    def _touch_atime(self, inode: Inode) -> None:
        """relatime: update atime if it is not newer than mtime/ctime or a day old."""
        if not self.update_atime:
            return
        atime = inode.atime_ns
        now = time.time_ns()
        if (atime <= inode.mtime_ns or atime <= inode.ctime_ns
                or now - atime >= _RELATIME_SECONDS * 1_000_000_000):
            inode.atime_ns = now

    async def write(self, inode: Inode, offset: int, data: bytes) -> int:
        written = await self.store.write(inode.data, offset, data)
        if offset + written > inode.size:
            inode.size = offset + written
        inode.mtime_ns = inode.ctime_ns = time.time_ns()
        return written

    def list_dir(self, inode: Inode, after: int) -> Iterator[tuple[bytes, Inode, int]]:
        """(name, inode, cookie) after cookie ``after``, ``.`` and ``..`` first."""
        if after < 1:
            yield b".", inode, 1
        if after < 2:
            yield b"..", self.get(inode.directory.parent), 2
        for name, ino, cookie in inode.directory.entries_after(after):
            yield name, self.inodes[ino], cookie
        self._touch_atime(inode)

    # -- extended attributes -------------------------------------------------------------

    def _check_xattr_name(self, name: bytes) -> None:
        if len(name) > NAME_MAX:
            raise fs_error(errno.ERANGE)
        if self.acl and name in posix_acl.NAMES:
            return
        if not name.startswith(XATTR_NAMESPACES) or name in XATTR_NAMESPACES:
            raise fs_error(errno.EOPNOTSUPP)

    def get_xattr(self, inode: Inode, name: bytes) -> bytes:
        self._check_xattr_name(name)
        try:
            return inode.xattrs[name]  # type: ignore[index]
        except (KeyError, TypeError):
            raise fs_error(errno.ENODATA) from None

    def set_xattr(self, inode: Inode, name: bytes, value: bytes,
                  caller: Caller | None = None) -> None:
        self._check_xattr_name(name)
        if len(value) > XATTR_SIZE_MAX:
            raise fs_error(errno.E2BIG)
        if name in posix_acl.NAMES:
            self._set_acl(inode, name, value, caller)
        else:
            self._store_xattr(inode, name, value)
        inode.ctime_ns = time.time_ns()

    def _set_acl(self, inode: Inode, name: bytes, value: bytes, caller: Caller | None) -> None:
        """Store an ACL the way posix_acl_update_mode() and tmpfs do. The kernel has
        checked the caller owns the inode, and refuses symlinks and default ACLs on
        non-directories; both are checked again here, for callers other than it."""
        entries = posix_acl.parse(value)
        if stat.S_ISLNK(inode.mode):
            raise fs_error(errno.EOPNOTSUPP)
        if name == posix_acl.DEFAULT:
            if inode.directory is None:
                raise fs_error(errno.EACCES)
            self._store_xattr(inode, name, value)
            return
        mode, extended = posix_acl.equiv_mode(entries, inode.mode)
        if caller is not None and not caller.in_group_or_capable(inode.gid):
            mode &= ~stat.S_ISGID
        inode.mode = mode
        if extended:
            self._store_xattr(inode, name, value)
        elif inode.xattrs and name in inode.xattrs:
            self._drop_xattr(inode, name)

    def _drop_xattr(self, inode: Inode, name: bytes) -> None:
        self.extra_bytes -= sys.getsizeof(name) + sys.getsizeof(inode.xattrs.pop(name))

    def _store_xattr(self, inode: Inode, name: bytes, value: bytes) -> None:
        if inode.xattrs is None:
            inode.xattrs = {}
        old = inode.xattrs.get(name)
        if old is not None:
            self.extra_bytes -= sys.getsizeof(name) + sys.getsizeof(old)
        inode.xattrs[name] = value
        self.extra_bytes += sys.getsizeof(name) + sys.getsizeof(value)

    def remove_xattr(self, inode: Inode, name: bytes) -> None:
        self._check_xattr_name(name)
        if not inode.xattrs or name not in inode.xattrs:
            if name in posix_acl.NAMES:
                return          # as tmpfs: removing an absent ACL succeeds
            raise fs_error(errno.ENODATA)
        self._drop_xattr(inode, name)
        inode.ctime_ns = time.time_ns()

    @staticmethod
    def list_xattrs(inode: Inode, caller: Caller | None = None) -> list[bytes]:
        """The names of an inode's xattrs; ``trusted.*`` ones only for a caller with
        CAP_SYS_ADMIN, as tmpfs lists them (the kernel refuses others their values but
        passes on whatever names the filesystem lists)."""
        names = list(inode.xattrs or ())
        if any(n.startswith(XATTR_TRUSTED) for n in names) and not (
                caller is not None and caller.capable(CAP_SYS_ADMIN)):
            names = [n for n in names if not n.startswith(XATTR_TRUSTED)]
        return names
