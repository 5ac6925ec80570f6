"""``MOUNT/.zsfs/``: the control directory, modelled on zram's sysfs files.

Every mount has it. Reading a file renders it from live counters; writing one
changes a knob or runs a compaction, and a malformed value is ``EINVAL``. The
files hold nothing themselves: contents are rendered when a file is opened, so
partial reads of one open file are consistent with each other, and the FUSE layer
opens them with direct I/O so no stale page cache is ever read.

| file              | access | zram counterpart                         |
|-------------------|--------|------------------------------------------|
| stats             | r      | mm_stat, spelled out one value per line  |
| mm_stat           | r      | mm_stat (same nine columns and format)   |
| classes           | r      | zsmalloc debugfs ``classes``             |
| compact           | w      | compact (``1`` compacts synchronously)   |
| mem_limit         | rw     | mem_limit (K/M/G suffixes, 0 = none)     |
| mem_used_max      | rw     | mem_used_max (``0`` resets it)           |
| compact_threshold | rw     | background compaction below this ratio   |
| compact_interval  | rw     | seconds between background checks        |
| requests          | rw     | none: FUSE requests per opcode, handler  |
|                   |        | time (``0`` clears the counters)         |
| recompress        | w      | recompress (``idle`` or ``all``, at once)|
| recompress_idle   | rw     | none: seconds before background recomp.  |
| recompress_level  | rw     | algorithm_params level of recompression  |
| dictionary        | rw     | ``on``/``off``; ``retrain`` trains anew  |

Values are parsed by the same functions as the mount options of the same name
(zsfs.options), ranges included; a write may end with one newline, as ``echo``'s
does, and may hold nothing else. A rejected write changes nothing.

The directory and its files belong to the user who mounted; the kernel's
``default_permissions`` check keeps other users to reading. The namespace is
fixed: nothing can be created, removed, linked, renamed or chmod'ed in it.
"""

from __future__ import annotations

import errno
import stat
import time
from dataclasses import dataclass
from typing import Awaitable, Callable

from .arena import PAGE_SIZE
from .chunkstore import ChunkStore
from .compactor import Compactor
from .options import OptionError, parse_value
from .recompress import NoRoom, NotEnoughData, Recompressor
from .requests import RequestStats
from .tree import Tree
from .zsmalloc import FULLNESS_LABELS, Pool, PoolStats

CONTROL_NAME = b".zsfs"
CONTROL_BASE = 1 << 62   # control inode numbers; the tree's never get this high
CONTROL_DIR_INO = CONTROL_BASE


def _einval(what: str) -> OSError:
    return OSError(errno.EINVAL, f"invalid value for {what}")


def _decimal_text(x: float) -> str:
    """A decimal as the option parser takes it back (no exponent: 2592000, 0.25)."""
    return f"{x:.6f}".rstrip("0").rstrip(".")


def process_rss() -> int:
    """This process's resident set size in bytes (VmRSS)."""
    with open("/proc/self/status", "rb") as f:
        for line in f:
            if line.startswith(b"VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


@dataclass(frozen=True)
class ControlFile:
    """One file of the directory: how to render it and, if writable, to apply a write."""

    name: bytes
    ino: int
    render: Callable[[], str] | None
    apply: Callable[[str], Awaitable[None]] | None

    @property
    def mode(self) -> int:
        return stat.S_IFREG | (0o444 if self.render else 0) | (0o200 if self.apply else 0)


class Control:
    """The control directory over one mount's pool, store, tree and compactor."""

    def __init__(self, pool: Pool, store: ChunkStore, tree: Tree, compactor: Compactor,
                 uid: int, gid: int, recompressor: Recompressor | None = None,
                 writeback: bool = False) -> None:
        self.pool = pool
        self.store = store
        self.tree = tree
        self.compactor = compactor
        self.recompressor = recompressor
        self.writeback = writeback
        self.uid = uid
        self.gid = gid
        self.mtime_ns = time.time_ns()
        self.requests = RequestStats()
        specs: list[tuple[str, Callable[[], str] | None,
                          Callable[[str], Awaitable[None]] | None]] = [
            ("stats", self._stats, None),
            ("mm_stat", self._mm_stat, None),
            ("classes", self._classes, None),
            ("compact", None, self._compact),
            ("mem_limit", lambda: f"{self.pool.mem_limit}\n", self._set_mem_limit),
            ("mem_used_max", lambda: f"{self.pool.stats().mem_used_max}\n", self._reset_max),
            ("compact_threshold", lambda: f"{self.compactor.threshold:g}\n", self._set_threshold),
            ("compact_interval", lambda: f"{self.compactor.interval:g}\n", self._set_interval),
            ("requests", self.requests.render, self._clear_requests),
        ]
        if recompressor is not None:
            specs += [
                ("recompress", None, self._recompress),
                ("recompress_idle", lambda: f"{_decimal_text(recompressor.idle_age)}\n",
                 self._set_recompress_idle),
                ("recompress_level", lambda: f"{recompressor.level}\n",
                 self._set_recompress_level),
                ("dictionary", lambda: "on\n" if recompressor.dictionary else "off\n",
                 self._set_dictionary),
            ]
        self.files = {
            name.encode(): ControlFile(name.encode(), CONTROL_BASE + 1 + i, render, apply)
            for i, (name, render, apply) in enumerate(specs)
        }
        self._by_ino = {f.ino: f for f in self.files.values()}

    @staticmethod
    def owns(ino: int) -> bool:
        return ino >= CONTROL_BASE

    def file(self, ino: int) -> ControlFile:
        try:
            return self._by_ino[ino]
        except KeyError:
            raise OSError(errno.ENOENT, "no such control file") from None

    def lookup(self, name: bytes) -> int:
        try:
            return self.files[name].ino
        except KeyError:
            raise OSError(errno.ENOENT, "no such control file") from None

    def mode(self, ino: int) -> int:
        if ino == CONTROL_DIR_INO:
            return stat.S_IFDIR | 0o755
        return self.file(ino).mode

    async def write(self, ino: int, data: bytes) -> None:
        """Apply a write to a control file; EINVAL for values it does not take."""
        control = self.file(ino)
        if control.apply is None:
            raise OSError(errno.EINVAL, f"{control.name.decode()} is read-only")
        try:
            text = data.decode("ascii")
        except UnicodeDecodeError:
            raise _einval(control.name.decode()) from None
        # As the kernel's kstrto*() for sysfs: one trailing newline (echo's) and no
        # other whitespace.
        await control.apply(text[:-1] if text.endswith("\n") else text)

    # -- writers -------------------------------------------------------------------

    async def _compact(self, text: str) -> None:
        if text != "1":
            raise _einval("compact")
        await self.compactor.compact(manual=True)

    @staticmethod
    def _parse(name: str, text: str) -> int | float:
        try:
            return parse_value(name, text)
        except OptionError:
            raise _einval(name) from None

    async def _set_mem_limit(self, text: str) -> None:
        self.pool.mem_limit = int(self._parse("mem_limit", text))

    async def _reset_max(self, text: str) -> None:
        if text != "0":
            raise _einval("mem_used_max")
        self.pool.reset_mem_used_max()
        self.store.versions.reset_max()

    def _memory(self, pool: PoolStats) -> tuple[int, int, int]:
        """mem_used_total, mem_used_max and mem_reserved in bytes: the pool's pages plus the
        dictionaries' (whose pool reservation is theirs, not staged chunks')."""
        versions = self.store.versions
        return (pool.mem_used + versions.dictionary_pages * PAGE_SIZE,
                pool.mem_used_max + versions.dictionary_pages_max * PAGE_SIZE,
                (pool.reserved_pages - versions.dictionary_pages) * PAGE_SIZE)

    async def _clear_requests(self, text: str) -> None:
        if text != "0":
            raise _einval("requests")
        self.requests.clear()

    async def _set_threshold(self, text: str) -> None:
        self.compactor.threshold = self._parse("compact_threshold", text)

    async def _set_interval(self, text: str) -> None:
        self.compactor.interval = self._parse("compact_interval", text)

    async def _recompress(self, text: str) -> None:
        if text not in ("idle", "all"):
            raise _einval("recompress")
        assert self.recompressor is not None
        await self.recompressor.recompress(idle_only=text == "idle")

    async def _set_recompress_idle(self, text: str) -> None:
        assert self.recompressor is not None
        self.recompressor.idle_age = self._parse("recompress_idle", text)

    async def _set_recompress_level(self, text: str) -> None:
        assert self.recompressor is not None
        self.recompressor.level = int(self._parse("recompress_level", text))

    async def _set_dictionary(self, text: str) -> None:
        assert self.recompressor is not None
        if text == "retrain":
            try:
                await self.recompressor.retrain()
            except NotEnoughData:
                raise OSError(errno.ENODATA, "too little data to train a dictionary") from None
            except NoRoom:
                raise OSError(errno.ENOSPC, "no room for a dictionary under mem_limit") from None
        else:
            self.recompressor.dictionary = bool(self._parse("dictionary", text))

    # -- renderers -------------------------------------------------------------------

    def _stats(self) -> str:
        pool = self.pool.stats()
        store = self.store.stats()
        tree = self.tree.stats()
        compactor = self.compactor
        mem_used, mem_used_max, mem_reserved = self._memory(pool)
        lines = [
            ("orig_data_size", store.orig_bytes),
            ("compr_data_size", pool.obj_bytes),
            ("mem_used_total", mem_used),
            ("mem_limit", pool.mem_limit),
            ("mem_used_max", mem_used_max),
            ("staged_data_size", store.staged_bytes),
            ("mem_reserved", mem_reserved),
            ("same_chunks", store.same_chunks),
            ("huge_chunks", store.huge_chunks),
            ("huge_chunks_since", store.huge_chunks_since),
            ("pages_compacted", pool.pages_compacted),
            ("freeable_pages", pool.freeable),
            ("compactions_background", compactor.background_runs),
            ("compactions_manual", compactor.manual_runs),
            ("compact_longest_slice_us", round(compactor.longest_slice * 1e6)),
            ("frag_ratio", f"{pool.frag_ratio * 100:.2f}"),
            ("compression_ratio", f"{store.orig_bytes / mem_used if mem_used else 0:.2f}"),
            ("recompressed_chunks", store.recompressed_chunks),
            ("recompress_saved_bytes", store.recompress_saved_bytes),
            ("dictionary_chunks", store.dictionary_chunks),
            ("dictionaries", store.dictionaries),
            ("dictionary_bytes", store.dictionary_bytes),
            ("dedup_chunks", store.dedup_chunks),
            ("dedup_saved_bytes", store.dedup_saved_bytes),
            ("files", tree.files),
            ("directories", tree.directories),
            ("symlinks", tree.symlinks),
            ("special_files", tree.special),
            ("chunks", store.chunks),
            ("chunk_size", self.store.chunk_size),
            ("level", self.store.codec.level),
            ("writeback", int(self.writeback)),
            ("metadata_bytes", self.pool.metadata_bytes() + self.tree.metadata_bytes()),
            ("rss_bytes", process_rss()),
        ]
        return "".join(f"{name + ':':<26}{value}\n" for name, value in lines)

    def _mm_stat(self) -> str:
        pool = self.pool.stats()
        store = self.store.stats()
        mem_used, mem_used_max, _ = self._memory(pool)
        columns = (store.orig_bytes, pool.obj_bytes, mem_used, pool.mem_limit,
                   mem_used_max, store.same_chunks, pool.pages_compacted,
                   store.huge_chunks, store.huge_chunks_since)
        return " ".join(f"{n:8d}" for n in columns) + "\n"

    def _classes(self) -> str:
        rows = self.pool.stats().classes
        head = ["class", "size", *FULLNESS_LABELS, "obj_allocated", "obj_used",
                "pages_used", "pages_per_zspage", "freeable"]
        widths = [max(6, len(h)) for h in head]
        table = [head]
        for c in rows:
            table.append([c.index, c.size, *c.fullness, c.obj_allocated, c.obj_used,
                          c.pages_used, c.pages_per_zspage, c.freeable])
        totals = [sum(col) for col in zip(*(r[2:] for r in table[1:]))] if rows else [0] * (len(head) - 2)
        totals[-2] = ""   # pages_per_zspage does not add up
        table.append(["Total", "", *totals])
        return "".join(" ".join(f"{v:>{w}}" for v, w in zip(r, widths)) + "\n" for r in table)

    def render(self, ino: int) -> bytes:
        """The file's contents now (empty for the write-only ``compact``)."""
        render = self.file(ino).render
        return render().encode() if render else b""
