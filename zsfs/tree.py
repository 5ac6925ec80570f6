"""The inode tree: every file, directory, link and special file of a mount.

The tree owns POSIX semantics that the kernel leaves to the filesystem: names and
their limits, link counts, directory entries with readdir cookies, rename with its
flags, timestamps, set-group-ID inheritance, extended attributes, the lifetime of
unlinked-but-open inodes, and the capacity limits (``nr_inodes``, and ``size`` via
the chunk store). Permission checks are the kernel's (``default_permissions``),
except what only the filesystem can know: the set-ID bits the FUSE module leaves
to it and which ``trusted.*`` names a caller may list (``credentials.Caller``).

Callers name inodes by number only; ``stat(ino)`` gives their attributes. The
fields live in an InodeTable (inodes.py: packed columns) and directory entries in
Directory objects (directory.py), so that a file costs bytes rather than objects.
Errors are raised as ``OSError(errno, message)``; the FUSE layer turns them into
replies. File data goes through the ChunkStore; a regular file gets a chunk map
with its first data (an empty file has none).

Inode lifetime: an inode lives while it has a name (``nlink``), the kernel
remembers it (``lookups``, lowered by FORGET) or it is open (``opens``). The last
of the three to drop frees it and its chunks, and its number may then be reused.
"""

from __future__ import annotations

import errno
import os
import stat
import sys
import time
from collections import Counter
from dataclasses import dataclass
from typing import Iterator, NamedTuple

from . import acl as posix_acl
from .chunkstore import ChunkStore
from .credentials import CAP_FSETID, CAP_SYS_ADMIN, Caller
from .directory import Directory
from .inodes import InodeTable, clamp_ns

ROOT_INODE = 1
NAME_MAX = 255
PATH_MAX = 4096
XATTR_SIZE_MAX = 65536
XATTR_NAMESPACES = (b"user.", b"trusted.", b"security.")
XATTR_TRUSTED = b"trusted."
RENAME_NOREPLACE = 1
RENAME_EXCHANGE = 2
_RELATIME_NS = 24 * 3600 * 1_000_000_000
_new_tuple = tuple.__new__


def fs_error(code: int, what: str = "") -> OSError:
    return OSError(code, f"{os.strerror(code)}{': ' if what else ''}{what}")


class Stat(NamedTuple):
    """An inode's attributes; ``stored_bytes`` is the RAM its data holds (st_blocks)."""

    ino: int
    mode: int
    nlink: int
    uid: int
    gid: int
    rdev: int
    size: int
    stored_bytes: int
    atime_ns: int
    mtime_ns: int
    ctime_ns: int


@dataclass(frozen=True)
class TreeStats:
    """Inode counts: files (regular), directories, symlinks, special, total."""

    files: int
    directories: int
    symlinks: int
    special: int
    inodes: int


def _check_name(name: bytes) -> None:
    if len(name) > NAME_MAX:
        raise fs_error(errno.ENAMETOOLONG)
    if not name or b"/" in name or name in (b".", b".."):
        raise fs_error(errno.EINVAL, repr(name))


# -- set-user-ID and set-group-ID bits ------------------------------------------------
#
# With default_permissions the kernel clears these bits itself when a write, truncate
# or chown needs it (a SETATTR with the new mode arrives first), except in two cases
# that tmpfs handles and the FUSE module leaves to the filesystem.

def mode_after_truncate(mode: int, gid: int, caller: Caller) -> int:
    """The mode once set-ID bits are cleared as a truncation by *caller* clears them
    (the kernel's setattr_should_drop_suidgid()): S_ISUID always, S_ISGID when the
    file is group-executable or the caller is not in its group *gid*; nothing for a
    caller with CAP_FSETID or for anything but a regular file.

    For open(O_TRUNC): the kernel then leaves the truncation to the filesystem's
    open and drops the mode change it computed."""
    if not stat.S_ISREG(mode) or not mode & (stat.S_ISUID | stat.S_ISGID):
        return mode
    kill = mode & stat.S_ISUID
    if mode & stat.S_ISGID and (mode & stat.S_IXGRP or not caller.in_group(gid)):
        kill |= stat.S_ISGID
    if not kill or caller.capable(CAP_FSETID):
        return mode
    return mode & ~kill


def mode_after_change(mode: int, gid: int, caller: Caller) -> int:
    """The mode once a set-group-ID bit without group-execute is cleared, if *caller*
    is neither in the file's group *gid* (its group before the request) nor has
    CAP_FSETID (the kernel's setattr_should_drop_sgid()).

    For the SETATTR of a write's or truncate's privilege kill, of a chown or of a
    chmod: the FUSE module clears S_ISGID only together with S_IXGRP, and strips it
    from a chmod by such a caller before it arrives, so a chmod loses nothing here."""
    if not stat.S_ISREG(mode) or mode & (stat.S_ISGID | stat.S_IXGRP) != stat.S_ISGID:
        return mode
    if caller.in_group_or_capable(gid):
        return mode
    return mode & ~stat.S_ISGID


def visible_xattrs(names: list[bytes], caller: Caller | None) -> list[bytes]:
    """``names`` without ``trusted.*`` ones unless *caller* has CAP_SYS_ADMIN, as tmpfs
    lists them (the kernel refuses others their values but passes on whatever names
    the filesystem lists)."""
    if any(n.startswith(XATTR_TRUSTED) for n in names) and not (
            caller is not None and caller.capable(CAP_SYS_ADMIN)):
        return [n for n in names if not n.startswith(XATTR_TRUSTED)]
    return names


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
        self._stored_bytes = store.maps.stored       # by chunk map, for stat()
        self.acl = acl
        self.nr_inodes = nr_inodes
        self.update_atime = atime != "noatime"
        self.table = InodeTable()
        self._types: Counter[int] = Counter()       # inodes by S_IFMT
        self._directories: set[int] = set()
        self.extra_bytes = 0                         # symlink targets and xattrs
        root = self._new_inode(stat.S_IFDIR | (root_mode & 0o7777), root_uid, root_gid,
                               time.time_ns())
        assert root == ROOT_INODE
        self._make_directory(root, ROOT_INODE)
        self.table.lookups[root] = 1  # the kernel never forgets the root

    # -- inode table -----------------------------------------------------------------

    def _new_inode(self, mode: int, uid: int, gid: int, now: int) -> int:
        if self.nr_inodes and self.table.count >= self.nr_inodes:
            raise fs_error(errno.ENOSPC, "no free inodes (nr_inodes=)")
        self._types[stat.S_IFMT(mode)] += 1
        return self.table.new(mode, uid, gid, now)

    def _make_directory(self, ino: int, parent: int) -> None:
        self.table.node[ino] = Directory(parent)
        self.table.nlink[ino] = 2
        self._directories.add(ino)

    @property
    def inode_count(self) -> int:
        return self.table.count

    def check(self, ino: int) -> None:
        """ENOENT unless ``ino`` is an inode of the tree."""
        if ino not in self.table:
            raise fs_error(errno.ENOENT, f"inode {ino}")

    def _directory(self, ino: int) -> Directory:
        nodes = self.table.node
        node = nodes[ino] if 0 < ino < len(nodes) else None
        if not isinstance(node, Directory):
            self.check(ino)
            raise fs_error(errno.ENOTDIR)
        return node

    def is_file(self, ino: int) -> bool:
        """Whether ``ino`` is a regular file."""
        self.check(ino)
        return stat.S_ISREG(self.table.mode[ino])

    def _chunk_map(self, ino: int) -> int:
        """A regular file's chunk map, made with its first data."""
        cmap = self.table.data[ino]
        if not cmap:
            cmap = self.table.data[ino] = self.store.new_map()
        return cmap

    def _maybe_free(self, ino: int) -> None:
        t = self.table
        if t.nlink[ino] == 0 and t.lookups[ino] == 0 and t.opens[ino] == 0:
            self._types[stat.S_IFMT(t.mode[ino])] -= 1
            self._directories.discard(ino)
            self.extra_bytes -= self._extra_bytes(ino)
            if t.data[ino]:
                self.store.release(t.data[ino])
            t.free(ino)

    def _extra_bytes(self, ino: int) -> int:
        """Bytes of an inode's symlink target and xattrs (kept in ``extra_bytes``)."""
        node = self.table.node[ino]
        total = sys.getsizeof(node) if isinstance(node, bytes) else 0
        for name, value in self.table.xattrs.get(ino, {}).items():
            total += sys.getsizeof(name) + sys.getsizeof(value)
        return total

    def forget(self, ino: int, nlookup: int) -> None:
        if ino in self.table:
            lookups = self.table.lookups
            lookups[ino] = max(0, lookups[ino] - nlookup)
            self._maybe_free(ino)

    def remember(self, ino: int) -> int:
        """Count one kernel lookup of ``ino`` and return it."""
        self.table.lookups[ino] += 1
        return ino

    def open(self, ino: int) -> None:
        self.check(ino)
        self.table.opens[ino] += 1

    def open_dir(self, ino: int) -> None:
        """``open`` for a directory: ENOTDIR for anything else."""
        self._directory(ino)
        self.table.opens[ino] += 1

    def close(self, ino: int) -> None:
        self.table.opens[ino] -= 1
        self._maybe_free(ino)

    def stat(self, ino: int) -> Stat:
        t = self.table
        mode = t.mode[ino] if 0 < ino < len(t.mode) else 0
        if not mode:
            raise fs_error(errno.ENOENT, f"inode {ino}")
        node = t.node[ino]
        rdev = node if node.__class__ is int else 0
        stored = self._stored_bytes[t.data[ino]]
        # (tuple.__new__: a NamedTuple's own constructor costs as much as the rest)
        return _new_tuple(Stat, (ino, mode, t.nlink[ino], t.uid[ino], t.gid[ino], rdev,
                                 t.size[ino], stored, t.atime_ns[ino], t.mtime_ns[ino],
                                 t.ctime_ns[ino]))

    def chunk_maps(self, changed_before: int | None = None) -> Iterator[int]:
        """Each inode's chunk map as the walk gets to it, for recompression: 0 for
        inodes without data, and for those changed (mtime or ctime) at or after
        ``changed_before`` ns if given. The walk may be suspended between inodes:
        it reads the table afresh at each step."""
        t = self.table
        ino = 1
        while ino < len(t):
            cmap = t.data[ino]
            if cmap and changed_before is not None and max(
                    t.mtime_ns[ino], t.ctime_ns[ino]) >= changed_before:
                cmap = 0
            yield cmap
            ino += 1

    def metadata_bytes(self) -> int:
        """The Python memory held by inodes, names, chunk maps and xattrs: the
        table's columns, each directory's containers, the chunk maps' columns
        and the dicts of files with more than one chunk, the counts of shared
        objects, targets and xattrs. Walks the directories, the inodes with
        xattrs and the files of several chunks only, so reading it stays cheap."""
        xattrs = self.table.xattrs
        total = self.table.memory() + self.extra_bytes + sys.getsizeof(xattrs)
        total += sum(map(sys.getsizeof, xattrs.values()))
        total += self.store.bookkeeping_bytes()
        node = self.table.node
        for ino in self._directories:
            total += node[ino].memory()
        return total

    def stats(self) -> TreeStats:
        types = self._types
        files, dirs, links = types[stat.S_IFREG], types[stat.S_IFDIR], types[stat.S_IFLNK]
        total = self.table.count
        return TreeStats(files, dirs, links, total - files - dirs - links, total)

    # -- names -------------------------------------------------------------------------

    def lookup(self, parent: int, name: bytes) -> int:
        """The inode named ``name`` in ``parent`` (``.`` and ``..`` included)."""
        pdir = self._directory(parent)
        if name == b".":
            return parent
        if name == b"..":
            return pdir.parent
        if len(name) > NAME_MAX:
            raise fs_error(errno.ENAMETOOLONG)
        ino = pdir.get(name)
        if ino is None:
            raise fs_error(errno.ENOENT)
        return ino

    def create(self, parent: int, name: bytes, mode: int, uid: int, gid: int,
               rdev: int = 0, target: bytes | None = None, umask: int = 0) -> int:
        """Make a new inode of any type (from ``mode``) and name it. With ACLs on, the
        parent's default ACL or else *umask* shapes the mode (the kernel leaves both
        to the filesystem then); without, the kernel has applied the umask already."""
        pdir = self._directory(parent)
        _check_name(name)
        if name in pdir:
            raise fs_error(errno.EEXIST)
        if target is not None and len(target) >= PATH_MAX:
            raise fs_error(errno.ENAMETOOLONG)
        t = self.table
        if t.mode[parent] & stat.S_ISGID:
            gid = t.gid[parent]
            if stat.S_ISDIR(mode):
                mode |= stat.S_ISGID
        inherited = self._inherit_acl(parent, mode, umask) if self.acl else None
        if inherited is not None:
            mode = inherited[0]
        now = time.time_ns()
        ino = self._new_inode(mode, uid, gid, now)
        if inherited is not None:
            for xattr, value in inherited[1].items():
                self._store_xattr(ino, xattr, value)
        fmt = stat.S_IFMT(mode)
        if fmt == stat.S_IFDIR:
            self._make_directory(ino, parent)
            t.nlink[parent] += 1
        else:
            t.nlink[ino] = 1
            if fmt == stat.S_IFLNK:
                t.node[ino] = target = target or b""
                t.size[ino] = len(target)
                self.extra_bytes += sys.getsizeof(target)
            elif fmt in (stat.S_IFCHR, stat.S_IFBLK) and rdev:
                t.node[ino] = rdev
        pdir.add(name, ino)
        t.mtime_ns[parent] = t.ctime_ns[parent] = now
        return ino

    def _inherit_acl(self, parent: int, mode: int, umask: int) -> tuple[int, dict[bytes, bytes]]:
        """(mode, ACL xattrs) of a new inode in *parent*: posix_acl_create()."""
        if stat.S_ISLNK(mode):
            return mode, {}
        default = self.table.xattrs.get(parent, {}).get(posix_acl.DEFAULT)
        if default is None:
            return mode & ~(umask & 0o777), {}
        entries, mode, extended = posix_acl.create_masq(posix_acl.parse(default), mode)
        xattrs = {posix_acl.ACCESS: posix_acl.build(entries)} if extended else {}
        if stat.S_ISDIR(mode):
            xattrs[posix_acl.DEFAULT] = default
        return mode, xattrs

    def link(self, ino: int, parent: int, name: bytes) -> int:
        self.check(ino)
        pdir = self._directory(parent)
        _check_name(name)
        t = self.table
        if isinstance(t.node[ino], Directory):
            raise fs_error(errno.EPERM)
        if name in pdir:
            raise fs_error(errno.EEXIST)
        pdir.add(name, ino)
        t.nlink[ino] += 1
        t.ctime_ns[ino] = t.mtime_ns[parent] = t.ctime_ns[parent] = time.time_ns()
        return ino

    def unlink(self, parent: int, name: bytes) -> None:
        pdir = self._directory(parent)
        ino = self.lookup(parent, name)
        if isinstance(self.table.node[ino], Directory):
            raise fs_error(errno.EISDIR)
        pdir.remove(name)
        self._unname(parent, ino)

    def rmdir(self, parent: int, name: bytes) -> None:
        pdir = self._directory(parent)
        if name == b".":
            raise fs_error(errno.EINVAL)
        if name == b"..":
            raise fs_error(errno.ENOTEMPTY)
        ino = self.lookup(parent, name)
        victim = self.table.node[ino]
        if not isinstance(victim, Directory):
            raise fs_error(errno.ENOTDIR)
        if len(victim):
            raise fs_error(errno.ENOTEMPTY)
        pdir.remove(name)
        self._unname(parent, ino)

    def _unname(self, parent: int, ino: int) -> None:
        """Account for one name of ``ino`` in ``parent`` having gone."""
        t = self.table
        t.mtime_ns[parent] = t.ctime_ns[parent] = t.ctime_ns[ino] = time.time_ns()
        if isinstance(t.node[ino], Directory):
            t.nlink[ino] = 0
            t.nlink[parent] -= 1
        else:
            t.nlink[ino] -= 1
        self._maybe_free(ino)

    def rename(self, old_parent: int, old_name: bytes, new_parent: int, new_name: bytes,
               flags: int = 0) -> None:
        """rename(2)/renameat2(2) with RENAME_NOREPLACE and RENAME_EXCHANGE."""
        if flags & ~(RENAME_NOREPLACE | RENAME_EXCHANGE) or flags == RENAME_NOREPLACE | RENAME_EXCHANGE:
            raise fs_error(errno.EINVAL)
        src_dir = self._directory(old_parent)
        dst_dir = self._directory(new_parent)
        _check_name(new_name)
        moved = self.lookup(old_parent, old_name)
        if old_name in (b".", b".."):
            raise fs_error(errno.EBUSY)
        target = dst_dir.get(new_name)
        if flags & RENAME_EXCHANGE:
            if target is None:
                raise fs_error(errno.ENOENT)
        elif target is not None and flags & RENAME_NOREPLACE:
            raise fs_error(errno.EEXIST)
        node = self.table.node
        moved_dir = node[moved] if isinstance(node[moved], Directory) else None
        target_dir = node[target] if target is not None and isinstance(
            node[target], Directory) else None
        if moved_dir is not None:
            self._check_not_ancestor(moved, new_parent)
        if target_dir is not None and flags & RENAME_EXCHANGE:
            self._check_not_ancestor(target, old_parent)
        if target == moved:
            return
        t = self.table
        now = time.time_ns()
        if flags & RENAME_EXCHANGE:
            src_dir.replace(old_name, target)
            dst_dir.replace(new_name, moved)
            self._reparent(target_dir, old_parent, new_parent)
            self._reparent(moved_dir, new_parent, old_parent)
            t.ctime_ns[target] = now
        else:
            if target is not None:
                if moved_dir is not None and target_dir is None:
                    raise fs_error(errno.ENOTDIR)
                if moved_dir is None and target_dir is not None:
                    raise fs_error(errno.EISDIR)
                if target_dir is not None and len(target_dir):
                    raise fs_error(errno.ENOTEMPTY)
                dst_dir.remove(new_name)
                self._unname(new_parent, target)
            src_dir.remove(old_name)
            dst_dir.add(new_name, moved)
            self._reparent(moved_dir, new_parent, old_parent)
        t.ctime_ns[moved] = now
        t.mtime_ns[old_parent] = t.ctime_ns[old_parent] = now
        t.mtime_ns[new_parent] = t.ctime_ns[new_parent] = now

    def _check_not_ancestor(self, directory: int, of: int) -> None:
        """EINVAL if ``directory`` is ``of`` or one of its ancestors."""
        node = self.table.node
        ino = of
        while True:
            if ino == directory:
                raise fs_error(errno.EINVAL, "directory moved into itself")
            if ino == ROOT_INODE:
                return
            ino = node[ino].parent

    def _reparent(self, directory: Directory | None, new_parent: int, old_parent: int) -> None:
        if directory is not None and new_parent != old_parent:
            directory.parent = new_parent
            self.table.nlink[new_parent] += 1
            self.table.nlink[old_parent] -= 1

    # -- attributes --------------------------------------------------------------------

    async def set_size(self, ino: int, size: int) -> None:
        self.check(ino)
        t = self.table
        if isinstance(t.node[ino], Directory):
            raise fs_error(errno.EISDIR)
        if not stat.S_ISREG(t.mode[ino]):
            raise fs_error(errno.EINVAL)
        if size < t.size[ino] and t.data[ino]:
            await self.store.truncate(t.data[ino], size)
        t.size[ino] = size
        t.mtime_ns[ino] = t.ctime_ns[ino] = time.time_ns()

    def set_attributes(self, ino: int, mode: int | None = None, uid: int | None = None,
                       gid: int | None = None, atime_ns: int | None = None,
                       mtime_ns: int | None = None, ctime_ns: int | None = None) -> None:
        """chmod/chown/utimes: change what is given; ctime becomes now unless given.
        A chmod rewrites an access ACL's owner, group-class and other entries."""
        self.check(ino)
        t = self.table
        if mode is not None:
            mode = t.mode[ino] = stat.S_IFMT(t.mode[ino]) | stat.S_IMODE(mode)
            xattrs = t.xattrs.get(ino)
            access = xattrs.get(posix_acl.ACCESS) if xattrs else None
            if access is not None:
                xattrs[posix_acl.ACCESS] = posix_acl.build(     # same size
                    posix_acl.chmod(posix_acl.parse(access), mode))
        if uid is not None:
            t.uid[ino] = uid
        if gid is not None:
            t.gid[ino] = gid
        if atime_ns is not None:
            t.atime_ns[ino] = clamp_ns(atime_ns)
        if mtime_ns is not None:
            t.mtime_ns[ino] = clamp_ns(mtime_ns)
        t.ctime_ns[ino] = clamp_ns(ctime_ns) if ctime_ns is not None else time.time_ns()

    def kill_set_id(self, ino: int, caller: Caller) -> bool:
        """Clear set-ID bits as a truncation by *caller* does (``mode_after_truncate``).
        True if the mode changed."""
        return self._set_mode(ino, mode_after_truncate(self.table.mode[ino],
                                                       self.table.gid[ino], caller))

    def kill_set_group_id(self, ino: int, caller: Caller, gid: int) -> bool:
        """Clear a set-group-ID bit as a change by *caller* of a file that was in group
        *gid* does (``mode_after_change``). True if the mode changed."""
        return self._set_mode(ino, mode_after_change(self.table.mode[ino], gid, caller))

    def _set_mode(self, ino: int, mode: int) -> bool:
        if mode == self.table.mode[ino]:
            return False
        self.table.mode[ino] = mode
        self.table.ctime_ns[ino] = time.time_ns()
        return True

    def readlink(self, ino: int) -> bytes:
        self.check(ino)
        target = self.table.node[ino]
        if not isinstance(target, bytes):
            raise fs_error(errno.EINVAL)
        return target

    # -- data --------------------------------------------------------------------------

    async def read(self, ino: int, offset: int, length: int) -> bytes | bytearray:
        t = self.table
        length = min(length, t.size[ino] - offset)
        if length <= 0:
            return b""
        cmap = t.data[ino]
        data = await self.store.read_parallel(cmap, offset, length) if cmap else bytes(length)
        self._touch_atime(ino)
        return data

    def _touch_atime(self, ino: int) -> None:
        """relatime: update atime if it is not newer than mtime/ctime or a day old."""
        if not self.update_atime:
            return
        t = self.table
        atime = t.atime_ns[ino]
        now = time.time_ns()
        if atime <= t.mtime_ns[ino] or atime <= t.ctime_ns[ino] or now - atime >= _RELATIME_NS:
            t.atime_ns[ino] = now

    async def write(self, ino: int, offset: int, data: bytes) -> int:
        if not data:
            return 0              # POSIX: no other result (the kernel sends none such)
        written = await self.store.write(self._chunk_map(ino), offset, data)
        t = self.table
        if offset + written > t.size[ino]:
            t.size[ino] = offset + written
        t.mtime_ns[ino] = t.ctime_ns[ino] = time.time_ns()
        return written

    def list_dir(self, ino: int, after: int) -> Iterator[tuple[bytes, int, int]]:
        """(name, inode, cookie) after cookie ``after``, ``.`` and ``..`` first."""
        directory = self._directory(ino)
        if after < 1:
            yield b".", ino, 1
        if after < 2:
            yield b"..", directory.parent, 2
        yield from directory.entries_after(after)
        self._touch_atime(ino)

    # -- extended attributes -------------------------------------------------------------

    def _check_xattr_name(self, name: bytes) -> None:
        if len(name) > NAME_MAX:
            raise fs_error(errno.ERANGE)
        if self.acl and name in posix_acl.NAMES:
            return
        if not name.startswith(XATTR_NAMESPACES) or name in XATTR_NAMESPACES:
            raise fs_error(errno.EOPNOTSUPP)

    def get_xattr(self, ino: int, name: bytes) -> bytes:
        self.check(ino)
        self._check_xattr_name(name)
        try:
            return self.table.xattrs[ino][name]
        except KeyError:
            raise fs_error(errno.ENODATA) from None

    def set_xattr(self, ino: int, name: bytes, value: bytes,
                  caller: Caller | None = None) -> None:
        self.check(ino)
        self._check_xattr_name(name)
        if len(value) > XATTR_SIZE_MAX:
            raise fs_error(errno.E2BIG)
        if name in posix_acl.NAMES:
            self._set_acl(ino, name, value, caller)
        else:
            self._store_xattr(ino, name, value)
        self.table.ctime_ns[ino] = time.time_ns()

    def _set_acl(self, ino: int, name: bytes, value: bytes, caller: Caller | None) -> None:
        """Store an ACL the way posix_acl_update_mode() and tmpfs do. The kernel has
        checked the caller owns the inode, and refuses symlinks and default ACLs on
        non-directories; both are checked again here, for callers other than it."""
        entries = posix_acl.parse(value)
        t = self.table
        if stat.S_ISLNK(t.mode[ino]):
            raise fs_error(errno.EOPNOTSUPP)
        if name == posix_acl.DEFAULT:
            if not isinstance(t.node[ino], Directory):
                raise fs_error(errno.EACCES)
            self._store_xattr(ino, name, value)
            return
        mode, extended = posix_acl.equiv_mode(entries, t.mode[ino])
        if caller is not None and not caller.in_group_or_capable(t.gid[ino]):
            mode &= ~stat.S_ISGID
        t.mode[ino] = mode
        if extended:
            self._store_xattr(ino, name, value)
        elif name in t.xattrs.get(ino, {}):
            self._drop_xattr(ino, name)

    def _drop_xattr(self, ino: int, name: bytes) -> None:
        xattrs = self.table.xattrs[ino]
        self.extra_bytes -= sys.getsizeof(name) + sys.getsizeof(xattrs.pop(name))
        if not xattrs:
            del self.table.xattrs[ino]

    def _store_xattr(self, ino: int, name: bytes, value: bytes) -> None:
        xattrs = self.table.xattrs.setdefault(ino, {})
        old = xattrs.get(name)
        if old is not None:
            self.extra_bytes -= sys.getsizeof(name) + sys.getsizeof(old)
        xattrs[name] = value
        self.extra_bytes += sys.getsizeof(name) + sys.getsizeof(value)

    def remove_xattr(self, ino: int, name: bytes) -> None:
        self.check(ino)
        self._check_xattr_name(name)
        if name not in self.table.xattrs.get(ino, {}):
            if name in posix_acl.NAMES:
                return          # as tmpfs: removing an absent ACL succeeds
            raise fs_error(errno.ENODATA)
        self._drop_xattr(ino, name)
        self.table.ctime_ns[ino] = time.time_ns()

    def list_xattrs(self, ino: int, caller: Caller | None = None) -> list[bytes]:
        """The names of an inode's xattrs that *caller* may see (``visible_xattrs``)."""
        self.check(ino)
        return visible_xattrs(list(self.table.xattrs.get(ino, ())), caller)
