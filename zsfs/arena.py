"""The page arena: single 4 KiB pages carved out of one anonymous mapping.

zsmalloc only ever asks the kernel's page allocator for single pages, so it never
needs a contiguous run of memory and cannot cause the external fragmentation the
handle-decoupling patch set out to cure. The arena keeps that rule: it hands out
and takes back one page at a time, by page number.

The whole arena is reserved up front with ``MAP_NORESERVE``: the size is a cap on
address space, not a commitment of RAM. A page costs RAM only once it is touched,
and a page taken back is returned to the kernel with ``MADV_DONTNEED`` so the
process's RSS follows the pages in use. ``madvise`` is a system call, so freed pages
are released in batches (sorted and merged into runs); a freed page that has not yet
been released is the first to be reused, because it is still resident.
"""

from __future__ import annotations

import mmap
import os
from array import array

PAGE_SHIFT = 12
PAGE_SIZE = 1 << PAGE_SHIFT
_MAP_NORESERVE = getattr(mmap, "MAP_NORESERVE", 0x4000)
_MADV_POPULATE_WRITE = getattr(mmap, "MADV_POPULATE_WRITE", 23)
POPULATE_PAGES = 64   # fresh pages faulted in per system call (256 KiB)


class ArenaFull(MemoryError):
    """Every page of the arena's reservation is in use."""


def physical_memory() -> int:
    """Bytes of physical RAM on this machine."""
    return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


class Arena:
    """Hands out page numbers; page ``p`` is ``buf[p * PAGE_SIZE:(p + 1) * PAGE_SIZE]``.

    Attributes:
        buf: the mapping; ``view`` is a memoryview of it, for zero-copy slicing.
        capacity_pages: pages reserved.
        pages_used: pages handed out and not yet taken back.
        pages_max: high-water mark of ``pages_used``.
        pages_released: pages given back to the kernel so far.
    """

    __slots__ = (
        "buf", "view", "capacity_pages", "pages_used", "pages_max",
        "release_batch", "pages_released", "_top", "_populated", "_released", "_unreleased",
    )

    def __init__(self, capacity: int | None = None, release_batch: int = 256) -> None:
        if capacity is None:
            capacity = physical_memory()
        self.capacity_pages = max(1, capacity // PAGE_SIZE)
        self.buf = mmap.mmap(
            -1, self.capacity_pages * PAGE_SIZE,
            flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS | _MAP_NORESERVE,
        )
        self.buf.madvise(mmap.MADV_NOHUGEPAGE)
        self.view = memoryview(self.buf)
        self.release_batch = release_batch
        self.pages_used = 0
        self.pages_max = 0
        self.pages_released = 0
        self._top = 0                   # pages above this were never handed out
        self._populated = 0             # pages below this have been faulted in
        # Free page numbers: arrays, not lists, since a list of ints keeps an int
        # object per page, and those pin the interpreter's memory long after the
        # files that used the pages are gone.
        self._released = array("I")     # free, already given back to the kernel
        self._unreleased = array("I")   # free, still resident

    @property
    def pages_free(self) -> int:
        """Pages that can still be handed out."""
        return self.capacity_pages - self.pages_used

    def alloc_page(self) -> int:
        """Return the number of a free page (contents undefined)."""
        if self._unreleased:
            page = self._unreleased.pop()
        elif self._released:
            page = self._released.pop()
        elif self._top < self.capacity_pages:
            page = self._top
            self._top += 1
            if page >= self._populated:
                self._populate(page)
        else:
            raise ArenaFull(f"arena of {self.capacity_pages} pages is exhausted")
        self.pages_used += 1
        if self.pages_used > self.pages_max:
            self.pages_max = self.pages_used
        return page

    def _populate(self, first: int) -> None:
        """Fault in the next run of never-used pages with one system call.

        Touching fresh pages one by one costs a page fault each; MADV_POPULATE_WRITE
        (Linux 5.14) maps a whole run at once. Without it, pages fault as before.
        """
        count = min(POPULATE_PAGES, self.capacity_pages - first)
        self._populated = first + count
        try:
            self.buf.madvise(_MADV_POPULATE_WRITE, first * PAGE_SIZE, count * PAGE_SIZE)
        except OSError:
            pass

    def free_page(self, page: int) -> None:
        """Take a page back; it is released to the kernel with the next batch."""
        self._unreleased.append(page)
        self.pages_used -= 1
        if len(self._unreleased) >= self.release_batch:
            self.release()

    def release(self) -> None:
        """Give every freed page back to the kernel now (MADV_DONTNEED)."""
        pages = sorted(self._unreleased)
        del self._unreleased[:]
        start = prev = None
        for page in pages:
            if start is None:
                start = prev = page
            elif page == prev + 1:
                prev = page
            else:
                self._madvise_run(start, prev)
                start = prev = page
        if start is not None:
            self._madvise_run(start, prev)
        self._released.extend(reversed(pages))
        self.pages_released += len(pages)

    def _madvise_run(self, first: int, last: int) -> None:
        self.buf.madvise(mmap.MADV_DONTNEED, first * PAGE_SIZE, (last - first + 1) * PAGE_SIZE)

    def reset_max(self) -> None:
        """Forget the high-water mark (zram's ``echo 0 > mem_used_max``)."""
        self.pages_max = self.pages_used
