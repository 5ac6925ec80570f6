"""FUSE operations: translate kernel requests into calls on the tree and the control
directory, and their outcomes into replies.

This layer checks and translates; it keeps no storage logic. Every handler
answers with data or a ``FUSEError``: the tree's ``OSError`` becomes its errno,
``NoSpace`` becomes ``ENOSPC``, and anything unexpected is logged with its
traceback and answered with ``EIO`` so that one bug never takes the mount down.

Choices that shape the request stream (see README, "Performance"):

* entry and attribute timeouts are long and negative lookups are cached, because
  every change goes through this daemon and the kernel invalidates what it changes;
* FLUSH is answered with ENOSYS once, after which the kernel stops sending it;
* the kernel's writeback cache stays off unless ``-o writeback`` asks for it, so that
  ENOSPC (``size=``, ``mem_limit=``) reaches the ``write(2)`` that caused it rather
  than a later ``fsync(2)`` or ``close(2)``;
* control files are opened with direct I/O, so every read sees fresh values.

The file handle of an open tree inode is its inode number (the tree counts opens),
so a READ or WRITE needs no table of open files.

Lookup counts: ``lookup``, ``create``, ``mknod``, ``mkdir``, ``symlink``, ``link``
and each readdirplus entry other than ``.`` and ``..`` add one; ``forget`` takes
them away. The control directory's inodes are static and not counted.
"""

from __future__ import annotations

import errno
import functools
import logging
import os
import stat
from time import perf_counter_ns
from typing import Any, Awaitable, Callable, TypeVar

import pyfuse3
import trio
from pyfuse3 import EntryAttributes, FileInfo, FUSEError, StatvfsData

from .arena import PAGE_SIZE
from .chunkstore import ChunkStore, NoSpace
from .compactor import Compactor
from .control import CONTROL_DIR_INO, CONTROL_NAME, Control
from .credentials import Caller
from .options import MountOptions
from .recompress import Recompressor
from .requests import RequestStats
from .tree import NAME_MAX, ROOT_INODE, Tree
from .zsmalloc import Pool

log = logging.getLogger(__name__)

TIMEOUT = 300.0
BLOCK_SIZE = 1 << 20           # st_blksize: makes cp(1) and friends use 1 MiB requests
CONTROL_COOKIE = 1 << 62       # .zsfs is listed last in the root directory
CONTROL_FH = 1 << 62           # file handles of control files start here; a tree
                               # inode's file handle is its inode number

F = TypeVar("F", bound=Callable[..., Awaitable[Any]])


def handler(fn: F) -> F:
    """Answer every failure of a request handler with a FUSEError; count the request."""
    name = fn.__name__

    @functools.wraps(fn)
    async def wrapper(self: Operations, *args: Any) -> Any:
        if log.isEnabledFor(logging.DEBUG):
            shown = args[:-1] if name in _WITH_CTX else args
            log.debug("%s(%s)", name, ", ".join(_brief(a) for a in shown))
        started = perf_counter_ns()
        try:
            return await fn(self, *args)
        except FUSEError:
            raise
        except NoSpace:
            raise FUSEError(errno.ENOSPC) from None
        except OSError as e:
            if e.errno is None:
                log.exception("%s failed", name)
                raise FUSEError(errno.EIO) from None
            raise FUSEError(e.errno) from None
        except Exception:
            log.exception("%s failed", name)
            raise FUSEError(errno.EIO) from None
        finally:
            self.requests.add(name, started)

    return wrapper  # type: ignore[return-value]


def _brief(arg: Any) -> str:
    """A request argument for the debug log: data buffers by their length only."""
    if isinstance(arg, (bytes, bytearray, memoryview)) and len(arg) > 64:
        return f"<{len(arg)} bytes>"
    return repr(arg)


_WITH_CTX = frozenset({
    "lookup", "getattr", "setattr", "readlink", "mknod", "mkdir", "unlink", "rmdir",
    "symlink", "rename", "link", "open", "opendir", "statfs", "setxattr", "getxattr",
    "listxattr", "removexattr", "create",
})


class _ControlHandle:
    """An open control file: its rendering at open time."""

    __slots__ = ("ino", "content")

    def __init__(self, ino: int, content: bytes) -> None:
        self.ino = ino
        self.content = content


class Operations(pyfuse3.Operations):
    """pyfuse3 request handlers over one Tree and its Control directory."""

    supports_dot_lookup = True
    enable_writeback_cache = False

    def __init__(self, tree: Tree, control: Control, compactor: Compactor,
                 xattrs: bool = True, recompressor: Recompressor | None = None,
                 writeback: bool = False) -> None:
        super().__init__()
        self.xattrs = xattrs
        self.enable_writeback_cache = writeback      # asked for at INIT
        # FUSE_POSIX_ACL: the kernel evaluates ACLs; the tree stores and applies them
        self.enable_acl = tree.acl and xattrs
        self.tree = tree
        self.store: ChunkStore = tree.store
        self.pool: Pool = tree.store.pool
        self.control = control
        self.compactor = compactor
        self.recompressor = recompressor
        self.requests = control.requests
        self._control_open: dict[int, _ControlHandle] = {}
        self._next_fh = CONTROL_FH

    async def serve(self) -> None:
        """Serve requests until unmounted, with the background compactor, compressors
        and recompressor running."""
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self.compactor.run)
            nursery.start_soon(self.store.run)
            if self.recompressor is not None:
                nursery.start_soon(self.recompressor.run)
            await pyfuse3.main()
            nursery.cancel_scope.cancel()

    def stop_long_work(self) -> None:
        """Unmounting: end a compaction or recompression pass under way at its next
        slice, so that a stop signal is not held up by ``echo all > recompress``."""
        self.compactor.stop()
        if self.recompressor is not None:
            self.recompressor.stop()

    # -- attributes ------------------------------------------------------------------

    def _attr(self, ino: int) -> EntryAttributes:
        _, mode, nlink, uid, gid, rdev, size, stored, atime, mtime, ctime = self.tree.stat(ino)
        a = EntryAttributes()
        a.st_ino = ino
        a.st_mode = mode
        a.st_nlink = nlink + (ino == ROOT_INODE)   # .zsfs is a subdirectory
        a.st_uid = uid
        a.st_gid = gid
        a.st_rdev = rdev
        a.st_size = size
        a.st_blksize = BLOCK_SIZE
        a.st_blocks = (stored + 511) // 512
        a.st_atime_ns = atime
        a.st_mtime_ns = mtime
        a.st_ctime_ns = ctime
        a.entry_timeout = TIMEOUT
        a.attr_timeout = TIMEOUT
        return a

    def _control_attr(self, ino: int) -> EntryAttributes:
        control = self.control
        a = EntryAttributes()
        a.st_ino = ino
        a.st_mode = control.mode(ino)
        a.st_nlink = 2 if ino == CONTROL_DIR_INO else 1
        a.st_uid = control.uid
        a.st_gid = control.gid
        a.st_blksize = PAGE_SIZE
        a.st_atime_ns = a.st_mtime_ns = a.st_ctime_ns = control.mtime_ns
        a.entry_timeout = TIMEOUT
        a.attr_timeout = 0
        return a

    def _named(self, ino: int) -> EntryAttributes:
        """Attributes of an inode the kernel now holds one more reference to."""
        return self._attr(self.tree.remember(ino))

    def _check_writable_dir(self, parent: int, name: bytes | None = None) -> None:
        """EPERM for changes inside .zsfs or to the name .zsfs itself."""
        if parent == CONTROL_DIR_INO or (parent == ROOT_INODE and name == CONTROL_NAME):
            raise FUSEError(errno.EPERM)

    # -- names -------------------------------------------------------------------------

    @handler
    async def lookup(self, parent_inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> EntryAttributes:
        if parent_inode == CONTROL_DIR_INO:
            if name == b"..":
                return self._named(ROOT_INODE)
            ino = CONTROL_DIR_INO if name == b"." else self.control.lookup(name)
            return self._control_attr(ino)
        if parent_inode == ROOT_INODE and name == CONTROL_NAME:
            return self._control_attr(CONTROL_DIR_INO)
        try:
            return self._named(self.tree.lookup(parent_inode, name))
        except OSError as e:
            if e.errno != errno.ENOENT or name == b"..":
                raise
            negative = EntryAttributes()
            negative.st_ino = 0
            negative.entry_timeout = TIMEOUT
            return negative

    async def forget(self, inode_list: list[tuple[int, int]]) -> None:
        # No reply goes to the kernel, so this must not raise at all.
        started = perf_counter_ns()
        try:
            for ino, nlookup in inode_list:
                if not self.control.owns(ino):
                    self.tree.forget(ino, nlookup)
            self.compactor.kick()
        except Exception:
            log.exception("forget%r failed", inode_list)
        self.requests.add("forget", started)

    @handler
    async def getattr(self, inode: int, ctx: pyfuse3.RequestContext) -> EntryAttributes:
        if self.control.owns(inode):
            return self._control_attr(inode)
        return self._attr(inode)

    @handler
    async def setattr(self, inode: int, attr: EntryAttributes, fields: pyfuse3.SetattrFields,
                      fh: int | None, ctx: pyfuse3.RequestContext) -> EntryAttributes:
        if self.control.owns(inode):
            # Shell redirections truncate before they write, and under the writeback
            # cache the kernel sets mtime and ctime before each write; nothing else
            # may change.
            if fields.update_mode or fields.update_uid or fields.update_gid:
                raise FUSEError(errno.EPERM)
            if fields.update_size:
                allowed = attr.st_size == 0
            else:
                allowed = (self.enable_writeback_cache and fields.update_mtime
                           and not fields.update_atime)
            if allowed:
                return self._control_attr(inode)
            raise FUSEError(errno.EPERM)
        gid = self.tree.stat(inode).gid
        if fields.update_size:
            await self.tree.set_size(inode, attr.st_size)
            self.compactor.kick()
        self.tree.set_attributes(
            inode,
            mode=attr.st_mode if fields.update_mode else None,
            uid=attr.st_uid if fields.update_uid else None,
            gid=attr.st_gid if fields.update_gid else None,
            atime_ns=attr.st_atime_ns if fields.update_atime else None,
            mtime_ns=attr.st_mtime_ns if fields.update_mtime else None,
            ctime_ns=attr.st_ctime_ns if fields.update_ctime else None,
        )
        if fields.update_size or not (fields.update_atime or fields.update_mtime):
            # A chmod, chown, truncate or a write's privilege kill (which arrives with
            # no field at all when the kernel found nothing it clears itself); not a
            # utimes. Under the writeback cache a truncate carries the times too.
            self.tree.kill_set_group_id(inode, Caller.of(ctx), gid)
        return self._attr(inode)

    @handler
    async def readlink(self, inode: int, ctx: pyfuse3.RequestContext) -> bytes:
        return self.tree.readlink(inode)

    @handler
    async def mknod(self, parent_inode: int, name: bytes, mode: int, rdev: int,
                    ctx: pyfuse3.RequestContext) -> EntryAttributes:
        self._check_writable_dir(parent_inode)
        return self._named(self._create(parent_inode, name, mode, ctx, rdev=rdev))

    @handler
    async def mkdir(self, parent_inode: int, name: bytes, mode: int,
                    ctx: pyfuse3.RequestContext) -> EntryAttributes:
        self._check_writable_dir(parent_inode)
        mode = stat.S_IFDIR | stat.S_IMODE(mode)
        return self._named(self._create(parent_inode, name, mode, ctx))

    @handler
    async def symlink(self, parent_inode: int, name: bytes, target: bytes,
                      ctx: pyfuse3.RequestContext) -> EntryAttributes:
        self._check_writable_dir(parent_inode)
        mode = stat.S_IFLNK | 0o777
        return self._named(self._create(parent_inode, name, mode, ctx, target=target))

    def _create(self, parent: int, name: bytes, mode: int, ctx: pyfuse3.RequestContext,
                **kwargs: Any) -> int:
        if parent == ROOT_INODE and name == CONTROL_NAME:
            raise FUSEError(errno.EEXIST)
        return self.tree.create(parent, name, mode, ctx.uid, ctx.gid, umask=ctx.umask,
                                **kwargs)

    @handler
    async def unlink(self, parent_inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> None:
        self._check_writable_dir(parent_inode, name)
        self.tree.unlink(parent_inode, name)
        self.compactor.kick()

    @handler
    async def rmdir(self, parent_inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> None:
        self._check_writable_dir(parent_inode, name)
        self.tree.rmdir(parent_inode, name)

    @handler
    async def rename(self, parent_inode_old: int, name_old: bytes, parent_inode_new: int,
                     name_new: bytes, flags: int, ctx: pyfuse3.RequestContext) -> None:
        self._check_writable_dir(parent_inode_old, name_old)
        self._check_writable_dir(parent_inode_new, name_new)
        self.tree.rename(parent_inode_old, name_old, parent_inode_new, name_new, flags)
        self.compactor.kick()

    @handler
    async def link(self, inode: int, new_parent_inode: int, new_name: bytes,
                   ctx: pyfuse3.RequestContext) -> EntryAttributes:
        if self.control.owns(inode):
            raise FUSEError(errno.EPERM)
        self._check_writable_dir(new_parent_inode)
        if new_parent_inode == ROOT_INODE and new_name == CONTROL_NAME:
            raise FUSEError(errno.EEXIST)
        return self._named(self.tree.link(inode, new_parent_inode, new_name))

    # -- files -------------------------------------------------------------------------

    def _control_fh(self, ino: int, content: bytes) -> int:
        fh = self._next_fh
        self._next_fh += 1
        self._control_open[fh] = _ControlHandle(ino, content)
        return fh

    @handler
    async def open(self, inode: int, flags: int, ctx: pyfuse3.RequestContext) -> FileInfo:
        if self.control.owns(inode):
            content = b"" if flags & os.O_ACCMODE == os.O_WRONLY else self.control.render(inode)
            return FileInfo(fh=self._control_fh(inode, content), direct_io=True)
        if flags & os.O_TRUNC and self.tree.is_file(inode):
            # libfuse negotiates atomic O_TRUNC, so truncation is ours to do, and so is
            # clearing set-ID bits: the kernel drops the SETATTR that would have.
            await self.tree.set_size(inode, 0)
            self.compactor.kick()
            # The kernel's cached mode needs no notification: an O_TRUNC open marks
            # the size stale, so the next stat, and the read exec starts with, fetch
            # all attributes again (measured: test_fs_security's O_TRUNC exec test).
            self.tree.kill_set_id(inode, Caller.of(ctx))
        self.tree.open(inode)
        return FileInfo(fh=inode)

    @handler
    async def create(self, parent_inode: int, name: bytes, mode: int, flags: int,
                     ctx: pyfuse3.RequestContext) -> tuple[FileInfo, EntryAttributes]:
        self._check_writable_dir(parent_inode)
        mode = stat.S_IFREG | stat.S_IMODE(mode)
        ino = self._create(parent_inode, name, mode, ctx)
        self.tree.open(ino)
        return FileInfo(fh=ino), self._named(ino)

    @handler
    async def read(self, fh: int, off: int, size: int) -> bytes | bytearray:
        if fh >= CONTROL_FH:
            return self._control_open[fh].content[off:off + size]
        return await self.tree.read(fh, off, size)

    @handler
    async def write(self, fh: int, off: int, buf: bytes) -> int:
        if fh >= CONTROL_FH:
            await self.control.write(self._control_open[fh].ino, buf)
            return len(buf)
        return await self.tree.write(fh, off, buf)

    @handler
    async def flush(self, fh: int) -> None:
        raise FUSEError(errno.ENOSYS)

    @handler
    async def release(self, fh: int) -> None:
        if fh >= CONTROL_FH:
            del self._control_open[fh]
        else:
            self.tree.close(fh)
            self.compactor.kick()

    @handler
    async def fsync(self, fh: int, datasync: bool) -> None:
        await self.store.flush()

    # -- directories -------------------------------------------------------------------

    @handler
    async def opendir(self, inode: int, ctx: pyfuse3.RequestContext) -> int:
        if self.control.owns(inode):
            return self._control_fh(inode, b"")
        self.tree.open_dir(inode)
        return inode

    @handler
    async def readdir(self, fh: int, start_id: int, token: pyfuse3.ReaddirToken) -> None:
        if fh >= CONTROL_FH:
            self._readdir_control(start_id, token)
            return
        for name, ino, cookie in self.tree.list_dir(fh, start_id):
            if not pyfuse3.readdir_reply(token, name, self._attr(ino), cookie):
                return
            if name not in (b".", b".."):
                self.tree.remember(ino)
        if fh == ROOT_INODE and start_id < CONTROL_COOKIE:
            pyfuse3.readdir_reply(token, CONTROL_NAME, self._control_attr(CONTROL_DIR_INO),
                                  CONTROL_COOKIE)

    def _readdir_control(self, start_id: int, token: pyfuse3.ReaddirToken) -> None:
        entries = [(b".", self._control_attr(CONTROL_DIR_INO)),
                   (b"..", self._attr(ROOT_INODE))]
        entries += [(f.name, self._control_attr(f.ino)) for f in self.control.files.values()]
        for cookie, (name, attr) in enumerate(entries[start_id:], start_id + 1):
            if not pyfuse3.readdir_reply(token, name, attr, cookie):
                return

    @handler
    async def releasedir(self, fh: int) -> None:
        if fh >= CONTROL_FH:
            del self._control_open[fh]
        else:
            self.tree.close(fh)

    @handler
    async def fsyncdir(self, fh: int, datasync: bool) -> None:
        pass

    @handler
    async def statfs(self, ctx: pyfuse3.RequestContext) -> StatvfsData:
        """Block counts from ``size=`` and, when set, what ``mem_limit`` leaves at the
        current compression ratio; inode counts from ``nr_inodes=``."""
        store, pool, tree = self.store, self.pool, self.tree
        used = -(-store.orig_bytes // PAGE_SIZE)
        free_candidates = []
        if store.capacity:
            free_candidates.append(max(0, store.capacity // PAGE_SIZE - used))
        if pool.mem_limit:
            held = pool.pages_used * PAGE_SIZE
            ratio = max(1.0, (store.orig_bytes - store.staged_bytes) / held) if held else 1.0
            room = max(0, pool.mem_limit - held - pool.reserved_pages * PAGE_SIZE)
            free_candidates.append(int(room * ratio) // PAGE_SIZE)
        free = min(free_candidates) if free_candidates else 0
        s = StatvfsData()
        s.f_bsize = s.f_frsize = PAGE_SIZE
        s.f_blocks = store.capacity // PAGE_SIZE if store.capacity else used + free
        s.f_bfree = s.f_bavail = free
        s.f_files = tree.nr_inodes
        s.f_ffree = s.f_favail = max(0, tree.nr_inodes - tree.inode_count) if tree.nr_inodes else 0
        s.f_namemax = NAME_MAX
        return s

    # -- extended attributes -------------------------------------------------------------

    def _check_xattrs(self) -> None:
        """ENOSYS under ``noxattr``. The kernel then fails every later xattr call on the
        mount with EOPNOTSUPP by itself, and stops asking for ``security.capability``
        before each write(2): a round trip less per write."""
        if not self.xattrs:
            raise FUSEError(errno.ENOSYS)

    @handler
    async def setxattr(self, inode: int, name: bytes, value: bytes, ctx: pyfuse3.RequestContext) -> None:
        self._check_xattrs()
        if self.control.owns(inode):
            raise FUSEError(errno.EPERM)
        self.tree.set_xattr(inode, name, value, Caller.of(ctx))

    @handler
    async def getxattr(self, inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> bytes:
        self._check_xattrs()
        if self.control.owns(inode):
            raise FUSEError(errno.ENODATA)
        return self.tree.get_xattr(inode, name)

    @handler
    async def listxattr(self, inode: int, ctx: pyfuse3.RequestContext) -> list[bytes]:
        self._check_xattrs()
        if self.control.owns(inode):
            return []
        return self.tree.list_xattrs(inode, Caller.of(ctx))

    @handler
    async def removexattr(self, inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> None:
        self._check_xattrs()
        if self.control.owns(inode):
            raise FUSEError(errno.EPERM)
        self.tree.remove_xattr(inode, name)


def build_operations(opts: MountOptions) -> Operations:
    """Wire a mount together: arena and pool, chunk store, tree, compactor, control."""
    pool = Pool(max_object_size=opts.chunk_size, mem_limit=opts.mem_limit)
    compactor = Compactor(pool, opts.compact_threshold, opts.compact_interval)
    store = ChunkStore(pool, opts.chunk_size, opts.level, capacity=opts.size,
                       make_room=functools.partial(compactor.compact, manual=False),
                       recompress_level=opts.recompress_level)
    tree = Tree(store, nr_inodes=opts.nr_inodes, root_mode=opts.mode, root_uid=opts.uid,
                root_gid=opts.gid, atime="noatime" if "noatime" in opts.fuse_options else "relatime",
                acl=opts.acl and opts.xattr)
    recompressor = Recompressor(store, tree, opts.recompress_idle, opts.recompress_level,
                                opts.dictionary,
                                compact=functools.partial(compactor.compact, manual=False),
                                kick=compactor.kick, hold_compaction=compactor.held)
    control = Control(pool, store, tree, compactor, uid=os.getuid(), gid=os.getgid(),
                      recompressor=recompressor, writeback=opts.writeback)
    return Operations(tree, control, compactor, xattrs=opts.xattr, recompressor=recompressor,
                      writeback=opts.writeback)
