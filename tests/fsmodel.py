"""Model-based random tester: one seeded sequence of operations on zsfs and on tmpfs.

A *run* gives every process ``k`` (of ``procs``) its own subtree ``p<k>/`` in two
roots, a zsfs mount and a kernel tmpfs (the model), plus its own region of one
shared file ``shared`` (regions are not chunk-aligned, so the processes' writes
meet inside chunks). Each process is a separate OS process (``python fsmodel.py
--worker``) that draws operations from ``random.Random(f"fsmodel:{seed}:{k}")``,
applies each one to zsfs and then to tmpfs with the same relative paths, and
compares what came back: the return value or errno, the bytes read, file offsets,
and the stat fields that must agree (type, permission bits, link count, size of
non-directories, owner). Every ``check_every`` operations and at the end it
compares its whole subtree (names, types, modes, link counts, sizes, contents,
symlink targets, xattrs, which names are hard links of each other) and every file
it holds open, unlinked ones included. After the processes end the runner compares
the two roots as a whole, then removes everything and checks that zsfs gives all
of its memory back.

Operations: open (every flag combination that makes sense, O_CREAT/O_EXCL/O_TRUNC/
O_APPEND/O_NOFOLLOW/O_DIRECTORY), close, pwrite/write at random offsets (inside the
file, at chunk edges, past EOF leaving holes, far beyond EOF, at 1 GiB and 1 TiB),
pread/read (from the page cache or, after POSIX_FADV_DONTNEED, from the daemon),
lseek, ftruncate/truncate, fsync/fdatasync, fstat/stat/lstat, fchmod/chmod,
whole-file write and read, mkdir, rmdir, unlink, rename with RENAME_NOREPLACE and
RENAME_EXCHANGE (renameat2 through ctypes), link, symlink, readlink, mkfifo,
listdir, and set/get/remove/listxattr on paths, symlinks and open descriptors.
Open-then-unlink is generated on purpose, and the unlinked file keeps being read and
written through its descriptor. Data is random (incompressible), zeros, one repeated
byte or 8-byte word (zsfs's same-filled chunks), text-like (compressible) or a mix.

With ``enospc=True`` (a mount with ``mem_limit=`` or ``size=``) zsfs may answer a
write with ENOSPC or a short count. The model then adopts what zsfs reports: a short
write of n bytes is applied to tmpfs as a write of exactly those n bytes, an ENOSPC
as nothing at all, and the file around the write is read back at once from the
daemon. Every later comparison then checks that exactly the bytes reported written
landed and nothing else changed. ENOSPC anywhere else, or without ``enospc``, is a
mismatch.

Symlink targets are relative and never contain ``..``, so path resolution can never
leave a process's subtree: what one process sees never depends on another.

A mismatch raises ``Mismatch`` naming the seed, process, step and operation and the
command line that replays the run (``tools/fsmodel``). A replay regenerates the same
operations as long as the results agree, so it is exact for one process, and for
several as long as what failed does not depend on their interleaving (or on when
ENOSPC struck).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import json
import os
import random
import re
import shlex
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from collections import Counter, deque
from dataclasses import dataclass, field

KiB = 1 << 10
MiB = 1 << 20
GiB = 1 << 30
TiB = 1 << 40

CONTROL_NAME = ".zsfs"
SHARED_NAME = "shared"
RENAME_NOREPLACE = 1
RENAME_EXCHANGE = 2
AT_FDCWD = -100

MAX_SLOTS = 6                 # open descriptors per process
MAX_DEPTH = 4                 # directories are made at most this deep below p<k>
FULL_COMPARE_LIMIT = 16 * MiB  # files up to this size are compared byte for byte
READ_FILE_LIMIT = 4 * MiB     # the whole-file read op reads at most this much
NAMES = ["a", "b", "c", "d", "e", "f"]
LONG_NAME = "L" * 255         # the longest name there is
TOO_LONG_NAME = "T" * 256     # ENAMETOOLONG
SYMLINK_TARGETS = ["a", "b", "d/a", "a/b", "c/d/e", ".", "nowhere", "d", "e/f"]
XATTR_NAMES = ["user.a", "user.b", "user.c", "trusted.t", "security.s", "bogus.x",
               "user." + "x" * 250, "user." + "y" * 251]
FILE_OFFSET_REPORT = 64       # bytes shown around a first difference

_libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
_libc.renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p,
                            ctypes.c_uint]
_libc.renameat2.restype = ctypes.c_int


def renameat2(old: str, new: str, flags: int) -> None:
    if _libc.renameat2(AT_FDCWD, os.fsencode(old), AT_FDCWD, os.fsencode(new), flags) != 0:
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e), old, None, new)


class Mismatch(AssertionError):
    """zsfs and the model disagree (or zsfs broke a promise)."""


# ---------------------------------------------------------------------------------
# option sets
# ---------------------------------------------------------------------------------

_SUFFIX = {"": 1, "k": KiB, "m": MiB, "g": GiB}


def _option(opts: str, name: str) -> str | None:
    value = None
    for item in opts.split(","):
        key, _, v = item.strip().partition("=")
        if key == name:
            value = v
    return value


def chunk_size_of(opts: str) -> int:
    v = _option(opts, "chunk_size")
    if not v:
        return 16 * KiB
    m = re.fullmatch(r"(\d+)([kmg]?)", v.lower())
    assert m, f"chunk_size={v}"
    return int(m.group(1)) * _SUFFIX[m.group(2)]


@dataclass(frozen=True)
class Plan:
    """What a run derives from its mount options."""

    opts: str
    chunk_size: int
    enospc: bool          # mem_limit= or size=: writes may legitimately fail
    compact_every: float  # seconds between writes of 1 to .zsfs/compact (0: none)


def plan_for(opts: str, compact_every: float | None = None) -> Plan:
    enospc = bool(_option(opts, "mem_limit") not in (None, "0")
                  or _option(opts, "size") not in (None, "0"))
    threshold = _option(opts, "compact_threshold")
    if compact_every is None:
        compact_every = 0.03 if threshold is not None and float(threshold.rstrip("%")) >= 1 \
            else 0.0
    return Plan(opts, chunk_size_of(opts), enospc, compact_every)


def replay_command(seed: int, ops: int, procs: int, opts: str, proc: int | None = None) -> str:
    cmd = f"tools/fsmodel --seed {seed} --ops {ops} --procs {procs} -o {shlex.quote(opts)}"
    if proc is not None:
        cmd += f" --proc {proc}"
    return cmd


# ---------------------------------------------------------------------------------
# data
# ---------------------------------------------------------------------------------

DATA_KINDS = ["rand", "rand", "zero", "fill", "word", "text", "text", "mix"]


def make_data(spec: tuple) -> bytes:
    """The bytes of a data spec ``(kind, length, seed)``: deterministic."""
    kind, n, s = spec
    r = random.Random(s)
    if n == 0:
        return b""
    if kind == "zero":
        return bytes(n)
    if kind == "fill":
        return bytes([r.randrange(1, 256)]) * n
    if kind == "word":
        w = r.randbytes(8)
        return (w * (n // 8 + 1))[:n]
    if kind == "rand":
        return r.randbytes(n)
    if kind == "text":
        vocab = [bytes(r.choices(b"abcdefghijklmnopqrstuvwxyz", k=r.randint(1, 9)))
                 for _ in range(40)]
        base = b" ".join(r.choices(vocab, k=900))[:4096]
        out = bytearray((base * (n // len(base) + 1))[:n])
        for _ in range(n // 512 + 1):
            out[r.randrange(n)] = r.randrange(256)
        return bytes(out)
    if kind == "mix":
        out = bytearray()
        while len(out) < n:
            k = r.randrange(3)
            block = r.randbytes(4096) if k == 0 else bytes(4096) if k == 1 else \
                bytes([r.randrange(256)]) * 4096
            out += block[:r.choice([4096, r.randint(1, 4096)])]
        return bytes(out[:n])
    raise ValueError(kind)


# ---------------------------------------------------------------------------------
# comparing results and trees
# ---------------------------------------------------------------------------------

def _kind(mode: int) -> str:
    return {stat.S_IFREG: "file", stat.S_IFDIR: "dir", stat.S_IFLNK: "symlink",
            stat.S_IFIFO: "fifo"}.get(stat.S_IFMT(mode), oct(stat.S_IFMT(mode)))


def stat_view(st: os.stat_result) -> tuple:
    """The stat fields zsfs and tmpfs must agree on (not inode numbers, times, blocks,
    nor the size of directories, which tmpfs counts in bogus entry units)."""
    size = None if stat.S_ISDIR(st.st_mode) else st.st_size
    return (_kind(st.st_mode), oct(stat.S_IMODE(st.st_mode)), st.st_nlink, size,
            st.st_uid, st.st_gid)


def first_difference(a: bytes, b: bytes) -> int:
    n = min(len(a), len(b))
    if a[:n] == b[:n]:
        return n
    lo, hi = 0, n
    while hi - lo > 64:
        mid = (lo + hi) // 2
        if a[lo:mid] != b[lo:mid]:
            hi = mid
        else:
            lo = mid
    for i in range(lo, hi):
        if a[i] != b[i]:
            return i
    return hi


def describe_bytes_difference(z: bytes, t: bytes, base: int = 0) -> str:
    i = first_difference(z, t)
    ndiff = sum(1 for x, y in zip(z, t) if x != y)
    lo = max(0, i - 8)
    return (f"zsfs {len(z)} bytes, tmpfs {len(t)} bytes; first difference at file offset "
            f"{base + i} (byte {i}); {ndiff} bytes differ in the common part; zsfs "
            f"{z[lo:i + FILE_OFFSET_REPORT].hex()} vs tmpfs {t[lo:i + FILE_OFFSET_REPORT].hex()}"
            f" (from offset {base + lo})")


def drop_cache(fd: int) -> None:
    """Evict the clean page-cache pages of an open file (writes are write-through on
    zsfs, so none are dirty): the next read goes to the daemon."""
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    except OSError:
        pass


def _pread_all(fd: int, n: int, off: int) -> bytes:
    out = bytearray()
    while len(out) < n:
        b = os.pread(fd, min(n - len(out), 4 * MiB), off + len(out))
        if not b:
            break
        out += b
    return bytes(out)


class reopened:
    """Read-only descriptors of the files behind two descriptors (which may be
    write-only); the /proc links reopen unlinked files too."""

    def __init__(self, zfd: int, tfd: int) -> None:
        self.fds = (zfd, tfd)
        self.opened: list[int] = []

    def __enter__(self) -> tuple[int, int]:
        for fd in self.fds:
            self.opened.append(os.open(f"/proc/self/fd/{fd}", os.O_RDONLY | os.O_CLOEXEC))
        return self.opened[0], self.opened[1]

    def __exit__(self, *exc) -> None:
        for fd in self.opened:
            os.close(fd)


def _data_extents(fd: int, size: int, limit: int = 256) -> list[tuple[int, int]]:
    """[start, end) data extents of a tmpfs file (SEEK_DATA/SEEK_HOLE), at most ``limit``."""
    out = []
    pos = 0
    while pos < size and len(out) < limit:
        try:
            start = os.lseek(fd, pos, os.SEEK_DATA)
        except OSError as e:
            if e.errno == errno.ENXIO:
                break
            raise
        end = os.lseek(fd, start, os.SEEK_HOLE)
        out.append((start, min(end, size)))
        pos = end
    return out


def compare_content(zfd: int, tfd: int, size: int, where: str, rng: random.Random) -> None:
    """Compare one file's bytes through two descriptors (zsfs's read from the daemon).

    Files up to FULL_COMPARE_LIMIT are read whole; bigger (sparse) ones are read in
    the extents tmpfs holds data in, plus windows at both ends of every hole and at
    random places inside it, and the file's last bytes.
    """
    drop_cache(zfd)
    if size <= FULL_COMPARE_LIMIT:
        windows = [(0, size)]
    else:
        windows = []
        extents = _data_extents(tfd, size)
        pos = 0
        for start, end in extents + [(size, size)]:
            if start > pos:      # a hole [pos, start)
                windows.append((pos, min(4096, start - pos)))
                windows.append((max(pos, start - 4096), min(4096, start - pos)))
                for _ in range(3):
                    w = rng.randrange(pos, start)
                    windows.append((w, min(4096, start - w)))
            if end > start:
                windows.append((start, min(end - start, 8 * MiB)))
                if end - start > 8 * MiB:
                    windows.append((end - 4096, 4096))
            pos = end
        windows.append((max(0, size - 8192), min(size, 8192)))
    for off, n in windows:
        pos = off
        while pos < off + n:
            step = min(MiB, off + n - pos)
            z = _pread_all(zfd, step, pos)
            t = _pread_all(tfd, step, pos)
            if z != t:
                raise Mismatch(f"{where}: contents differ in [{pos}, {pos + step}) of a "
                               f"{size}-byte file: {describe_bytes_difference(z, t, pos)}")
            pos += step


@dataclass
class TreeEntry:
    meta: tuple
    ino: int
    path: str


def scan_tree(base: str, skip_top: frozenset = frozenset()) -> dict[str, TreeEntry]:
    """Every entry below ``base``: relative path -> metadata (with symlink targets and
    xattrs); ``skip_top`` names are left out of the top level.

    Also checks that what readdir says (the filesystem's own directory: inode number
    and type) agrees with what lstat says (for a FUSE mount, usually the kernel's cached
    entry): a filesystem whose directories disagree with what it answered earlier
    shows up here rather than only once the kernel forgets its entries.
    """
    out: dict[str, TreeEntry] = {}
    stack = [""]
    while stack:
        rel = stack.pop()
        d = os.path.join(base, rel) if rel else base
        with os.scandir(d) as it:
            listed = sorted((e.name, e.inode(), e.is_dir(follow_symlinks=False),
                             e.is_symlink()) for e in it)
        for name, d_ino, d_dir, d_link in listed:
            if not rel and name in skip_top:
                continue
            r = f"{rel}/{name}" if rel else name
            p = os.path.join(base, r)
            st = os.lstat(p)
            if (d_ino, d_dir, d_link) != (st.st_ino, stat.S_ISDIR(st.st_mode),
                                           stat.S_ISLNK(st.st_mode)):
                raise Mismatch(f"{p}: readdir says inode {d_ino} (dir {d_dir}, symlink "
                               f"{d_link}), lstat says inode {st.st_ino} "
                               f"({_kind(st.st_mode)}): the directory and the entry the "
                               f"kernel holds disagree")
            meta = list(stat_view(st))
            if stat.S_ISLNK(st.st_mode):
                meta.append(os.readlink(p))
            xattrs = {}
            for x in sorted(os.listxattr(p, follow_symlinks=False)):
                xattrs[x] = os.getxattr(p, x, follow_symlinks=False)
            meta.append(tuple(sorted(xattrs.items())))
            out[r] = TreeEntry(tuple(meta), st.st_ino, p)
            if stat.S_ISDIR(st.st_mode):
                stack.append(r)
    return out


_META_FIELDS = ("type", "mode", "nlink", "size", "uid", "gid")


def _brief_xattrs(x: tuple) -> dict:
    return {brief_path(k.replace("x" * 20, "X")): (v if len(v) <= 16 else f"<{len(v)} bytes>")
            for k, v in x}


def describe_meta_difference(z: tuple, t: tuple) -> str:
    out = []
    for i, (a, b) in enumerate(zip(z, t)):
        if a == b:
            continue
        if i < len(_META_FIELDS):
            out.append(f"{_META_FIELDS[i]}: zsfs {a!r}, tmpfs {b!r}")
        elif isinstance(a, tuple) or isinstance(b, tuple):
            out.append(f"xattrs: zsfs {_brief_xattrs(a)}, tmpfs {_brief_xattrs(b)}")
        else:
            out.append(f"symlink target: zsfs {a!r}, tmpfs {b!r}")
    if len(z) != len(t):
        out.append(f"zsfs {z!r}, tmpfs {t!r}")
    return "; ".join(out) + f" (both: {z[0]})"


def link_groups(tree: dict[str, TreeEntry]) -> set[tuple[str, ...]]:
    by_ino: dict[int, list[str]] = {}
    for rel, e in tree.items():
        if not e.meta[0] == "dir":
            by_ino.setdefault(e.ino, []).append(rel)
    return {tuple(sorted(v)) for v in by_ino.values() if len(v) > 1}


def compare_trees(zbase: str, tbase: str, where: str, rng: random.Random,
                  skip_top: frozenset = frozenset()) -> int:
    """Compare two whole trees; returns the number of entries. Raises Mismatch."""
    z = scan_tree(zbase, skip_top)
    t = scan_tree(tbase, skip_top)
    if set(z) != set(t):
        only_z = sorted(set(z) - set(t))
        only_t = sorted(set(t) - set(z))
        raise Mismatch(f"{where}: names differ: only on zsfs {only_z[:20]}, only on tmpfs "
                       f"{only_t[:20]}")
    differ = [rel for rel in sorted(z) if z[rel].meta != t[rel].meta]
    if differ:
        gz = link_groups(z)
        lines = []
        for rel in differ[:10]:
            links = [g for g in gz if rel in g]
            lines.append(f"{brief_path(rel)!r} (zsfs inode {z[rel].ino}"
                         f"{', links ' + str(links[0]) if links else ''}): "
                         f"{describe_meta_difference(z[rel].meta, t[rel].meta)}")
        raise Mismatch(f"{where}: {len(differ)} entries differ:\n    " + "\n    ".join(lines))
    gz, gt = link_groups(z), link_groups(t)
    if gz != gt:
        raise Mismatch(f"{where}: hard-link groups differ: zsfs {sorted(gz)}, tmpfs {sorted(gt)}")
    done: set[int] = set()
    for rel in sorted(z):
        e = z[rel]
        if e.meta[0] != "file" or e.ino in done:
            continue
        done.add(e.ino)
        zfd = os.open(e.path, os.O_RDONLY | os.O_NONBLOCK)
        try:
            tfd = os.open(t[rel].path, os.O_RDONLY | os.O_NONBLOCK)
            try:
                compare_content(zfd, tfd, e.meta[3], f"{where}: {rel!r}", rng)
            finally:
                os.close(tfd)
        finally:
            os.close(zfd)
    return len(z)


# ---------------------------------------------------------------------------------
# one process's operations
# ---------------------------------------------------------------------------------

@dataclass
class Slot:
    z: int
    t: int
    path: str
    flags: int


def _res(fn, *args):
    """("ok", value) or ("err", errno name)."""
    try:
        return ("ok", fn(*args))
    except OSError as e:
        return ("err", errno.errorcode.get(e.errno, str(e.errno)))


_NAMESPACE_OPS = frozenset({"open", "mkdir", "rmdir", "unlink", "rename", "link", "symlink",
                            "mkfifo", "write_file"})


@dataclass
class WorkerConfig:
    zroot: str
    troot: str
    seed: int
    proc: int
    procs: int
    ops: int
    opts: str
    chunk_size: int
    enospc: bool
    check_every: int = 250
    duration: float = 0.0           # > 0: run until this many seconds have passed instead
    shared_offset: int = -1         # this process's region of the shared file (-1: none)
    shared_length: int = 0
    trace: bool = False


class Worker:
    """Draws operations for one process and applies each to zsfs, then to tmpfs."""

    def __init__(self, cfg: WorkerConfig) -> None:
        self.cfg = cfg
        self.cs = cfg.chunk_size
        self.sub = f"p{cfg.proc}"
        self.zbase = os.path.join(cfg.zroot, self.sub)
        self.tbase = os.path.join(cfg.troot, self.sub)
        self.rng = random.Random(f"fsmodel:{cfg.seed}:{cfg.proc}")
        self.slots: list[Slot] = []
        self.step = 0
        self.op: tuple = ()
        self.history: deque[str] = deque(maxlen=25)
        self.counts: Counter[str] = Counter()
        self.pending: list[tuple] = []
        self.recent_specs: deque[tuple] = deque(maxlen=16)
        self._entries: list[tuple[str, str]] | None = None
        self.shared: Slot | None = None
        if cfg.shared_offset >= 0:
            self.shared = Slot(os.open(os.path.join(cfg.zroot, SHARED_NAME), os.O_RDWR),
                               os.open(os.path.join(cfg.troot, SHARED_NAME), os.O_RDWR),
                               SHARED_NAME, os.O_RDWR)

    # -- helpers -------------------------------------------------------------------

    def zp(self, rel: str) -> str:
        return os.path.join(self.zbase, rel)

    def tp(self, rel: str) -> str:
        return os.path.join(self.tbase, rel)

    def fail(self, what: str) -> None:
        raise Mismatch(what)

    def same(self, z, t, what: str = "") -> None:
        if isinstance(z, tuple) and z and z[0] in ("ok", "err") and not what:
            self.counts[f"{self.op[0]}:{z[0] if z[0] == 'ok' else z[1]}"] += 1
        if z != t:
            self.fail(f"zsfs gave {z!r}, tmpfs gave {t!r}{'; ' + what if what else ''}")

    def both(self, fn, *args) -> tuple:
        """fn(side, ...) on zsfs and on tmpfs (side 0 / 1); the results must agree."""
        z = _res(fn, 0, *args)
        t = _res(fn, 1, *args)
        self.same(z, t)
        return z

    def path(self, side: int, rel: str) -> str:
        return self.zp(rel) if side == 0 else self.tp(rel)

    def fd(self, side: int, slot: int) -> int:
        s = self.slots[slot]
        return s.z if side == 0 else s.t

    # -- the model's view, for choosing operations (tmpfs side only: deterministic) ---

    def entries(self) -> list[tuple[str, str]]:
        if self._entries is None:
            out = []
            for rel, e in scan_tree_light(self.tbase):
                out.append((rel, e))
            self._entries = out
        return self._entries

    def of_kind(self, kind: str) -> list[str]:
        return [r for r, k in self.entries() if k == kind]

    def depth(self, rel: str) -> int:
        return rel.count("/") + 1 if rel else 0

    def random_path(self) -> str:
        r = self.rng
        dirs = [""] + self.of_kind("dir")
        x = r.random()
        if x < 0.04:
            others = [e for e, k in self.entries() if k != "dir"]
            parent = r.choice(others) if others else r.choice(dirs)    # ENOTDIR
        elif x < 0.08:
            parent = r.choice(dirs + ["nodir"])
        else:
            parent = r.choice(dirs)
        y = r.random()
        name = LONG_NAME if y < 0.01 else TOO_LONG_NAME if y < 0.02 else r.choice(NAMES)
        return f"{parent}/{name}" if parent else name

    def pick_any(self) -> str:
        ents = self.entries()
        if ents and self.rng.random() < 0.7:
            return self.rng.choice(ents)[0]
        return self.random_path()

    def pick(self, kind: str, p: float = 0.8) -> str:
        cands = self.of_kind(kind)
        if cands and self.rng.random() < p:
            return self.rng.choice(cands)
        return self.pick_any()

    def new_path(self) -> str:
        """A path for something new: mostly a free name in an existing directory."""
        for _ in range(4):
            p = self.random_path()
            if p not in dict(self.entries()) and self.depth(p) <= MAX_DEPTH:
                return p
        return self.random_path()

    def tsize(self, slot: int | None = None, rel: str | None = None) -> int:
        try:
            st = os.fstat(self.slots[slot].t) if slot is not None else os.stat(self.tp(rel))
            return st.st_size if stat.S_ISREG(st.st_mode) else 0
        except OSError:
            return 0

    def data_spec(self) -> tuple:
        """What to write: mostly new data, sometimes data written before (a copy,
        whose chunks recompression may let share one object)."""
        r, cs = self.rng, self.cs
        if self.recent_specs and r.random() < 0.15:
            return r.choice(self.recent_specs)
        kinds = DATA_KINDS + (["rand"] * 6 if self.cfg.enospc else [])
        x = r.random()
        if x < 0.08:
            n = r.randint(0, 16)
        elif x < 0.30:
            n = r.randint(1, 600)
        elif x < 0.45:
            n = cs + r.choice([-1, 0, 1, -4096, 4096, 2 * cs])
        elif x < 0.85:
            n = r.randint(1, 3 * cs)
        elif x < 0.97:
            n = r.randint(1, 256 * KiB)
        else:
            n = r.randint(256 * KiB, 3 * MiB // 2)
        spec = (r.choice(kinds), max(0, n), r.getrandbits(32))
        self.recent_specs.append(spec)
        return spec

    def offset(self, size: int) -> int:
        """A write or truncate position given the current size."""
        r, cs = self.rng, self.cs
        x = r.random()
        if x < 0.10:
            return 0
        if x < 0.35:
            return r.randint(0, size)
        if x < 0.50:
            return size
        if x < 0.62:
            return size + r.randint(1, 3 * cs)
        if x < 0.82:
            k = r.randint(0, size // cs + 2)
            return max(0, k * cs + r.choice([-1, 0, 1, -17, 4095, 4096]))
        if x < 0.97:
            return size + r.randint(4 * cs, 8 * MiB)
        return r.choice([GiB, TiB, 3 * TiB]) + r.randint(0, 2 * cs)

    def read_spec(self, size: int) -> tuple[int, int]:
        r, cs = self.rng, self.cs
        x = r.random()
        if x < 0.2:
            off = 0
        elif x < 0.75:
            off = r.randint(0, max(0, size))
        elif x < 0.9:
            off = max(0, (r.randint(0, size // cs + 1)) * cs + r.choice([-1, 0, 1, -100]))
        else:
            off = size + r.randint(-cs, 2 * cs)
        off = max(0, off)
        y = r.random()
        n = r.randint(0, 64) if y < 0.1 else r.randint(1, 3 * cs) if y < 0.8 \
            else r.randint(1, MiB)
        return off, n

    # -- generation ------------------------------------------------------------------

    OPS = {
        "open": 9, "close": 5, "pwrite": 16, "write": 5, "lseek": 2, "pread": 9, "read": 3,
        "ftruncate": 4, "fsync": 2, "fstat": 3, "fchmod": 1, "fchown": 1, "fxattr": 1,
        "write_file": 5, "read_file": 4, "truncate": 3,
        "mkdir": 4, "rmdir": 3, "unlink": 5, "rename": 6, "link": 3, "symlink": 3,
        "readlink": 2, "mkfifo": 1, "chmod": 2, "chown": 1, "stat": 3, "listdir": 2,
        "setxattr": 3, "getxattr": 2, "removexattr": 2, "listxattr": 2,
        "shared_pwrite": 3, "shared_pread": 2,
    }
    _FD_OPS = frozenset({"close", "pwrite", "write", "lseek", "pread", "read", "ftruncate",
                         "fsync", "fstat", "fchmod", "fchown", "fxattr"})

    def generate(self) -> tuple:
        if self.pending:
            return self.pending.pop(0)
        r = self.rng
        names = list(self.OPS)
        weights = [self.OPS[n] for n in names]
        while True:
            name = r.choices(names, weights)[0]
            if name in self._FD_OPS and not self.slots:
                continue
            if name.startswith("shared") and self.shared is None:
                continue
            if name == "open" and len(self.slots) >= MAX_SLOTS:
                name = "close"
            return getattr(self, "gen_" + name)()

    def slot(self, writing: bool = False) -> int:
        # prefer regular files (most fd ops are about data), writable ones for writes
        regs = [i for i, s in enumerate(self.slots) if s.flags & os.O_DIRECTORY == 0
                and (not writing or s.flags & os.O_ACCMODE != os.O_RDONLY)]
        if regs and self.rng.random() < 0.9:
            return self.rng.choice(regs)
        return self.rng.randrange(len(self.slots))

    def gen_open(self):
        r = self.rng
        acc = r.choice([os.O_RDONLY, os.O_WRONLY, os.O_RDWR, os.O_RDWR, os.O_RDWR])
        flags = acc | os.O_NONBLOCK | os.O_CLOEXEC
        creat = r.random() < 0.5
        if creat:
            flags |= os.O_CREAT
            if r.random() < 0.15:
                flags |= os.O_EXCL
        for f, p in ((os.O_TRUNC, 0.12), (os.O_APPEND, 0.12), (os.O_NOFOLLOW, 0.04),
                     (os.O_DIRECTORY, 0.04)):
            if r.random() < p:
                flags |= f
        if flags & os.O_DIRECTORY and r.random() < 0.7:
            flags &= ~(os.O_ACCMODE | os.O_CREAT | os.O_TRUNC)
            path = self.pick("dir")
        else:
            path = self.new_path() if creat and r.random() < 0.4 else self.pick("file")
        mode = r.choice([0o644, 0o600, 0o755, 0o000, 0o4755, 0o2644, 0o1777])
        if r.random() < 0.12:          # open, then unlink: the descriptor lives on
            self.pending.append(("unlink", path))
        return ("open", path, flags, mode)

    def gen_close(self):
        return ("close", self.slot())

    def gen_pwrite(self):
        s = self.slot(writing=True)
        return ("pwrite", s, self.offset(self.tsize(s)), self.data_spec())

    def gen_write(self):
        return ("write", self.slot(writing=True), self.data_spec())

    def gen_lseek(self):
        s = self.slot()
        if stat.S_ISDIR(os.fstat(self.slots[s].t).st_mode):
            # directories: FUSE seeks like a file, tmpfs refuses SEEK_END (the kernel's
            # business, not zsfs's)
            return ("fstat", s)
        whence = self.rng.choice([os.SEEK_SET, os.SEEK_CUR, os.SEEK_END])
        size = self.tsize(s)
        off = self.offset(size) if whence == os.SEEK_SET else \
            self.rng.choice([0, -1, 1, -self.cs, self.cs, -size - 1])
        return ("lseek", s, off, whence)

    def gen_pread(self):
        s = self.slot()
        off, n = self.read_spec(self.tsize(s))
        return ("pread", s, off, n, self.rng.random() < 0.6)

    def gen_read(self):
        return ("read", self.slot(), self.read_spec(0)[1], self.rng.random() < 0.5)

    def gen_ftruncate(self):
        s = self.slot(writing=True)
        return ("ftruncate", s, self.offset(self.tsize(s)) if self.rng.random() < 0.7
                else self.rng.randint(0, self.tsize(s)))

    def gen_fsync(self):
        return ("fsync", self.slot(), self.rng.random() < 0.3)

    def gen_fstat(self):
        return ("fstat", self.slot())

    def gen_fchmod(self):
        return ("fchmod", self.slot(), self.mode())

    def owner(self) -> tuple[int, int]:
        ids = [0, 0, 65534, 1000, -1]
        return self.rng.choice(ids), self.rng.choice(ids)

    def gen_fchown(self):
        return ("fchown", self.slot(), *self.owner())

    def gen_chown(self):
        return ("chown", self.pick_any(), *self.owner(), self.rng.random() < 0.7)

    def gen_fxattr(self):
        r = self.rng
        return ("fxattr", self.slot(), r.choice(["set", "set", "get", "remove", "list"]),
                r.choice(XATTR_NAMES[:5]), self.xattr_value(), r.choice([0, 0, 1, 2]))

    def gen_write_file(self):
        path = self.new_path() if self.rng.random() < 0.4 else self.pick("file")
        return ("write_file", path, self.data_spec(), self.mode())

    def gen_read_file(self):
        return ("read_file", self.pick("file"), self.rng.random() < 0.7)

    def gen_truncate(self):
        path = self.pick("file")
        size = self.tsize(rel=path)
        return ("truncate", path, self.offset(size) if self.rng.random() < 0.7
                else self.rng.randint(0, size))

    def gen_mkdir(self):
        path = self.new_path()
        if self.depth(path) > MAX_DEPTH:
            path = self.rng.choice(NAMES)
        return ("mkdir", path, self.rng.choice([0o755, 0o700, 0o2775, 0o1777, 0o000]))

    def gen_rmdir(self):
        return ("rmdir", self.pick("dir", 0.85))

    def gen_unlink(self):
        return ("unlink", self.pick("file", 0.6))

    def gen_rename(self):
        r = self.rng
        src = self.pick_any()
        dst = self.pick_any() if r.random() < 0.5 else self.new_path()
        # (not RENAME_WHITEOUT: tmpfs makes whiteouts, zsfs answers EINVAL)
        flags = r.choice([0, 0, 0, RENAME_NOREPLACE, RENAME_EXCHANGE, RENAME_EXCHANGE,
                          RENAME_NOREPLACE | RENAME_EXCHANGE])
        if self.depth(dst) > MAX_DEPTH + 1:
            dst = r.choice(NAMES)
        return ("rename", src, dst, flags)

    def gen_link(self):
        return ("link", self.pick("file", 0.7), self.new_path() if self.rng.random() < 0.8
                else self.pick_any(), self.rng.random() < 0.5)

    def gen_symlink(self):
        return ("symlink", self.rng.choice(SYMLINK_TARGETS), self.new_path())

    def gen_readlink(self):
        return ("readlink", self.pick("symlink"))

    def gen_mkfifo(self):
        return ("mkfifo", self.new_path(), self.rng.choice([0o644, 0o600]))

    def gen_chmod(self):
        return ("chmod", self.pick_any(), self.mode())

    def gen_stat(self):
        return ("stat", self.pick_any(), self.rng.random() < 0.5)

    def gen_listdir(self):
        return ("listdir", self.pick("dir", 0.8) if self.rng.random() < 0.9 else "")

    def xattr_value(self) -> tuple:
        r = self.rng
        n = r.choice([0, 1, 5, r.randint(0, 200), r.randint(0, 4096), 65536, 65537]
                     if r.random() < 0.1 else [0, 1, 5, r.randint(0, 200)])
        return ("rand", n, r.getrandbits(32))

    def gen_setxattr(self):
        r = self.rng
        return ("setxattr", self.pick_any(), r.choice(XATTR_NAMES), self.xattr_value(),
                r.choice([0, 0, 0, os.XATTR_CREATE, os.XATTR_REPLACE]), r.random() < 0.8)

    def gen_getxattr(self):
        return ("getxattr", self.pick_any(), self.rng.choice(XATTR_NAMES),
                self.rng.random() < 0.8)

    def gen_removexattr(self):
        return ("removexattr", self.pick_any(), self.rng.choice(XATTR_NAMES),
                self.rng.random() < 0.8)

    def gen_listxattr(self):
        return ("listxattr", self.pick_any(), self.rng.random() < 0.8)

    def gen_shared_pwrite(self):
        r = self.rng
        L = self.cfg.shared_length
        off = r.randint(0, L - 1) if r.random() < 0.7 else r.choice([0, L - 1, L // 2])
        kind, n, s = self.data_spec()
        return ("shared_pwrite", off, (kind, min(n, L - off), s))

    def gen_shared_pread(self):
        r = self.rng
        L = self.cfg.shared_length
        off = r.randint(0, L - 1)
        return ("shared_pread", off, r.randint(0, L - off), r.random() < 0.6)

    def mode(self) -> int:
        r = self.rng
        if r.random() < 0.7:
            return r.choice([0o644, 0o600, 0o755, 0o777, 0o000, 0o444])
        return r.getrandbits(12)

    # -- execution -------------------------------------------------------------------

    def run_op(self, op: tuple) -> None:
        self.op = op
        name = op[0]
        self.counts[name] += 1
        getattr(self, "do_" + name)(*op[1:])
        if name in _NAMESPACE_OPS:
            self._entries = None

    def do_open(self, path, flags, mode):
        z = _res(os.open, self.zp(path), flags, mode)
        t = _res(os.open, self.tp(path), flags, mode)
        if z[0] == "ok" and t[0] == "ok":
            self.slots.append(Slot(z[1], t[1], path, flags))
            self.same(stat_view(os.fstat(z[1])), stat_view(os.fstat(t[1])), "fstat after open")
            return
        for side in (z, t):
            if side[0] == "ok":
                os.close(side[1])
        self.same(z[0] if z[0] == "ok" else z, t[0] if t[0] == "ok" else t)

    def do_close(self, slot):
        s = self.slots.pop(slot)
        self.same(_res(os.close, s.z), _res(os.close, s.t))

    def _write(self, zcall, tcall, data: bytes, where: tuple[Slot, int] | None) -> None:
        """Write through zsfs, adopt what it reports when ENOSPC is allowed, then tmpfs."""
        z = _res(zcall, data)
        adopted = None
        if self.cfg.enospc and data:
            if z == ("err", "ENOSPC"):
                adopted = b""
                self.counts["enospc"] += 1
            elif z[0] == "ok" and z[1] < len(data):
                adopted = data[:z[1]]
                self.counts["short_write"] += 1
        if adopted is None:
            t = _res(tcall, data)
            self.same(z, t)
        elif adopted:
            t = _res(tcall, adopted)
            self.same(z, t, "tmpfs given the bytes zsfs reported written")
        if adopted is not None and where is not None:
            s, off, *bounds = where
            self.verify_around(s, off, len(data), *bounds)

    def verify_around(self, s: Slot, off: int, n: int, bounds: tuple[int, int] | None = None) -> None:
        """After ENOSPC or a short write: the file from the daemon, around the write
        (within ``bounds`` when other processes write the rest of the file)."""
        drop_cache(s.z)
        zst, tst = os.fstat(s.z), os.fstat(s.t)
        self.same(stat_view(zst), stat_view(tst), "fstat after a failed write")
        if not stat.S_ISREG(zst.st_mode):
            return
        lo = max(0, off - self.cs)
        hi = min(zst.st_size, off + n + self.cs)
        if bounds is not None:
            lo, hi = max(lo, bounds[0]), min(hi, bounds[1])
        if hi > lo:
            with reopened(s.z, s.t) as (zfd, tfd):
                drop_cache(zfd)
                z = _pread_all(zfd, hi - lo, lo)
                t = _pread_all(tfd, hi - lo, lo)
            if z != t:
                self.fail("after a failed write: " + describe_bytes_difference(z, t, lo))

    def do_pwrite(self, slot, off, spec):
        s = self.slots[slot]
        data = make_data(spec)
        self._write(lambda d: os.pwrite(s.z, d, off), lambda d: os.pwrite(s.t, d, off), data,
                    (s, off))

    def do_write(self, slot, spec):
        s = self.slots[slot]
        data = make_data(spec)
        pos = _res(os.lseek, s.t, 0, os.SEEK_CUR)
        off = pos[1] if pos[0] == "ok" else 0
        if s.flags & os.O_APPEND:
            off = self.tsize(slot)
        self._write(lambda d: os.write(s.z, d), lambda d: os.write(s.t, d), data, (s, off))
        self.same(_res(os.lseek, s.z, 0, os.SEEK_CUR), _res(os.lseek, s.t, 0, os.SEEK_CUR),
                  "file position after write")

    def do_lseek(self, slot, off, whence):
        self.both(lambda side: os.lseek(self.fd(side, slot), off, whence))

    def _read_compare(self, zfn, tfn, base: int | None) -> None:
        z, t = _res(zfn), _res(tfn)
        if z != t:
            if z[0] == t[0] == "ok":
                self.fail("read: " + describe_bytes_difference(z[1], t[1], base or 0))
            self.same(z, t)

    def do_pread(self, slot, off, n, drop):
        s = self.slots[slot]
        if drop:
            drop_cache(s.z)
        self._read_compare(lambda: os.pread(s.z, n, off), lambda: os.pread(s.t, n, off), off)

    def do_read(self, slot, n, drop):
        s = self.slots[slot]
        if drop:
            drop_cache(s.z)
        pos = _res(os.lseek, s.t, 0, os.SEEK_CUR)
        self._read_compare(lambda: os.read(s.z, n), lambda: os.read(s.t, n),
                           pos[1] if pos[0] == "ok" else 0)
        self.same(_res(os.lseek, s.z, 0, os.SEEK_CUR), _res(os.lseek, s.t, 0, os.SEEK_CUR),
                  "file position after read")

    def do_ftruncate(self, slot, size):
        self.both(lambda side: os.ftruncate(self.fd(side, slot), size))

    def do_fsync(self, slot, data_only):
        fn = os.fdatasync if data_only else os.fsync
        self.both(lambda side: fn(self.fd(side, slot)))

    def do_fstat(self, slot):
        self.both(lambda side: stat_view(os.fstat(self.fd(side, slot))))

    def do_fchmod(self, slot, mode):
        self.both(lambda side: os.fchmod(self.fd(side, slot), mode))

    def do_fchown(self, slot, uid, gid):
        self.both(lambda side: os.fchown(self.fd(side, slot), uid, gid))

    def do_chown(self, path, uid, gid, follow):
        self.both(lambda side: os.chown(self.path(side, path), uid, gid,
                                        follow_symlinks=follow))

    def do_fxattr(self, slot, what, name, spec, flags):
        def f(side):
            fd = self.fd(side, slot)
            if what == "set":
                return os.setxattr(fd, name, make_data(spec), flags)
            if what == "get":
                return os.getxattr(fd, name)
            if what == "remove":
                return os.removexattr(fd, name)
            return sorted(os.listxattr(fd))
        self.both(f)

    def do_write_file(self, path, spec, mode):
        data = make_data(spec)
        flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NONBLOCK | os.O_CLOEXEC
        zfd = _res(os.open, self.zp(path), flags, mode)
        tfd = _res(os.open, self.tp(path), flags, mode)
        try:
            self.same(zfd[0] if zfd[0] == "ok" else zfd, tfd[0] if tfd[0] == "ok" else tfd,
                      "open for writing")
            if zfd[0] == "ok":
                z, t = zfd[1], tfd[1]
                self._write(lambda d: os.write(z, d), lambda d: os.write(t, d), data,
                            (Slot(z, t, path, flags), 0))
        finally:
            for r in (zfd, tfd):
                if r[0] == "ok":
                    os.close(r[1])

    def do_read_file(self, path, drop):
        def rd(side):
            fd = os.open(self.path(side, path), os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
            try:
                if drop and side == 0:
                    drop_cache(fd)
                return os.read(fd, READ_FILE_LIMIT)
            finally:
                os.close(fd)
        self._read_compare(lambda: rd(0), lambda: rd(1), 0)

    def do_truncate(self, path, size):
        self.both(lambda side: os.truncate(self.path(side, path), size))

    def do_mkdir(self, path, mode):
        self.both(lambda side: os.mkdir(self.path(side, path), mode))

    def do_rmdir(self, path):
        self.both(lambda side: os.rmdir(self.path(side, path)))

    def do_unlink(self, path):
        self.both(lambda side: os.unlink(self.path(side, path)))

    def do_rename(self, src, dst, flags):
        self.both(lambda side: renameat2(self.path(side, src), self.path(side, dst), flags))

    def do_link(self, src, dst, follow):
        self.both(lambda side: os.link(self.path(side, src), self.path(side, dst),
                                       follow_symlinks=follow))

    def do_symlink(self, target, path):
        self.both(lambda side: os.symlink(target, self.path(side, path)))

    def do_readlink(self, path):
        self.both(lambda side: os.readlink(self.path(side, path)))

    def do_mkfifo(self, path, mode):
        self.both(lambda side: os.mkfifo(self.path(side, path), mode))

    def do_chmod(self, path, mode):
        self.both(lambda side: os.chmod(self.path(side, path), mode))

    def do_stat(self, path, follow):
        self.both(lambda side: stat_view(os.stat(self.path(side, path),
                                                 follow_symlinks=follow)))

    def do_listdir(self, path):
        self.both(lambda side: sorted(os.listdir(self.path(side, path) if path
                                                 else (self.zbase, self.tbase)[side])))

    def do_setxattr(self, path, name, spec, flags, follow):
        self.both(lambda side: os.setxattr(self.path(side, path), name, make_data(spec), flags,
                                           follow_symlinks=follow))

    def do_getxattr(self, path, name, follow):
        self.both(lambda side: os.getxattr(self.path(side, path), name, follow_symlinks=follow))

    def do_removexattr(self, path, name, follow):
        self.both(lambda side: os.removexattr(self.path(side, path), name,
                                              follow_symlinks=follow))

    def do_listxattr(self, path, follow):
        self.both(lambda side: sorted(os.listxattr(self.path(side, path),
                                                   follow_symlinks=follow)))

    def do_shared_pwrite(self, off, spec):
        s = self.shared
        base = self.cfg.shared_offset
        data = make_data(spec)
        self._write(lambda d: os.pwrite(s.z, d, base + off), lambda d: os.pwrite(s.t, d, base + off),
                    data, (s, base + off, (base, base + self.cfg.shared_length)))

    def do_shared_pread(self, off, n, drop):
        s = self.shared
        base = self.cfg.shared_offset
        if drop:
            drop_cache(s.z)
        self._read_compare(lambda: os.pread(s.z, n, base + off),
                           lambda: os.pread(s.t, n, base + off), base + off)

    def do_check(self):
        """The whole subtree and every open descriptor."""
        where = f"check after step {self.step}"
        rng = random.Random(f"fsmodel-check:{self.cfg.seed}:{self.cfg.proc}:{self.step}")
        compare_trees(self.zbase, self.tbase, where, rng)
        for i, s in enumerate(self.slots):
            zst, tst = os.fstat(s.z), os.fstat(s.t)
            self.same(stat_view(zst), stat_view(tst), f"{where}: fstat of slot {i} ({s.path})")
            if stat.S_ISREG(zst.st_mode):
                with reopened(s.z, s.t) as (zfd, tfd):
                    compare_content(zfd, tfd, zst.st_size, f"{where}: slot {i} ({s.path})", rng)
        if self.shared is not None:
            z = (drop_cache(self.shared.z),
                 _pread_all(self.shared.z, self.cfg.shared_length, self.cfg.shared_offset))[1]
            t = _pread_all(self.shared.t, self.cfg.shared_length, self.cfg.shared_offset)
            if z != t:
                self.fail(f"{where}: shared region: "
                          + describe_bytes_difference(z, t, self.cfg.shared_offset))

    # -- the loop ----------------------------------------------------------------------

    def run(self) -> dict:
        cfg = self.cfg
        deadline = time.monotonic() + cfg.duration if cfg.duration else None
        try:
            while True:
                if deadline is not None:
                    if time.monotonic() >= deadline:
                        break
                elif self.step >= cfg.ops:
                    break
                if self.step and self.step % cfg.check_every == 0:
                    self.op = ("check",)
                    self.do_check()
                op = self.generate()
                self.op = op
                if cfg.trace:
                    print(f"p{cfg.proc} {self.step}: {brief_op(op)}", file=sys.stderr, flush=True)
                self.run_op(op)
                self.history.append(f"{self.step}: {brief_op(op)}")
                self.step += 1
            self.op = ("check",)
            self.do_check()
            for s in self.slots:
                os.close(s.z)
                os.close(s.t)
            self.slots.clear()
            return {"ok": True, "proc": cfg.proc, "ops": self.step, "counts": dict(self.counts)}
        except Mismatch as e:
            return {"ok": False, "proc": cfg.proc, "ops": self.step, "counts": dict(self.counts),
                    "message": self.failure_text(str(e))}

    def failure_text(self, what: str) -> str:
        cfg = self.cfg
        ops = self.step + 1 if cfg.duration else cfg.ops
        return (f"fsmodel mismatch: seed {cfg.seed}, process {cfg.proc} of {cfg.procs}, "
                f"step {self.step}, options {cfg.opts!r}\n"
                f"  op: {brief_op(self.op)}\n  {what}\n"
                f"  replay: {replay_command(cfg.seed, ops, cfg.procs, cfg.opts)}\n"
                f"  (this process alone: {replay_command(cfg.seed, ops, cfg.procs, cfg.opts, cfg.proc)})\n"
                f"  open slots: {[(i, brief_path(s.path), oct(s.flags)) for i, s in enumerate(self.slots)]}\n"
                f"  last operations:\n    " + "\n    ".join(self.history))


def brief_path(p: str) -> str:
    """A path with the 255/256-character names shortened (L*255 -> L{255})."""
    return re.sub(r"([LT])\1{20,}", lambda m: f"{m.group(1)}{{{len(m.group(0))}}}", p)


def brief_op(op: tuple) -> str:
    parts = []
    for a in op[1:]:
        parts.append(repr(brief_path(a)) if isinstance(a, str) else repr(a))
    return f"{op[0]}({', '.join(parts)})" if op else "()"


def scan_tree_light(base: str) -> list[tuple[str, str]]:
    """(relative path, kind) of everything below base, sorted (the model's listing)."""
    out = []
    stack = [""]
    while stack:
        rel = stack.pop()
        d = os.path.join(base, rel) if rel else base
        try:
            it = list(os.scandir(d))
        except OSError:
            continue
        for e in it:
            r = f"{rel}/{e.name}" if rel else e.name
            if e.is_symlink():
                k = "symlink"
            elif e.is_dir(follow_symlinks=False):
                k = "dir"
                stack.append(r)
            elif e.is_file(follow_symlinks=False):
                k = "file"
            else:
                k = "other"
            out.append((r, k))
    out.sort()
    return out


def worker_main(cfg_json: str) -> int:
    cfg = WorkerConfig(**json.loads(cfg_json))
    try:
        w = Worker(cfg)
        result = w.run()
    except Exception:  # noqa: BLE001 - a harness error, reported as such
        result = {"ok": False, "proc": cfg.proc, "ops": -1,
                  "message": f"fsmodel worker {cfg.proc} (seed {cfg.seed}) crashed:\n"
                             + traceback.format_exc()}
    sys.stdout.write("FSMODEL-RESULT " + json.dumps(result) + "\n")
    sys.stdout.flush()
    return 0


# ---------------------------------------------------------------------------------
# a run: several processes, compaction, final comparison and leak check
# ---------------------------------------------------------------------------------

def read_stats(zroot: str) -> dict[str, float]:
    out = {}
    with open(os.path.join(zroot, CONTROL_NAME, "stats")) as f:
        for line in f:
            k, _, v = line.partition(":")
            try:
                out[k.strip()] = float(v)
            except ValueError:
                pass
    return out


class Compacting:
    """A thread writing 1 to .zsfs/compact every ``every`` seconds (0: never), and
    noting the peaks of stats' orig_data_size and mem_used_total."""

    def __init__(self, zroot: str, every: float) -> None:
        self.path = os.path.join(zroot, CONTROL_NAME, "compact")
        self.zroot = zroot
        self.every = every
        self.runs = 0
        self.peaks: Counter[str] = Counter()
        self.last: dict[str, float] = {}
        self.errors: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def __enter__(self) -> Compacting:
        self._thread.start()
        return self

    def _loop(self) -> None:
        while not self._stop.wait(self.every or 0.1):
            try:
                st = read_stats(self.zroot)
                self.last = st
                for k in ("orig_data_size", "mem_used_total"):
                    self.peaks[k] = max(self.peaks[k], int(st.get(k, 0)))
            except OSError as e:
                self.errors.append(f"reading stats: {e}")
            if not self.every:
                continue
            try:
                fd = os.open(self.path, os.O_WRONLY)
                try:
                    os.write(fd, b"1\n")
                finally:
                    os.close(fd)
                self.runs += 1
            except OSError as e:
                self.errors.append(str(e))

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(60)


@dataclass
class RunResult:
    seed: int
    opts: str
    procs: int
    ops: int                   # operations done, all processes
    counts: Counter = field(default_factory=Counter)
    compactions: int = 0
    peaks: Counter = field(default_factory=Counter)   # of orig_data_size, mem_used_total
    stats: dict = field(default_factory=dict)         # the last .zsfs/stats sampled in the run
    seconds: float = 0.0
    entries: int = 0


def _clear(root: str, skip: frozenset) -> None:
    for name in os.listdir(root):
        if name in skip:
            continue
        p = os.path.join(root, name)
        if os.path.isdir(p) and not os.path.islink(p):
            shutil.rmtree(p)
        else:
            os.unlink(p)


def run_model(zroot: str, troot: str, *, seed: int, ops: int, procs: int, plan: Plan,
              duration: float = 0.0, check_every: int = 250, only_proc: int | None = None,
              timeout: float = 600.0, trace: bool = False, leak_check: bool = True) -> RunResult:
    """One seeded run on an empty zsfs root and an empty tmpfs root; raises Mismatch."""
    start = time.monotonic()
    cs = plan.chunk_size
    region = 2 * cs + 1234        # not chunk-aligned: neighbours share chunks
    with open(os.path.join(troot, SHARED_NAME), "wb") as f:
        f.truncate(procs * region)
    with open(os.path.join(zroot, SHARED_NAME), "wb") as f:
        f.truncate(procs * region)
    which = range(procs) if only_proc is None else [only_proc]
    for k in which:
        os.mkdir(os.path.join(zroot, f"p{k}"))
        os.mkdir(os.path.join(troot, f"p{k}"))
    logdir = tempfile.mkdtemp(prefix="fsmodel-workers-")
    workers = []
    for k in which:
        cfg = WorkerConfig(zroot=zroot, troot=troot, seed=seed, proc=k, procs=procs, ops=ops,
                           opts=plan.opts, chunk_size=cs, enospc=plan.enospc,
                           check_every=check_every, duration=duration,
                           shared_offset=k * region, shared_length=region, trace=trace)
        out = open(os.path.join(logdir, f"p{k}.out"), "w+")
        err = None if trace else open(os.path.join(logdir, f"p{k}.err"), "w+")
        proc = subprocess.Popen(
            [sys.executable, os.path.abspath(__file__), "--worker", json.dumps(cfg.__dict__)],
            stdin=subprocess.DEVNULL, stdout=out, stderr=err, start_new_session=True)
        workers.append((k, proc, out, err))
    result = RunResult(seed, plan.opts, procs, 0)
    failures: list[str] = []
    compacting = Compacting(zroot, plan.compact_every)
    try:
        if compacting:
            compacting.__enter__()
        deadline = time.monotonic() + timeout
        pending = {k: proc for k, proc, _, _ in workers}
        stopped = False
        while pending:
            for k, proc in list(pending.items()):
                if proc.poll() is not None:
                    del pending[k]
            failed = [k for k, proc, out, _ in workers
                      if proc.returncode is not None and not (_parse_result(_text(out)) or {}).get("ok")]
            if failed and pending and not stopped:
                for proc in pending.values():     # one failed: stop the others
                    os.killpg(proc.pid, signal.SIGTERM)
                stopped = True
            if pending and time.monotonic() > deadline:
                for proc in pending.values():
                    os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait()
                failures.append(f"timeout: workers {sorted(pending)} still running after "
                                f"{timeout:.0f} s (a hang?); seed {seed}, options {plan.opts!r}")
                break
            time.sleep(0.05)
    finally:
        if compacting:
            compacting.__exit__(None, None, None)
    for k, proc, out, err in workers:
        r = _parse_result(_text(out))
        if r is not None:
            result.ops += max(0, r["ops"])
            result.counts.update(r.get("counts", {}))
            if not r["ok"]:
                failures.append(r["message"])
        elif not stopped:
            failures.append(f"worker {k}: exit status {proc.returncode}, no result:\n"
                            f"{_text(err)[-4000:] if err else ''}")
        out.close()
        if err:
            err.close()
    shutil.rmtree(logdir, ignore_errors=True)
    if compacting:
        result.compactions = compacting.runs
        result.peaks = compacting.peaks
        result.stats = compacting.last
        if compacting.errors:
            failures.append(f"writing .zsfs/compact failed: {compacting.errors[:3]}")
    if failures:
        raise Mismatch("\n\n".join(failures))
    # the two roots as a whole (the shared file included)
    rng = random.Random(f"fsmodel-final:{seed}")
    try:
        result.entries = compare_trees(zroot, troot, f"final comparison (seed {seed})", rng,
                                       skip_top=frozenset({CONTROL_NAME}))
    except Mismatch as e:
        raise Mismatch(f"{e}\n  replay: {replay_command(seed, ops, procs, plan.opts)}") from None
    if leak_check:
        leak = check_memory_returned(zroot, troot)
        if leak:
            raise Mismatch(f"seed {seed}, options {plan.opts!r}: {leak}\n  replay: "
                           f"{replay_command(seed, ops, procs, plan.opts)}")
    result.seconds = time.monotonic() - start
    return result


def check_memory_returned(zroot: str, troot: str, timeout: float = 15.0) -> str | None:
    """Remove everything; zsfs must then hold no data, no chunks and (after a
    compaction) no allocator memory, but for the pages of the one recompression
    dictionary it may keep while it is the current one (where zsfs has recompression).
    Returns a problem or None."""
    _clear(troot, frozenset())
    _clear(zroot, frozenset({CONTROL_NAME}))
    keys = ("orig_data_size", "staged_data_size", "mem_reserved", "chunks", "files",
            "compr_data_size", "mem_used_total", "dictionary_chunks")
    deadline = time.monotonic() + timeout
    compacted = False
    while True:
        s = read_stats(zroot)
        left = {k: s.get(k) for k in keys if s.get(k)}
        dictionaries = s.get("dictionaries", 0)
        if dictionaries > 1:
            left["dictionaries"] = dictionaries     # retired ones must go with their chunks
        elif dictionaries:
            pages = -(-int(s.get("dictionary_bytes", 0)) // 4096)
            if left.get("mem_used_total", 0) <= pages * 4096:
                left.pop("mem_used_total", None)
        if not left:
            return None
        if not compacted and set(left) <= {"mem_used_total"}:
            with open(os.path.join(zroot, CONTROL_NAME, "compact"), "w") as f:
                f.write("1\n")
            compacted = True
            continue
        if time.monotonic() > deadline:
            return (f"after removing everything, zsfs still holds {left} "
                    f"({timeout:.0f} s later{', after a compaction' if compacted else ''})")
        time.sleep(0.05)


def _text(f) -> str:
    f.flush()
    f.seek(0)
    return f.read()


def _parse_result(out: str | None) -> dict | None:
    for line in (out or "").splitlines()[::-1]:
        if line.startswith("FSMODEL-RESULT "):
            return json.loads(line[len("FSMODEL-RESULT "):])
    return None


# ---------------------------------------------------------------------------------
# mounting (for tools/fsmodel; the tests use conftest's fixtures for zsfs)
# ---------------------------------------------------------------------------------

def mount_tmpfs(path: str) -> None:
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4g,mode=0755", "fsmodel-oracle",
                        path], capture_output=True, text=True)
    if r.returncode:
        raise RuntimeError(f"cannot mount a tmpfs on {path}: {r.stderr.strip()}")


def umount(path: str) -> None:
    subprocess.run(["umount", path], capture_output=True)
    if os.path.ismount(path):
        subprocess.run(["umount", "-l", path], capture_output=True)


def _is_fuse_mounted(path: str) -> bool:
    path = os.path.realpath(path)
    with open("/proc/self/mountinfo") as f:
        for line in f:
            left, _, right = line.partition(" - ")
            lf = left.split(" ")
            if len(lf) > 4 and lf[4] == path and right.startswith("fuse"):
                return True
    return False


class MountRefused(RuntimeError):
    """The zsfs command exited instead of mounting (status 2: bad options)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class ZsfsMount:
    """``python -m zsfs MNT -f -o OPTS`` as a child; unmount() checks it exits 0.
    ``command`` replaces ``python -m zsfs`` (a launcher with a planted bug, say)."""

    def __init__(self, path: str, opts: str, log: str, command: list[str] | None = None) -> None:
        self.path = path
        self.log = log
        argv = list(command or [sys.executable, "-m", "zsfs"]) + [path, "-f"] \
            + (["-o", opts] if opts else [])
        with open(log, "wb") as logf:
            self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=logf,
                                         stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 15
        while not _is_fuse_mounted(path):
            if self.proc.poll() is not None:
                raise MountRefused(self.proc.returncode, f"zsfs exited with status "
                                   f"{self.proc.returncode} ({argv}):\n{self.stderr()}")
            if time.monotonic() > deadline:
                self.proc.kill()
                self.proc.wait()
                raise RuntimeError(f"zsfs did not mount ({argv}):\n{self.stderr()}")
            time.sleep(0.02)
        os.stat(path)

    def stderr(self) -> str:
        try:
            with open(self.log, errors="replace") as f:
                return f.read()
        except OSError:
            return ""

    def unmount(self) -> str | None:
        """Unmount; returns a problem (the daemon did not exit 0) or None."""
        for _ in range(5):
            if not _is_fuse_mounted(self.path):
                break
            subprocess.run(["fusermount3", "-u", self.path], capture_output=True)
            time.sleep(0.1)
        if _is_fuse_mounted(self.path):
            subprocess.run(["umount", "-l", self.path], capture_output=True)
        try:
            rc = self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            return "the daemon did not exit after unmount"
        return None if rc == 0 else f"daemon exit status {rc}"


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--worker":
        sys.exit(worker_main(sys.argv[2]))
    print("usage: fsmodel.py --worker CONFIG_JSON (see tools/fsmodel)", file=sys.stderr)
    sys.exit(2)
