"""zsmalloc: a slab-like allocator for compressed objects, after Linux mm/zsmalloc.c.

Objects are variable-sized byte strings (compressed chunks). Each size is rounded
up to a *size class*; classes are 16 bytes apart from 32 bytes up to
``max_object_size``.
A class packs its objects into *zspages*: chains of ``pages_per_zspage`` arena
pages, chosen per class to waste the fewest bytes at the end of the chain. The
pages of a chain are not contiguous and an object may straddle from one page to
the next; only single pages are ever taken from the arena. Neighbouring classes
that would get the same chain length and object count are merged into one.

Classes that fit one object per zspage are *huge*: the object occupies the zspage
alone and carries no header. ``huge_class_size`` is the watermark above which
every class is huge; callers storing compressed data should store anything that
does not compress below it uncompressed instead (zram's rule).

Handles are decoupled from locations (the 2015 "decouple handle and object"
patch): ``malloc`` returns a small integer handle, an index into a table that
records where the object is now (zspage, slot) and its exact length. Every
non-huge slot starts with a 4-byte header: an allocated slot holds its handle
(tag bit set), a free slot the index of the next free slot of its zspage (tag bit
clear), so the free list lives in the arena itself and compaction can find an
object's owner by reading the slot. Because only the handle table knows where an
object is, objects can move.

Each class keeps its zspages in fullness groups of 10% (as the kernel does since
6.2); allocation uses the fullest zspage with room, which keeps partly used
zspages few. *Compaction* walks the classes from largest to smallest and, per
class, moves objects from the emptiest zspage into the fullest one, updates their
handles and frees source zspages as they empty. That leaves up to one partly
used zspage per class, which zsfs then *spills*: a slot of a larger class holds any
smaller object, so those zspages empty into free slots larger classes hold anyway
(the kernel stops at the per-class floor). Each compaction first moves objects
spilled by earlier ones back into their own class where it has room again. It
runs in bounded slices (``compact_steps``) so an event loop can serve requests
between them.

Bookkeeping lives in Python arrays only: per handle (8 bytes) and per zspage (a
zspage is a number with a row of columns, about 40 bytes; its fullness group is
an intrusive list through two of them, like the kernel's ``list_head``); nothing
is kept per free slot. Both tables are slots.py columns, so they shrink when the
pool does. A zspage as an object took about 190 bytes of CPython's small-object
arenas, which stayed pinned after the zspages were freed.

Concurrency: a Pool is not thread-safe. zsfs calls it from the trio thread only.
"""

from __future__ import annotations

import math
import struct
import sys
from array import array
from dataclasses import dataclass
import itertools
from itertools import accumulate
from typing import Iterable, Iterator

from .arena import PAGE_SHIFT, PAGE_SIZE, Arena
from .slots import Slots

HANDLE_SIZE = 4
ZS_MIN_ALLOC_SIZE = 32
#: Class spacing at every maximum object size. The kernel spaces classes max/256
#: apart (64 bytes for zsfs's 16 KiB chunks); 16 bytes cut slot rounding, the
#: largest waste left once compaction spills (see README for the measurements), and
#: spilling keeps the floor of the extra classes down.
ZS_SIZE_CLASS_DELTA = 16
ZS_MAX_CHAIN = 16
#: Fullness groups: 0 is empty, 1..10 hold zspages under 10%..100% in use, 11 is full.
FULLNESS_LABELS = ("10%", "20%", "30%", "40%", "50%", "60%", "70%", "80%", "90%", "99%", "100%")
_FULL = 11
_OFF_MASK = PAGE_SIZE - 1
_NIL = -1                      # no zspage

# A handle-table entry: zspage id | slot index | object length | live tag.
_IDX_SHIFT = 18
_ZSPAGE_SHIFT = 33
_IDX_MASK = 0x7FFF
_LEN_MASK = 0x1FFFF

_header = struct.Struct("<I")


class PoolFull(MemoryError):
    """The allocation would take the pool past its memory limit (or the arena's size)."""


class InvalidHandle(LookupError):
    """A handle that malloc did not return, or that was freed."""


class SizeClass:
    """Objects of sizes ``(size - delta, size]`` (header included), in zspages of one shape."""

    __slots__ = (
        "index", "size", "pages_per_zspage", "objs_per_zspage", "huge", "header",
        "group_of", "heads", "counts", "current", "obj_used", "zspages",
    )

    def __init__(self, index: int, size: int, pages_per_zspage: int, objs_per_zspage: int) -> None:
        self.index = index
        self.size = size
        self.pages_per_zspage = pages_per_zspage
        self.objs_per_zspage = objs_per_zspage
        self.huge = objs_per_zspage == 1
        self.header = 0 if self.huge else HANDLE_SIZE
        self.group_of = tuple(fullness_group(n, objs_per_zspage) for n in range(objs_per_zspage + 1))
        self.heads = [_NIL] * (_FULL + 1)    # first zspage of each fullness group
        self.counts = [0] * (_FULL + 1)      # zspages in each group
        self.current = _NIL                  # where malloc looks first
        self.obj_used = 0
        self.zspages = 0

    def freeable(self) -> int:
        """Pages compaction could free now (the kernel's ``zs_can_compact``)."""
        if self.huge:
            return 0
        free_slots = self.zspages * self.objs_per_zspage - self.obj_used
        return free_slots // self.objs_per_zspage * self.pages_per_zspage


class HandleTable(Slots):
    """Where each object is, by handle: ``entries[h]`` is zspage | slot | length | 1,
    0 for a free handle (so a freed handle is told by its clear tag bit)."""

    __slots__ = ("entries",)

    def __init__(self) -> None:
        self.entries = array("Q", [0])
        super().__init__((self.entries,), (0,), self.entries, 0)

    # Slots' own methods, not wrappers: malloc and free call them for every object.
    new = Slots._take
    free = Slots._give_back


_FREE_ZSPAGE = -2              # base of a free zspage number


class ZsPageTable(Slots):
    """Every zspage's row, by zspage number: its class (None when free), the byte
    address of its first page if the chain is contiguous (else -1, and its pages
    are in ``scattered``), objects in use, the free-slot list's head (slot + 1, 0 =
    empty), the first slot never used, its fullness group, and its neighbours in
    that group's list."""

    __slots__ = ("size_class", "base", "scattered", "inuse", "freelist", "bump", "group",
                 "next", "prev")

    def __init__(self) -> None:
        self.size_class: list[SizeClass | None] = [None]
        self.base = array("q", [_FREE_ZSPAGE])
        self.scattered: dict[int, array] = {}
        self.inuse = array("H", [0])
        self.freelist = array("H", [0])
        self.bump = array("H", [0])
        self.group = array("B", [0])
        self.next = array("i", [_NIL])
        self.prev = array("i", [_NIL])
        super().__init__(
            (self.size_class, self.base, self.inuse, self.freelist, self.bump, self.group,
             self.next, self.prev),
            (None, _FREE_ZSPAGE, 0, 0, 0, 0, _NIL, _NIL), self.base, _FREE_ZSPAGE)

    def new(self, cls: SizeClass, pages: list[int]) -> int:
        first = pages[0]
        z = self._take()
        self.size_class[z] = cls
        if all(p == first + i for i, p in enumerate(pages)):
            self.base[z] = first << PAGE_SHIFT
        else:
            self.base[z] = -1
            self.scattered[z] = array("I", pages)
        return z

    def free(self, z: int) -> None:
        self.scattered.pop(z, None)
        self._give_back(z)

    def memory(self) -> int:
        return super().memory() + sys.getsizeof(self.scattered) + sum(
            map(sys.getsizeof, self.scattered.values()))


# Python bytes of one class.
_CLASS_BYTES = sys.getsizeof(SizeClass.__new__(SizeClass)) + 2 * sys.getsizeof([0] * (_FULL + 1))


def fullness_group(inuse: int, objs_per_zspage: int) -> int:
    """The kernel's ``get_fullness_group``: 0 empty, 1..10 by tenths, 11 full."""
    if inuse == objs_per_zspage:
        return _FULL
    if inuse == 0:
        return 0
    return 100 * inuse // objs_per_zspage // 10 + 1


def pages_per_zspage(size: int) -> int:
    """Chain length wasting the fewest bytes for objects of ``size`` bytes.

    As in the kernel, usage is compared in whole percent and the shortest chain
    wins a tie. Chains are up to 16 pages, or up to four objects' worth of pages
    for objects above 16 KiB, which would otherwise fit only three to a chain.
    """
    min_pages = -(-size // PAGE_SIZE)
    best, best_used = min_pages, -1
    for pages in range(min_pages, max(ZS_MAX_CHAIN, 4 * min_pages) + 1):
        zspage_size = pages * PAGE_SIZE
        used = (zspage_size - zspage_size % size) * 100 // zspage_size
        if used > best_used:
            best, best_used = pages, used
    return best


@dataclass(frozen=True)
class ClassStats:
    """One row of the per-class table (zsmalloc's debugfs ``classes``).

    Attributes:
        index: class index; size: slot size in bytes (header included);
        fullness: zspage counts per group, for ``FULLNESS_LABELS`` (10% .. 100%);
        obj_allocated: slots in this class's zspages; obj_used: live objects;
        pages_used: arena pages; pages_per_zspage: chain length;
        freeable: pages compaction could free (``zs_can_compact``).
    """

    index: int
    size: int
    fullness: tuple[int, ...]
    obj_allocated: int
    obj_used: int
    pages_used: int
    pages_per_zspage: int
    freeable: int


@dataclass(frozen=True)
class PoolStats:
    """A snapshot of a pool.

    Attributes:
        pages_used: arena pages held by zspages; mem_used: the same in bytes.
        mem_used_max: high-water mark of mem_used, in bytes.
        mem_limit: the limit in force, bytes (0 = none).
        obj_bytes: exact bytes of live objects; objects: live objects.
        pages_compacted: pages freed by compaction since the pool was made.
        reserved_pages: pages promised to allocations still to come (reserve()).
        frag_ratio: obj_bytes / mem_used (1.0 for an empty pool).
        classes: per-class rows, non-empty classes only.
    """

    pages_used: int
    mem_used: int
    mem_used_max: int
    mem_limit: int
    obj_bytes: int
    objects: int
    pages_compacted: int
    reserved_pages: int
    frag_ratio: float
    classes: tuple[ClassStats, ...]

    @property
    def freeable(self) -> int:
        """Pages a full compaction could have freed at the time of the snapshot."""
        return sum(c.freeable for c in self.classes)


class Pool:
    """A zsmalloc pool over its own arena.

    Args:
        max_object_size: largest object, a power of two from 4096 to 65536.
        mem_limit: bytes of arena pages the pool may hold (0 = no limit); the
            attribute of the same name may be changed at any time.
        arena_capacity: bytes of address space to reserve (default: RAM size).
    """

    def __init__(self, max_object_size: int = 4096, mem_limit: int = 0,
                 arena_capacity: int | None = None) -> None:
        if (max_object_size < PAGE_SIZE or max_object_size > 65536
                or max_object_size & (max_object_size - 1)):
            raise ValueError(f"max_object_size must be a power of two in 4096..65536, "
                             f"not {max_object_size}")
        if mem_limit < 0:
            raise ValueError(f"mem_limit must be >= 0, not {mem_limit}")
        self.max_object_size = max_object_size
        self.mem_limit = mem_limit
        self.arena = Arena(arena_capacity)
        self._view = self.arena.view
        self.delta = ZS_SIZE_CLASS_DELTA
        self._classes, by_index = self._make_classes()
        # Index by (size + _lookup_bias) // delta: the class for size + header,
        # sizes below the first class mapping to it and the largest clamped to the last.
        self._lookup_bias = HANDLE_SIZE - ZS_MIN_ALLOC_SIZE + 2 * self.delta - 1
        self._class_lookup = [by_index[0], *by_index, by_index[-1]]
        first_huge = len(self._classes)
        while first_huge > 0 and self._classes[first_huge - 1].huge:
            first_huge -= 1
        #: Objects of this many bytes or more land in the top run of huge classes.
        self.huge_class_size = (self._classes[first_huge - 1].size - HANDLE_SIZE + 1
                                if first_huge else 1)
        self._handle_table = HandleTable()
        self._handles = self._handle_table.entries
        # A zspage is a number, its fields columns of a table (the columns are
        # trimmed in place, so these names stay valid).
        zs = self._zspage_table = ZsPageTable()
        self._zs_class, self._zs_base, self._zs_pages = zs.size_class, zs.base, zs.scattered
        self._zs_inuse, self._zs_freelist, self._zs_bump = zs.inuse, zs.freelist, zs.bump
        self._zs_group, self._zs_next, self._zs_prev = zs.group, zs.next, zs.prev
        self._spilled: set[int] = set()    # handles of objects spilled into a larger class
        self.obj_bytes = 0
        self.pages_compacted = 0
        #: Pages promised to objects not allocated yet (see reserve()).
        self.reserved_pages = 0
        self._grace = 0                    # pages malloc_reserved() may take past the limit
        # Prefix maxima of pages_per_zspage by lookup index: the longest chain a
        # new zspage for an object of at most a given size can need.
        self._worst_pages = list(accumulate((c.pages_per_zspage for c in self._class_lookup), max))

    @property
    def pages_used(self) -> int:
        """Arena pages held by zspages (the arena serves this pool alone)."""
        return self.arena.pages_used

    def _make_classes(self) -> tuple[list[SizeClass], list[SizeClass]]:
        """Build the distinct classes and the index -> class table (merged neighbours).

        Walks from the largest size down, as the kernel does, so that a smaller size
        with the same shape as the class above it shares that class.
        """
        count = math.ceil((self.max_object_size - ZS_MIN_ALLOC_SIZE) / self.delta) + 1
        by_index: list[SizeClass | None] = [None] * count
        distinct: list[SizeClass] = []
        above: SizeClass | None = None
        for i in reversed(range(count)):
            size = min(ZS_MIN_ALLOC_SIZE + i * self.delta, self.max_object_size)
            pages = pages_per_zspage(size)
            objs = pages * PAGE_SIZE // size
            if above is not None and above.pages_per_zspage == pages and above.objs_per_zspage == objs:
                by_index[i] = above
                continue
            above = SizeClass(i, size, pages, objs)
            by_index[i] = above
            distinct.append(above)
        distinct.reverse()
        return distinct, by_index  # type: ignore[return-value]

    # -- allocation ---------------------------------------------------------------

    def malloc(self, size: int) -> int:
        """Allocate an object of exactly ``size`` bytes and return its handle (> 0).

        Raises:
            ValueError: size is not in 1..max_object_size.
            PoolFull: a new zspage would exceed ``mem_limit``; the pool is unchanged.
        """
        if not 0 < size <= self.max_object_size:
            raise ValueError(f"object size {size} outside 1..{self.max_object_size}")
        cls = self._class_lookup[self._lookup_index(size)]
        in_use = self._zs_inuse
        z = cls.current
        if z == _NIL or in_use[z] == cls.objs_per_zspage:
            z = cls.current = self._zspage_with_room(cls)
        freelist = self._zs_freelist
        idx = freelist[z] - 1
        if idx >= 0:
            freelist[z] = _header.unpack_from(self._view, self._slot_addr(z, idx))[0] >> 1
        else:
            idx = self._zs_bump[z]
            self._zs_bump[z] = idx + 1
        handle = self._handle_table.new()
        self._handles[handle] = (z << _ZSPAGE_SHIFT) | (idx << _IDX_SHIFT) | (size << 1) | 1
        if cls.header:
            base = self._zs_base[z]
            _header.pack_into(self._view, base + idx * cls.size if base >= 0
                              else self._slot_addr(z, idx), (handle << 1) | 1)
        inuse = in_use[z] = in_use[z] + 1
        cls.obj_used += 1
        self.obj_bytes += size
        if cls.group_of[inuse] != self._zs_group[z]:
            self._regroup(cls, z)
        return handle

    def _lookup_index(self, size: int) -> int:
        """Where ``size`` is in ``_class_lookup`` (and ``_worst_pages``)."""
        return (size + self._lookup_bias) // self.delta

    def _zspage_with_room(self, cls: SizeClass) -> int:
        """The fullest zspage of ``cls`` that is not full, or a new one."""
        z = self._fullest_with_room(cls)
        return self._new_zspage(cls) if z == _NIL else z

    @staticmethod
    def _fullest_with_room(cls: SizeClass) -> int:
        """The fullest zspage of ``cls`` that is neither empty nor full, or _NIL."""
        heads = cls.heads
        for group in range(_FULL - 1, 0, -1):
            if heads[group] != _NIL:
                return heads[group]
        return _NIL

    @staticmethod
    def _emptiest_with_room(cls: SizeClass) -> int:
        """The emptiest zspage of ``cls`` that is neither empty nor full, or _NIL."""
        heads = cls.heads
        for group in range(1, _FULL):
            if heads[group] != _NIL:
                return heads[group]
        return _NIL

    def _members(self, cls: SizeClass, group: int) -> Iterator[int]:
        """The zspages of one fullness group of ``cls`` (the list must not change meanwhile)."""
        following = self._zs_next
        z = cls.heads[group]
        while z != _NIL:
            yield z
            z = following[z]

    def _link(self, cls: SizeClass, z: int, group: int) -> None:
        """Put zspage ``z`` first in fullness group ``group`` of ``cls``."""
        head = cls.heads[group]
        self._zs_next[z] = head
        self._zs_prev[z] = _NIL
        if head != _NIL:
            self._zs_prev[head] = z
        cls.heads[group] = z
        cls.counts[group] += 1
        self._zs_group[z] = group

    def _unlink(self, cls: SizeClass, z: int) -> None:
        """Take zspage ``z`` out of its fullness group's list."""
        group = self._zs_group[z]
        following, before = self._zs_next[z], self._zs_prev[z]
        if before == _NIL:
            cls.heads[group] = following
        else:
            self._zs_next[before] = following
        if following != _NIL:
            self._zs_prev[following] = before
        cls.counts[group] -= 1

    def _check_room(self, npages: int) -> None:
        """Raise PoolFull unless ``npages`` more pages fit beside those in use or reserved."""
        if npages <= self._grace:
            return
        wanted = self.pages_used + self.reserved_pages + npages
        if self.mem_limit and wanted * PAGE_SIZE > self.mem_limit:
            raise PoolFull(f"pool would exceed mem_limit of {self.mem_limit} bytes")
        if wanted > self.arena.capacity_pages:
            raise PoolFull(f"arena of {self.arena.capacity_pages} pages is exhausted")

    def worst_case_pages(self, size: int) -> int:
        """Pages that storing any object of at most ``size`` bytes may take from the arena.

        An object needs new pages only when its class has no zspage with room, and
        then it needs one whole zspage of that class: so the bound is the longest
        chain among the classes up to ``size``'s.
        """
        if not 0 < size <= self.max_object_size:
            raise ValueError(f"object size {size} outside 1..{self.max_object_size}")
        return self._worst_pages[self._lookup_index(size)]

    def reserve(self, pages: int) -> None:
        """Promise ``pages`` arena pages to allocations that will come later.

        Reserved pages count against ``mem_limit`` for everyone else, so data
        accepted now can still be stored when it has been compressed.

        Raises:
            PoolFull: the pages do not fit; nothing is reserved.
        """
        self._check_room(pages)
        self.reserved_pages += pages

    def unreserve(self, pages: int) -> None:
        """Give back pages from reserve(), before allocating against them or instead."""
        if not 0 <= pages <= self.reserved_pages:
            raise ValueError(f"cannot unreserve {pages} of {self.reserved_pages} reserved pages")
        self.reserved_pages -= pages

    def malloc_reserved(self, size: int, pages: int) -> int:
        """malloc() against ``pages`` from reserve(), which it consumes.

        It cannot fail for an object the reservation covers (worst_case_pages),
        even when ``mem_limit`` has been lowered since: what was promised is kept.
        """
        self.unreserve(pages)
        self._grace = pages
        try:
            return self.malloc(size)
        finally:
            self._grace = 0

    def _new_zspage(self, cls: SizeClass) -> int:
        """A new, empty zspage of ``cls``: a chain of pages, contiguous if they happen to be."""
        npages = cls.pages_per_zspage
        self._check_room(npages)
        z = self._zspage_table.new(cls, [self.arena.alloc_page() for _ in range(npages)])
        cls.zspages += 1
        self._link(cls, z, 0)
        return z

    def _free_zspage(self, cls: SizeClass, z: int) -> None:
        self._unlink(cls, z)
        if cls.current == z:
            cls.current = _NIL
        base = self._zs_base[z]
        if base >= 0:
            first = base >> PAGE_SHIFT
            pages: Iterable[int] = range(first, first + cls.pages_per_zspage)
        else:
            pages = self._zs_pages[z]
        for page in pages:
            self.arena.free_page(page)
        self._zspage_table.free(z)
        cls.zspages -= 1

    def _regroup(self, cls: SizeClass, z: int) -> None:
        """Move zspage ``z`` to the fullness group its objects in use now call for."""
        group = cls.group_of[self._zs_inuse[z]]
        old = self._zs_group[z]
        if group != old:
            self._unlink(cls, z)
            self._link(cls, z, group)
            # malloc's cached zspage must stay the fullest one with room.
            current = cls.current
            if current == _NIL:
                return
            if z == current:
                if group < old and any(h != _NIL for h in cls.heads[group + 1:_FULL]):
                    cls.current = _NIL
            elif self._zs_group[current] < group < _FULL:
                cls.current = _NIL

    # -- access -------------------------------------------------------------------

    def _entry(self, handle: int) -> int:
        """The live handle-table entry of ``handle``.

        The hot paths inline this: ``handles[handle]`` then this call only when the
        entry is not live or the lookup failed.
        """
        try:
            entry = self._handles[handle] if handle > 0 else 0
        except IndexError:
            entry = 0
        if not entry & 1:
            raise InvalidHandle(f"invalid or freed handle {handle!r}")
        return entry

    def _slot_addr(self, z: int, idx: int) -> int:
        """Arena address of slot ``idx``'s start (only its header is guaranteed in one page)."""
        offset = idx * self._zs_class[z].size
        base = self._zs_base[z]
        if base >= 0:
            return base + offset
        return (self._zs_pages[z][offset >> PAGE_SHIFT] << PAGE_SHIFT) | (offset & _OFF_MASK)

    def size(self, handle: int) -> int:
        """Exact length of the object."""
        return (self._entry(handle) >> 1) & _LEN_MASK

    def read(self, handle: int) -> memoryview | bytes:
        """The object's bytes: a view into the arena, valid until the pool next changes."""
        try:
            entry = self._handles[handle]
        except IndexError:
            entry = 0
        if not entry & 1 or handle <= 0:
            entry = self._entry(handle)
        z = entry >> _ZSPAGE_SHIFT
        cls = self._zs_class[z]
        offset = ((entry >> _IDX_SHIFT) & _IDX_MASK) * cls.size + cls.header
        length = (entry >> 1) & _LEN_MASK
        base = self._zs_base[z]
        if base >= 0:
            start = base + offset
            return self._view[start:start + length]
        return b"".join(self._segments(z, offset, length))

    def write(self, handle: int, data: bytes | bytearray | memoryview) -> None:
        """Fill the object with ``data``, which must be exactly its size."""
        try:
            entry = self._handles[handle]
        except IndexError:
            entry = 0
        if not entry & 1 or handle <= 0:
            entry = self._entry(handle)
        length = (entry >> 1) & _LEN_MASK
        if len(data) != length:
            raise ValueError(f"object {handle} holds {length} bytes, got {len(data)}")
        z = entry >> _ZSPAGE_SHIFT
        cls = self._zs_class[z]
        offset = ((entry >> _IDX_SHIFT) & _IDX_MASK) * cls.size + cls.header
        view = self._view
        base = self._zs_base[z]
        if base >= 0:
            start = base + offset
            view[start:start + length] = data
            return
        data = memoryview(data).cast("B")
        done = 0
        for segment in self._segments(z, offset, length):
            n = len(segment)
            segment[:] = data[done:done + n]
            done += n

    def _segments(self, z: int, offset: int, length: int) -> Iterator[memoryview]:
        """Arena views covering ``length`` bytes at ``offset`` of a non-contiguous zspage."""
        view, pages = self._view, self._zs_pages[z]
        while length:
            in_page = offset & _OFF_MASK
            n = min(length, PAGE_SIZE - in_page)
            start = (pages[offset >> PAGE_SHIFT] << PAGE_SHIFT) | in_page
            yield view[start:start + n]
            offset += n
            length -= n

    def free(self, handle: int) -> None:
        """Free the object; its handle becomes invalid (and may be reused)."""
        try:
            entry = self._handles[handle]
        except IndexError:
            entry = 0
        if not entry & 1 or handle <= 0:
            entry = self._entry(handle)
        z = entry >> _ZSPAGE_SHIFT
        cls = self._zs_class[z]
        if self._spilled:
            self._spilled.discard(handle)
        self._handle_table.free(handle)
        self.obj_bytes -= (entry >> 1) & _LEN_MASK
        cls.obj_used -= 1
        in_use = self._zs_inuse
        inuse = in_use[z] = in_use[z] - 1
        if inuse == 0:
            self._free_zspage(cls, z)
            return
        idx = (entry >> _IDX_SHIFT) & _IDX_MASK
        base = self._zs_base[z]
        freelist = self._zs_freelist
        _header.pack_into(self._view, base + idx * cls.size if base >= 0
                          else self._slot_addr(z, idx), freelist[z] << 1)
        freelist[z] = idx + 1
        if cls.group_of[inuse] != self._zs_group[z]:
            self._regroup(cls, z)

    # -- compaction ---------------------------------------------------------------

    def freeable(self) -> int:
        """Pages a full compaction could free now (sum of ``zs_can_compact``)."""
        return sum(cls.freeable() for cls in self._classes if cls.zspages)

    def compact(self) -> int:
        """Compact every class fully; return the pages freed."""
        freed = sum(self.compact_steps(budget=1 << 30))
        self.arena.release()
        return freed

    def compact_steps(self, budget: int = 1024) -> Iterator[int]:
        """Compact in slices: move at most ``budget`` objects, then yield pages freed.

        The pool is consistent at every yield, so malloc, free and read may run
        between slices; each slice re-chooses its source and destination. Objects
        spilled by earlier compactions go back to their own class first where it
        has free slots (``_rehome``); classes are then compacted one by one,
        largest first, as in the kernel; then what that leaves is spilled
        (``_spill``).
        """
        for freed in self._rehome(budget):
            self.pages_compacted += freed
            yield freed
        for cls in reversed(self._classes):
            while cls.freeable():
                freed, moved = self._compact_class(cls, budget)
                self.pages_compacted += freed
                yield freed
                if not moved:
                    break
        for cls in reversed(self._classes):
            while not cls.huge:
                freed, moved = self._spill(cls, budget)
                if not moved:
                    break
                self.pages_compacted += freed
                yield freed

    def _compact_class(self, cls: SizeClass, budget: int) -> tuple[int, int]:
        """Move up to ``budget`` objects from the emptiest zspages into the fullest.

        Returns (pages freed, objects moved).
        """
        freed = moved = 0
        cls.current = _NIL
        while moved < budget and cls.freeable():
            src = self._emptiest_with_room(cls)
            dst = next((z for g in range(_FULL - 1, 0, -1) for z in self._members(cls, g)
                        if z != src), _NIL)
            if dst == _NIL:
                break
            moved += self._migrate(cls, src, dst, budget - moved)
            self._regroup(cls, dst)
            if self._zs_inuse[src] == 0:
                self._free_zspage(cls, src)
                freed += cls.pages_per_zspage
            else:
                self._regroup(cls, src)
        return freed, moved

    def _migrate(self, cls: SizeClass, src: int, dst: int, budget: int) -> int:
        """Move live objects of ``src`` into ``dst`` until one side or the budget runs out."""
        moved = 0
        for idx, tag in self._live_slots(src):
            if moved == budget or self._zs_inuse[dst] == cls.objs_per_zspage:
                break
            self._move(src, idx, tag, dst)
            moved += 1
        return moved

    def _live_slots(self, z: int) -> Iterator[tuple[int, int]]:
        """(slot index, header tag) of each object in a non-huge zspage."""
        view = self._view
        for idx in range(self._zs_bump[z]):
            tag = _header.unpack_from(view, self._slot_addr(z, idx))[0]
            if tag & 1:
                yield idx, tag

    def _move(self, src: int, idx: int, tag: int, dst: int) -> None:
        """Move the object in slot ``idx`` of ``src`` (header ``tag``) to a free slot of ``dst``,
        whose class may be larger: its handle follows, its length stays exact."""
        view, handles, freelist = self._view, self._handles, self._zs_freelist
        handle = tag >> 1
        data = bytes(self.read(handle))
        if freelist[dst]:
            new_idx = freelist[dst] - 1
            freelist[dst] = _header.unpack_from(view, self._slot_addr(dst, new_idx))[0] >> 1
        else:
            new_idx = self._zs_bump[dst]
            self._zs_bump[dst] = new_idx + 1
        handles[handle] = ((dst << _ZSPAGE_SHIFT) | (new_idx << _IDX_SHIFT)
                           | (handles[handle] & 0x3FFFF))
        _header.pack_into(view, self._slot_addr(dst, new_idx), tag)
        self.write(handle, data)
        _header.pack_into(view, self._slot_addr(src, idx), freelist[src] << 1)
        freelist[src] = idx + 1
        self._zs_inuse[src] -= 1
        self._zs_inuse[dst] += 1
        src_class, dst_class = self._zs_class[src], self._zs_class[dst]
        if src_class is not dst_class:
            src_class.obj_used -= 1       # type: ignore[union-attr]
            dst_class.obj_used += 1       # type: ignore[union-attr]

    def _rehome(self, budget: int) -> Iterator[int]:
        """Move spilled objects back into free slots of their own class: yields the
        pages freed per slice of ``budget`` moves or ``8 * budget`` objects looked at.

        A spilled object would keep its larger slot until freed. When compactions run
        while files are being deleted, each one spills again, and what they spilled
        would add up: the corpus's chunks, half its files deleted with a full
        compaction every 2,000 files and one at the end, end at 98.09% without
        going home and 98.55% with it, where one compaction at the end alone gives
        98.68%. Spilled handles are kept in a set (dropped when freed).
        """
        freed = moved = looked = 0
        for handle in list(self._spilled):
            looked += 1
            if moved == budget or looked % (8 * budget) == 0:    # a slice's worth
                yield freed
                freed = moved = 0
            if handle not in self._spilled:       # freed since (maybe reused)
                continue
            entry = self._handles[handle]
            src = entry >> _ZSPAGE_SHIFT
            home = self._class_lookup[self._lookup_index((entry >> 1) & _LEN_MASK)]
            dst = self._fullest_with_room(home)
            if dst == _NIL:
                continue
            self._spilled.discard(handle)
            cls = self._zs_class[src]
            cls.current = home.current = _NIL         # type: ignore[union-attr]
            self._move(src, (entry >> _IDX_SHIFT) & _IDX_MASK, (handle << 1) | 1, dst)
            self._regroup(home, dst)
            if self._zs_inuse[src]:
                self._regroup(cls, src)
            else:
                self._free_zspage(cls, src)
                freed += cls.pages_per_zspage
            moved += 1
        if moved:
            yield freed

    def _spill(self, cls: SizeClass, budget: int) -> tuple[int, int]:
        """Empty the emptiest partly used zspage of ``cls`` into larger classes.

        Returns (pages freed, objects moved); moves at most ``budget`` objects.

        Class-by-class compaction leaves up to one partly used zspage per class,
        and on a small pool those dominate (a few MB over ~100 classes). But a
        handle does not care which class its object lives in, and any slot of a
        larger class holds any object of this one: so the zspage's objects move
        into the free slots that larger classes' partly used zspages hold anyway,
        smallest class first, and the zspage is freed, at no cost in pages. Done
        only when every object fits (checked again by each slice: if the pool
        changed meanwhile, what moved already cost nothing); else nothing moves.
        """
        in_use = self._zs_inuse
        src = self._emptiest_with_room(cls)
        if src == _NIL:
            return 0, 0
        room: list[int] = []
        free = 0
        for other in self._classes[self._classes.index(cls) + 1:]:
            if other.huge:          # a huge zspage is full or gone
                continue
            for group in range(_FULL - 1, 0, -1):
                for z in self._members(other, group):
                    room.append(z)
                    free += other.objs_per_zspage - in_use[z]
            if free >= in_use[src]:
                break
        if free < in_use[src]:
            return 0, 0
        moved = 0
        slots = self._live_slots(src)
        cls.current = _NIL
        for dst in room:
            dst_class = self._zs_class[dst]
            dst_class.current = _NIL                  # type: ignore[union-attr]
            n = min(dst_class.objs_per_zspage - in_use[dst], budget - moved)  # type: ignore[union-attr]
            for idx, tag in itertools.islice(slots, n):
                self._move(src, idx, tag, dst)
                self._spilled.add(tag >> 1)
                moved += 1
            self._regroup(dst_class, dst)             # type: ignore[arg-type]
            if moved == budget or not in_use[src]:
                break
        if in_use[src]:
            self._regroup(cls, src)
            return 0, moved
        self._free_zspage(cls, src)
        return cls.pages_per_zspage, moved

    # -- statistics ---------------------------------------------------------------

    def metadata_bytes(self) -> int:
        """Python memory of the pool's bookkeeping: handle table, zspages, classes."""
        total = self._handle_table.memory() + self._zspage_table.memory()
        for cls in self._classes:
            total += _CLASS_BYTES + len(cls.group_of) * 8
        return total

    def reset_mem_used_max(self) -> None:
        """Start the high-water mark again from the current use."""
        self.arena.reset_max()

    def stats(self) -> PoolStats:
        """A consistent snapshot of the pool's counters and per-class table."""
        rows = []
        for cls in self._classes:
            if not cls.zspages:
                continue
            rows.append(ClassStats(
                index=cls.index, size=cls.size,
                fullness=tuple(cls.counts[1:]),
                obj_allocated=cls.zspages * cls.objs_per_zspage, obj_used=cls.obj_used,
                pages_used=cls.zspages * cls.pages_per_zspage,
                pages_per_zspage=cls.pages_per_zspage, freeable=cls.freeable(),
            ))
        mem_used = self.pages_used * PAGE_SIZE
        return PoolStats(
            pages_used=self.pages_used, mem_used=mem_used,
            mem_used_max=self.arena.pages_max * PAGE_SIZE, mem_limit=self.mem_limit,
            obj_bytes=self.obj_bytes, objects=sum(c.obj_used for c in self._classes),
            pages_compacted=self.pages_compacted, reserved_pages=self.reserved_pages,
            frag_ratio=self.obj_bytes / mem_used if mem_used else 1.0,
            classes=tuple(rows),
        )
