#!/usr/bin/env python3
"""tools/ceilingfs.py: the ceiling of zsfs's stack, measured in the same run as zsfs.

    python tools/ceilingfs.py [SOURCE] MOUNTPOINT [-o OPTIONS] [-f] [-d] [--requests FILE]

A pyfuse3 + trio filesystem that makes the kernel send exactly the requests zsfs
gets and answers them from plain Python containers: a ``bytearray`` per regular
file, a ``dict`` per directory, nothing else (no allocator, no compression, no
staging, no control directory). Whatever zsfs does slower than this on the same
work is zsfs's own cost; what this does slower than tmpfs is the cost of FUSE,
pyfuse3, trio and Python with zsfs's settings. tools/bench runs it as its
"ceiling" column.

The request pattern is zsfs's because the settings are taken from zsfs, not copied:

* options: ``zsfs.options.parse_options`` checks every ``-o`` option as zsfs does, and
  the libfuse options it makes (``default_permissions``, ``ro``, ``noatime``,
  ``allow_other``, ...) are passed on unchanged, except ``subtype=ceilingfs`` (the
  mount shows as ``fuse.ceilingfs``; ``fsname`` defaults to ``ceilingfs``). ``mode``,
  ``uid`` and ``gid`` make the root directory; ``noatime`` stops atime updates as in
  zsfs; ``noxattr`` answers every xattr request ENOSYS and ``acl`` turns on
  FUSE_POSIX_ACL with ACLs kept by zsfs's rules (``zsfs.acl``: mode from the access
  ACL, chmod rewrites it, default ACLs or else the umask shape new inodes); ``size``
  and ``nr_inodes`` only feed statfs (nothing is enforced); the storage options
  (``mem_limit``, ``chunk_size``, ``level``, ``compact_*``, ``recompress_*``,
  ``dictionary``) are ignored. A MountOptions field this file does not know is
  reported at start, not applied.
* mounting and serving: ``zsfs.cli``'s own ``_mount`` (``pyfuse3.init`` with those
  options), ``_serve`` (SIGTERM/SIGINT/SIGHUP unmount cleanly, read_ahead_kb raised to
  ``zsfs.cli.READAHEAD_KB``, then ``serve()``, which runs ``pyfuse3.main()`` with its
  default worker tasks, as zsfs does) and ``_daemonize`` (without ``-f``).
* the Operations class flag ``supports_dot_lookup`` is zsfs's ``Operations`` attribute;
  ``enable_acl`` follows ``acl`` and ``enable_writeback_cache`` follows ``writeback``
  as in zsfs.
* replies: entry and attribute timeouts ``zsfs.operations.TIMEOUT``, negative lookups
  cached for as long (``st_ino`` 0), ``st_blksize`` ``zsfs.operations.BLOCK_SIZE``,
  FLUSH answered ENOSYS (so the kernel stops sending it), ``FileInfo`` with pyfuse3's
  defaults as zsfs returns it (page cache kept), O_TRUNC done in OPEN (atomic O_TRUNC).
* xattrs answered by zsfs's rules (``zsfs.tree`` namespaces and limits): the GETXATTR
  of ``security.capability`` before each write(2) gets ENODATA, an ACL SETXATTR from
  ``cp -a`` gets EOPNOTSUPP.
* lookup counts as in zsfs: LOOKUP (``.`` and ``..`` too), CREATE, MKNOD, MKDIR,
  SYMLINK, LINK and each READDIRPLUS entry but ``.`` and ``..`` add one; FORGET takes
  them away; an inode goes when it has no name, no lookups and is not open.
* request accounting: every handler is counted with ``zsfs.requests.RequestStats``
  around the same span as zsfs's ``handler`` wrapper, so both pay the same for it.
  ``--requests FILE``: on SIGUSR1 the counters are written to FILE (atomically, in the
  format of zsfs's ``.zsfs/requests``) and cleared.

What it does differently, on purpose: reads copy a slice of the bytearray (zsfs
decompresses); writes go straight into the bytearray (zsfs stages chunks for its
compressors); FSYNC returns at once (zsfs waits for its staged chunks); a file
handle is the inode number (zsfs keeps a table); zsfs's set-ID rules (clearing
S_ISUID/S_ISGID on O_TRUNC, S_ISGID for callers outside the group, the group check
when an ACL sets the mode) and its hiding of ``trusted.*`` names from callers without
CAP_SYS_ADMIN are left out (they read the caller's credentials from /proc only for
set-ID files and trusted names; no request more or less); readdir cookies are positions in a
snapshot of the names taken when a listing starts at 0 (entries removed since are
skipped, entries added since are not shown; zsfs keeps per-entry cookies); the root
has no ``.zsfs``; limits (``size``, ``nr_inodes``, ``mem_limit``) are not enforced.
Holes are zero bytes in memory: a file that cannot be allocated gets ENOSPC, one past
what a bytearray can hold EFBIG. Mounted in zsfs's place, it passes tests/test_fs_posix.py
and, of tests/test_fs_data.py, all but the sparse-terabyte and compressed ``st_blocks``
tests.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def _reexec_in_venv() -> None:
    """Run under the repo's .venv python if zsfs is not importable here."""
    try:
        import zsfs  # noqa: F401
        return
    except ImportError:
        pass
    venv_python = REPO / ".venv" / "bin" / "python"
    if venv_python.exists() and os.environ.get("ZSFS_CEILING_REEXEC") != "1":
        os.environ["ZSFS_CEILING_REEXEC"] = "1"
        os.execv(str(venv_python), [str(venv_python), str(Path(__file__).resolve()), *sys.argv[1:]])


if __name__ == "__main__":
    _reexec_in_venv()

import argparse  # noqa: E402
import dataclasses  # noqa: E402
import errno  # noqa: E402
import functools  # noqa: E402
import logging  # noqa: E402
import signal  # noqa: E402
import stat  # noqa: E402
from time import perf_counter_ns, time_ns  # noqa: E402
from typing import Any, Awaitable, Callable, TypeVar  # noqa: E402

import pyfuse3  # noqa: E402
import trio  # noqa: E402
from pyfuse3 import EntryAttributes, FileInfo, FUSEError, StatvfsData  # noqa: E402

from zsfs import acl as posix_acl  # noqa: E402
from zsfs import cli  # noqa: E402
from zsfs.arena import PAGE_SIZE  # noqa: E402
from zsfs.operations import BLOCK_SIZE, TIMEOUT  # noqa: E402
from zsfs.operations import Operations as ZsfsOperations  # noqa: E402
from zsfs.options import MountOptions, OptionError, parse_options  # noqa: E402
from zsfs.requests import RequestStats  # noqa: E402
from zsfs.tree import (NAME_MAX, PATH_MAX, RENAME_EXCHANGE, RENAME_NOREPLACE,  # noqa: E402
                       ROOT_INODE, XATTR_NAMESPACES, XATTR_SIZE_MAX)

log = logging.getLogger("ceilingfs")

SUBTYPE = "ceilingfs"
_RELATIME_NS = 24 * 3600 * 10**9
# MountOptions fields and what the ceiling does with them; a field not listed here is
# an option zsfs gained after this file was written: reported, not applied.
_APPLIED = {"mode", "uid", "gid", "fuse_options", "size", "nr_inodes", "xattr", "acl",
            "writeback"}
_STORAGE_ONLY = {"mem_limit", "chunk_size", "level", "compact_threshold", "compact_interval",
                 "recompress_idle", "recompress_level", "dictionary"}

F = TypeVar("F", bound=Callable[..., Awaitable[Any]])


def handler(fn: F) -> F:
    """Count the request as zsfs's ``handler`` does; answer failures with a FUSEError."""
    name = fn.__name__

    @functools.wraps(fn)
    async def wrapper(self: Ceiling, *args: Any) -> Any:
        started = perf_counter_ns()
        try:
            return await fn(self, *args)
        except FUSEError:
            raise
        except MemoryError:
            raise FUSEError(errno.ENOSPC) from None
        except OverflowError:               # a hole too large for one bytearray
            raise FUSEError(errno.EFBIG) from None
        except OSError as e:                # zsfs.acl's EINVAL for a malformed ACL
            raise FUSEError(e.errno or errno.EIO) from None
        except Exception:
            log.exception("%s failed", name)
            raise FUSEError(errno.EIO) from None
        finally:
            self.requests.add(name, started)

    return wrapper  # type: ignore[return-value]


class Node:
    """One inode: ``data`` for regular files, ``entries`` for directories, ``target``
    for symlinks."""

    __slots__ = ("ino", "mode", "uid", "gid", "nlink", "rdev", "atime_ns", "mtime_ns",
                 "ctime_ns", "lookups", "opens", "data", "entries", "parent", "target", "xattrs")

    def __init__(self, ino: int, mode: int, uid: int, gid: int, now: int) -> None:
        self.ino = ino
        self.mode = mode
        self.uid = uid
        self.gid = gid
        self.nlink = 1
        self.rdev = 0
        self.atime_ns = self.mtime_ns = self.ctime_ns = now
        self.lookups = 0
        self.opens = 0
        self.data: bytearray | None = None
        self.entries: dict[bytes, int] | None = None
        self.parent = 0
        self.target: bytes | None = None
        self.xattrs: dict[bytes, bytes] | None = None


class DirHandle:
    """An open directory: the names it had when the listing (re)started at 0."""

    __slots__ = ("node", "names")

    def __init__(self, node: Node) -> None:
        self.node = node
        self.names: list[bytes] | None = None


def _check_name(name: bytes) -> None:
    if len(name) > NAME_MAX:
        raise FUSEError(errno.ENAMETOOLONG)
    if not name or b"/" in name or name in (b".", b".."):
        raise FUSEError(errno.EINVAL)


class Ceiling(pyfuse3.Operations):
    """zsfs's request handling over plain bytes."""

    supports_dot_lookup = ZsfsOperations.supports_dot_lookup

    def __init__(self, opts: MountOptions, requests_path: str | None = None) -> None:
        super().__init__()
        self.capacity = opts.size
        self.nr_inodes = opts.nr_inodes
        self.update_atime = "noatime" not in opts.fuse_options
        self.xattrs = getattr(opts, "xattr", True)
        self.acl = getattr(opts, "acl", False) and self.xattrs
        self.enable_acl = self.acl          # FUSE_POSIX_ACL, asked for at INIT
        self.enable_writeback_cache = getattr(opts, "writeback", False)
        self.requests = RequestStats()
        self.requests_path = requests_path
        self.nodes: dict[int, Node] = {}
        self.bytes = 0                      # sum of the files' lengths, for statfs
        self._next_ino = ROOT_INODE
        self._dirs: dict[int, DirHandle] = {}
        self._next_dir_fh = 1
        root = self._new_node(stat.S_IFDIR | (opts.mode & 0o7777), opts.uid, opts.gid)
        root.entries = {}
        root.parent = ROOT_INODE
        root.nlink = 2
        root.lookups = 1                    # the kernel never forgets the root

    async def serve(self) -> None:
        """Serve requests until unmounted (pyfuse3.main's defaults, as zsfs)."""
        async with trio.open_nursery() as nursery:
            if self.requests_path:
                await nursery.start(self._dump_requests_on_signal)
            await pyfuse3.main()
            nursery.cancel_scope.cancel()

    async def _dump_requests_on_signal(
            self, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        path = self.requests_path
        assert path is not None
        with trio.open_signal_receiver(signal.SIGUSR1) as signals:
            task_status.started()
            async for _ in signals:
                text = self.requests.render()
                self.requests.clear()
                tmp = f"{path}.{os.getpid()}.tmp"
                with open(tmp, "w") as f:
                    f.write(text)
                os.replace(tmp, path)

    # -- inodes --------------------------------------------------------------------

    def _new_node(self, mode: int, uid: int, gid: int) -> Node:
        node = Node(self._next_ino, mode, uid, gid, time_ns())
        self.nodes[node.ino] = node
        self._next_ino += 1
        return node

    def _node(self, ino: int) -> Node:
        node = self.nodes.get(ino)
        if node is None:
            raise FUSEError(errno.ENOENT)
        return node

    def _dir(self, ino: int) -> Node:
        node = self._node(ino)
        if node.entries is None:
            raise FUSEError(errno.ENOTDIR)
        return node

    def _maybe_free(self, node: Node) -> None:
        if node.nlink == 0 and node.lookups == 0 and node.opens == 0:
            del self.nodes[node.ino]
            if node.data is not None:
                self.bytes -= len(node.data)

    def _attr(self, node: Node) -> EntryAttributes:
        a = EntryAttributes()
        a.st_ino = node.ino
        a.st_mode = node.mode
        a.st_nlink = node.nlink
        a.st_uid = node.uid
        a.st_gid = node.gid
        a.st_rdev = node.rdev
        data = node.data
        if data is not None:
            a.st_size = len(data)
            a.st_blocks = (len(data) + 511) // 512
        elif node.target is not None:
            a.st_size = len(node.target)
        a.st_blksize = BLOCK_SIZE
        a.st_atime_ns = node.atime_ns
        a.st_mtime_ns = node.mtime_ns
        a.st_ctime_ns = node.ctime_ns
        a.entry_timeout = TIMEOUT
        a.attr_timeout = TIMEOUT
        return a

    def _named(self, node: Node) -> EntryAttributes:
        node.lookups += 1
        return self._attr(node)

    def _touch_atime(self, node: Node) -> None:
        """relatime, as zsfs: update atime if not newer than mtime/ctime or a day old."""
        if self.update_atime:
            now = time_ns()
            atime = node.atime_ns
            if atime <= node.mtime_ns or atime <= node.ctime_ns or now - atime >= _RELATIME_NS:
                node.atime_ns = now

    def _resize(self, node: Node, size: int) -> None:
        data = node.data
        if data is None:
            raise FUSEError(errno.EISDIR if node.entries is not None else errno.EINVAL)
        old = len(data)
        if size < old:
            del data[size:]
        elif size > old:
            data.extend(bytes(size - old))
        self.bytes += size - old
        node.mtime_ns = node.ctime_ns = time_ns()

    # -- names -----------------------------------------------------------------------

    @handler
    async def lookup(self, parent_inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> EntryAttributes:
        parent = self._dir(parent_inode)
        if name == b".":
            return self._named(parent)
        if name == b"..":
            return self._named(self.nodes[parent.parent])
        ino = parent.entries.get(name)  # type: ignore[union-attr]
        if ino is None:
            if len(name) > NAME_MAX:
                raise FUSEError(errno.ENAMETOOLONG)
            negative = EntryAttributes()
            negative.st_ino = 0
            negative.entry_timeout = TIMEOUT
            return negative
        return self._named(self.nodes[ino])

    async def forget(self, inode_list: list[tuple[int, int]]) -> None:
        # No reply goes to the kernel, so this must not raise at all.
        started = perf_counter_ns()
        try:
            for ino, nlookup in inode_list:
                node = self.nodes.get(ino)
                if node is not None:
                    node.lookups = max(0, node.lookups - nlookup)
                    self._maybe_free(node)
        except Exception:
            log.exception("forget%r failed", inode_list)
        self.requests.add("forget", started)

    @handler
    async def getattr(self, inode: int, ctx: pyfuse3.RequestContext) -> EntryAttributes:
        return self._attr(self._node(inode))

    @handler
    async def setattr(self, inode: int, attr: EntryAttributes, fields: pyfuse3.SetattrFields,
                      fh: int | None, ctx: pyfuse3.RequestContext) -> EntryAttributes:
        node = self._node(inode)
        if fields.update_size:
            self._resize(node, attr.st_size)
        if fields.update_mode:
            node.mode = stat.S_IFMT(node.mode) | stat.S_IMODE(attr.st_mode)
            access = (node.xattrs or {}).get(posix_acl.ACCESS)
            if access is not None:
                node.xattrs[posix_acl.ACCESS] = posix_acl.build(  # type: ignore[index]
                    posix_acl.chmod(posix_acl.parse(access), node.mode))
        if fields.update_uid:
            node.uid = attr.st_uid
        if fields.update_gid:
            node.gid = attr.st_gid
        if fields.update_atime:
            node.atime_ns = attr.st_atime_ns
        if fields.update_mtime:
            node.mtime_ns = attr.st_mtime_ns
        node.ctime_ns = attr.st_ctime_ns if fields.update_ctime else time_ns()
        return self._attr(node)

    @handler
    async def readlink(self, inode: int, ctx: pyfuse3.RequestContext) -> bytes:
        target = self._node(inode).target
        if target is None:
            raise FUSEError(errno.EINVAL)
        return target

    def _create(self, parent_inode: int, name: bytes, mode: int, ctx: pyfuse3.RequestContext) -> Node:
        """A new inode of any type (from ``mode``), named in ``parent_inode``."""
        parent = self._dir(parent_inode)
        _check_name(name)
        entries = parent.entries
        assert entries is not None
        if name in entries:
            raise FUSEError(errno.EEXIST)
        gid = ctx.gid
        if parent.mode & stat.S_ISGID:
            gid = parent.gid
            if stat.S_ISDIR(mode):
                mode |= stat.S_ISGID
        inherited = None
        if self.acl and not stat.S_ISLNK(mode):
            # FUSE_POSIX_ACL: the kernel leaves the umask and default ACLs to us
            inherited = self._inherit_acl(parent, mode, ctx.umask)
            mode = inherited[0]
        node = self._new_node(mode, ctx.uid, gid)
        if inherited and inherited[1]:
            node.xattrs = inherited[1]
        if stat.S_ISDIR(mode):
            node.entries = {}
            node.parent = parent.ino
            node.nlink = 2
            parent.nlink += 1
        elif stat.S_ISREG(mode):
            node.data = bytearray()
        entries[name] = node.ino
        parent.mtime_ns = parent.ctime_ns = node.ctime_ns
        return node

    @staticmethod
    def _inherit_acl(parent: Node, mode: int, umask: int) -> tuple[int, dict[bytes, bytes]]:
        """(mode, ACL xattrs) of a new inode in *parent*, as zsfs's tree makes them."""
        default = (parent.xattrs or {}).get(posix_acl.DEFAULT)
        if default is None:
            return mode & ~(umask & 0o777), {}
        entries, mode, extended = posix_acl.create_masq(posix_acl.parse(default), mode)
        xattrs = {posix_acl.ACCESS: posix_acl.build(entries)} if extended else {}
        if stat.S_ISDIR(mode):
            xattrs[posix_acl.DEFAULT] = default
        return mode, xattrs

    @handler
    async def mknod(self, parent_inode: int, name: bytes, mode: int, rdev: int,
                    ctx: pyfuse3.RequestContext) -> EntryAttributes:
        node = self._create(parent_inode, name, mode, ctx)
        if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
            node.rdev = rdev
        return self._named(node)

    @handler
    async def mkdir(self, parent_inode: int, name: bytes, mode: int,
                    ctx: pyfuse3.RequestContext) -> EntryAttributes:
        return self._named(self._create(parent_inode, name, stat.S_IFDIR | stat.S_IMODE(mode), ctx))

    @handler
    async def symlink(self, parent_inode: int, name: bytes, target: bytes,
                      ctx: pyfuse3.RequestContext) -> EntryAttributes:
        if len(target) >= PATH_MAX:
            raise FUSEError(errno.ENAMETOOLONG)
        node = self._create(parent_inode, name, stat.S_IFLNK | 0o777, ctx)
        node.target = target
        return self._named(node)

    @handler
    async def link(self, inode: int, new_parent_inode: int, new_name: bytes,
                   ctx: pyfuse3.RequestContext) -> EntryAttributes:
        node = self._node(inode)
        parent = self._dir(new_parent_inode)
        _check_name(new_name)
        if node.entries is not None:
            raise FUSEError(errno.EPERM)
        entries = parent.entries
        assert entries is not None
        if new_name in entries:
            raise FUSEError(errno.EEXIST)
        entries[new_name] = node.ino
        node.nlink += 1
        node.ctime_ns = parent.mtime_ns = parent.ctime_ns = time_ns()
        return self._named(node)

    def _unname(self, parent: Node, name: bytes, node: Node) -> None:
        del parent.entries[name]  # type: ignore[union-attr]
        parent.mtime_ns = parent.ctime_ns = node.ctime_ns = time_ns()
        if node.entries is not None:
            node.nlink = 0
            parent.nlink -= 1
        else:
            node.nlink -= 1
        self._maybe_free(node)

    def _child(self, parent: Node, name: bytes) -> Node:
        ino = parent.entries.get(name)  # type: ignore[union-attr]
        if ino is None:
            raise FUSEError(errno.ENAMETOOLONG if len(name) > NAME_MAX else errno.ENOENT)
        return self.nodes[ino]

    @handler
    async def unlink(self, parent_inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> None:
        parent = self._dir(parent_inode)
        node = self._child(parent, name)
        if node.entries is not None:
            raise FUSEError(errno.EISDIR)
        self._unname(parent, name, node)

    @handler
    async def rmdir(self, parent_inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> None:
        parent = self._dir(parent_inode)
        if name == b".":
            raise FUSEError(errno.EINVAL)
        if name == b"..":
            raise FUSEError(errno.ENOTEMPTY)
        node = self._child(parent, name)
        if node.entries is None:
            raise FUSEError(errno.ENOTDIR)
        if node.entries:
            raise FUSEError(errno.ENOTEMPTY)
        self._unname(parent, name, node)

    @handler
    async def rename(self, parent_inode_old: int, name_old: bytes, parent_inode_new: int,
                     name_new: bytes, flags: int, ctx: pyfuse3.RequestContext) -> None:
        if flags & ~(RENAME_NOREPLACE | RENAME_EXCHANGE) or flags == RENAME_NOREPLACE | RENAME_EXCHANGE:
            raise FUSEError(errno.EINVAL)
        src, dst = self._dir(parent_inode_old), self._dir(parent_inode_new)
        new_name = name_new
        _check_name(new_name)
        if name_old in (b".", b".."):
            raise FUSEError(errno.EBUSY)
        moved = self._child(src, name_old)
        target_ino = dst.entries.get(new_name)  # type: ignore[union-attr]
        target = self.nodes[target_ino] if target_ino is not None else None
        if flags & RENAME_EXCHANGE and target is None:
            raise FUSEError(errno.ENOENT)
        if flags & RENAME_NOREPLACE and target is not None:
            raise FUSEError(errno.EEXIST)
        if moved.entries is not None:
            self._check_not_ancestor(moved, dst)
        if target is not None and target.entries is not None and flags & RENAME_EXCHANGE:
            self._check_not_ancestor(target, src)
        if target is moved:
            return
        now = time_ns()
        if flags & RENAME_EXCHANGE:
            assert target is not None
            src.entries[name_old], dst.entries[new_name] = target.ino, moved.ino  # type: ignore[index]
            self._reparent(target, src, dst)
            self._reparent(moved, dst, src)
            target.ctime_ns = now
        else:
            if target is not None:
                if moved.entries is not None and target.entries is None:
                    raise FUSEError(errno.ENOTDIR)
                if moved.entries is None and target.entries is not None:
                    raise FUSEError(errno.EISDIR)
                if target.entries:
                    raise FUSEError(errno.ENOTEMPTY)
                self._unname(dst, new_name, target)
            del src.entries[name_old]  # type: ignore[union-attr]
            dst.entries[new_name] = moved.ino  # type: ignore[index]
            self._reparent(moved, dst, src)
        moved.ctime_ns = src.mtime_ns = src.ctime_ns = dst.mtime_ns = dst.ctime_ns = now

    def _check_not_ancestor(self, directory: Node, of: Node) -> None:
        ino = of.ino
        while True:
            if ino == directory.ino:
                raise FUSEError(errno.EINVAL)
            if ino == ROOT_INODE:
                return
            ino = self.nodes[ino].parent

    @staticmethod
    def _reparent(node: Node, new_parent: Node, old_parent: Node) -> None:
        if node.entries is not None and new_parent is not old_parent:
            node.parent = new_parent.ino
            new_parent.nlink += 1
            old_parent.nlink -= 1

    # -- files -------------------------------------------------------------------------

    @handler
    async def open(self, inode: int, flags: int, ctx: pyfuse3.RequestContext) -> FileInfo:
        node = self._node(inode)
        if flags & os.O_TRUNC and node.data is not None:
            self._resize(node, 0)           # atomic O_TRUNC: ours to do, as in zsfs
        node.opens += 1
        return FileInfo(fh=inode)

    @handler
    async def create(self, parent_inode: int, name: bytes, mode: int, flags: int,
                     ctx: pyfuse3.RequestContext) -> tuple[FileInfo, EntryAttributes]:
        node = self._create(parent_inode, name, stat.S_IFREG | stat.S_IMODE(mode), ctx)
        node.opens += 1
        return FileInfo(fh=node.ino), self._named(node)

    @handler
    async def read(self, fh: int, off: int, size: int) -> bytes | bytearray:
        node = self.nodes[fh]
        data = node.data
        if off >= len(data):  # type: ignore[arg-type]
            return b""
        self._touch_atime(node)
        return data[off:off + size]  # type: ignore[index]

    @handler
    async def write(self, fh: int, off: int, buf: bytes) -> int:
        node = self.nodes[fh]
        data = node.data
        assert data is not None
        old = len(data)
        if off > old:
            data.extend(bytes(off - old))
        data[off:off + len(buf)] = buf
        self.bytes += len(data) - old
        node.mtime_ns = node.ctime_ns = time_ns()
        return len(buf)

    @handler
    async def flush(self, fh: int) -> None:
        raise FUSEError(errno.ENOSYS)

    @handler
    async def release(self, fh: int) -> None:
        node = self.nodes[fh]
        node.opens -= 1
        self._maybe_free(node)

    @handler
    async def fsync(self, fh: int, datasync: bool) -> None:
        pass

    # -- directories -------------------------------------------------------------------

    @handler
    async def opendir(self, inode: int, ctx: pyfuse3.RequestContext) -> int:
        node = self._dir(inode)
        node.opens += 1
        fh = self._next_dir_fh
        self._next_dir_fh += 1
        self._dirs[fh] = DirHandle(node)
        return fh

    @handler
    async def readdir(self, fh: int, start_id: int, token: pyfuse3.ReaddirToken) -> None:
        handle = self._dirs[fh]
        node = handle.node
        entries = node.entries
        assert entries is not None
        if start_id == 0 or handle.names is None:
            handle.names = list(entries)
        if start_id < 1 and not pyfuse3.readdir_reply(token, b".", self._attr(node), 1):
            return
        if start_id < 2 and not pyfuse3.readdir_reply(
                token, b"..", self._attr(self.nodes[node.parent]), 2):
            return
        names = handle.names
        nodes = self.nodes
        for i in range(max(start_id - 2, 0), len(names)):
            name = names[i]
            ino = entries.get(name)
            if ino is None:                 # removed since the listing started
                continue
            child = nodes[ino]
            if not pyfuse3.readdir_reply(token, name, self._attr(child), i + 3):
                return
            child.lookups += 1
        self._touch_atime(node)

    @handler
    async def releasedir(self, fh: int) -> None:
        node = self._dirs.pop(fh).node
        node.opens -= 1
        self._maybe_free(node)

    @handler
    async def fsyncdir(self, fh: int, datasync: bool) -> None:
        pass

    @handler
    async def statfs(self, ctx: pyfuse3.RequestContext) -> StatvfsData:
        used = -(-self.bytes // PAGE_SIZE)
        blocks = self.capacity // PAGE_SIZE if self.capacity else used
        s = StatvfsData()
        s.f_bsize = s.f_frsize = PAGE_SIZE
        s.f_blocks = blocks
        s.f_bfree = s.f_bavail = max(0, blocks - used)
        s.f_files = self.nr_inodes
        s.f_ffree = s.f_favail = max(0, self.nr_inodes - len(self.nodes)) if self.nr_inodes else 0
        s.f_namemax = NAME_MAX
        return s

    # -- extended attributes -------------------------------------------------------------

    def _xattr_target(self, inode: int, name: bytes | None = None) -> Node:
        """The inode, after zsfs's checks: ENOSYS under ``noxattr`` (the kernel then
        answers every later xattr call itself), then the name's namespace."""
        if not self.xattrs:
            raise FUSEError(errno.ENOSYS)
        node = self._node(inode)
        if name is not None:
            if len(name) > NAME_MAX:
                raise FUSEError(errno.ERANGE)
            if not (self.acl and name in posix_acl.NAMES) and (
                    not name.startswith(XATTR_NAMESPACES) or name in XATTR_NAMESPACES):
                raise FUSEError(errno.EOPNOTSUPP)
        return node

    @handler
    async def setxattr(self, inode: int, name: bytes, value: bytes, ctx: pyfuse3.RequestContext) -> None:
        node = self._xattr_target(inode, name)
        if len(value) > XATTR_SIZE_MAX:
            raise FUSEError(errno.E2BIG)
        if node.xattrs is None:
            node.xattrs = {}
        if name in posix_acl.NAMES:
            self._set_acl(node, name, value)
        else:
            node.xattrs[name] = value
        node.ctime_ns = time_ns()

    @staticmethod
    def _set_acl(node: Node, name: bytes, value: bytes) -> None:
        """Store an ACL as zsfs does (posix_acl_update_mode(), tmpfs's rules)."""
        entries = posix_acl.parse(value)    # EINVAL (an OSError) if malformed
        if stat.S_ISLNK(node.mode):
            raise FUSEError(errno.EOPNOTSUPP)
        xattrs = node.xattrs
        assert xattrs is not None
        if name == posix_acl.DEFAULT:
            if node.entries is None:
                raise FUSEError(errno.EACCES)
            xattrs[name] = value
            return
        node.mode, extended = posix_acl.equiv_mode(entries, node.mode)
        if extended:
            xattrs[name] = value
        else:
            xattrs.pop(name, None)

    @handler
    async def getxattr(self, inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> bytes:
        node = self._xattr_target(inode, name)
        try:
            return node.xattrs[name]  # type: ignore[index]
        except (KeyError, TypeError):
            raise FUSEError(errno.ENODATA) from None

    @handler
    async def listxattr(self, inode: int, ctx: pyfuse3.RequestContext) -> list[bytes]:
        return list(self._xattr_target(inode).xattrs or ())

    @handler
    async def removexattr(self, inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> None:
        node = self._xattr_target(inode, name)
        if not node.xattrs or name not in node.xattrs:
            if name in posix_acl.NAMES:
                return                      # as zsfs and tmpfs: an absent ACL is no error
            raise FUSEError(errno.ENODATA)
        del node.xattrs[name]
        node.ctime_ns = time_ns()


# -- the command -------------------------------------------------------------------------

def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="ceilingfs",
        usage="%(prog)s [SOURCE] MOUNTPOINT [-o OPTIONS] [-f] [-d] [--requests FILE]",
        description="Mount the ceiling filesystem (zsfs's request handling over plain "
                    "bytes) on MOUNTPOINT. Takes zsfs's options.")
    p.add_argument("paths", nargs="+", metavar="MOUNTPOINT")
    p.add_argument("-o", dest="options", action="append", default=[], metavar="OPTIONS",
                   help="comma-separated zsfs mount options")
    p.add_argument("-f", "--foreground", action="store_true", help="stay in the foreground")
    p.add_argument("-d", "--debug", action="store_true", help="libfuse debug output; implies -f")
    p.add_argument("--requests", metavar="FILE",
                   help="on SIGUSR1, write the request counters to FILE and clear them")
    return p


def mount_options(option_args: list[str], source: str) -> MountOptions:
    """zsfs's options for *option_args*, with this filesystem's subtype and fsname."""
    opts = parse_options(option_args, source)
    fuse = tuple(f"subtype={SUBTYPE}" if o.startswith("subtype=") else o
                 for o in opts.fuse_options)
    return dataclasses.replace(opts, fuse_options=fuse)


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_intermixed_args(argv)
    if len(args.paths) > 2:
        parser.error(f"unexpected argument {args.paths[2]!r}")
    mountpoint = os.path.abspath(args.paths[-1])
    source = args.paths[0] if len(args.paths) == 2 else SUBTYPE
    try:
        opts = mount_options(args.options, source)
    except OptionError as e:
        parser.error(str(e))
    if not os.path.isdir(mountpoint):
        parser.error(f"mount point {mountpoint!r} is not a directory")
    if args.debug:
        opts = dataclasses.replace(opts, fuse_options=(*opts.fuse_options, "debug"))
    foreground = args.foreground or args.debug
    if foreground:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    unknown = sorted(f.name for f in dataclasses.fields(MountOptions)
                     if f.name not in _APPLIED | _STORAGE_ONLY)
    if unknown:
        log.warning("zsfs options the ceiling does not apply: %s", ", ".join(unknown))
    ops = Ceiling(opts, os.path.abspath(args.requests) if args.requests else None)
    failure = cli._mount(ops, mountpoint, opts)
    if failure:
        print(f"ceilingfs: error: cannot mount {mountpoint!r}: {failure}", file=sys.stderr)
        return 1
    ready = (lambda: None) if foreground else cli._daemonize()
    log.info("mounted on %s (fuse options %s)", mountpoint, ",".join(opts.fuse_options))
    return cli._serve(ops, mountpoint, ready)


if __name__ == "__main__":
    sys.exit(main())
