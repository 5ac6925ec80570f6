"""Compaction on the event loop: on demand, to make room, and in the background.

Compaction moves objects, so it must not overlap any other pool operation; on the
trio thread that holds by construction, as long as each slice runs without an
``await``. ``Pool.compact_steps`` leaves the pool consistent after every slice,
so between slices we yield to the event loop and FUSE requests (reads, writes,
frees) are served. One compaction runs at a time (a manual request arriving while
the background task works waits for it, then finds little left to do).

The background task sleeps ``interval`` seconds (a changed interval applies to the
sleep under way) or until ``kick()`` says that something may have been freed, and
compacts when the fragmentation ratio (live object bytes / pool bytes) is below
``threshold`` and enough pages are freeable to be worth the copying: at least
``min_freeable_pages`` and 1% of the pool. Every compaction ends by giving freed
memory back to the kernel (a *trim*: the arena's pages and the C heap); so does a
wake-up that finds many pages released, and a wake-up after ``TRIM_QUIET_SECONDS``
without a kick, so that what a burst of frees let go (``rm -rf``: the last
pages, and the files' bookkeeping, which releases no page) goes back once it ends.
That wake-up only trims: compaction checks keep to their interval.

A bug in a background compaction must not take the mount down with it: the
background task logs the exception with its traceback and goes on, and after a
failure it waits a whole interval (kicks do not shorten it) so that a failure that
repeats costs one traceback per interval, not one per unlink. The pool is left as
the failed slice left it; ``compact_steps`` keeps it consistent between slices.

``stop()`` (the daemon is unmounting) ends a compaction under way at its next
slice, so a stop signal is not held up by a long compaction of a large pool.
"""

from __future__ import annotations

import contextlib
import logging
import time
from typing import Iterator

import trio

from .arena import PAGE_SIZE
from .heap import release as release_heap
from .zsmalloc import Pool

log = logging.getLogger(__name__)

SLICE_BUDGET = 128          # objects moved between two yields to the event loop
KICK_SETTLE_SECONDS = 0.2   # after a kick, let a burst of frees finish first
TRIM_PAGES = 1024           # pages released since the last heap trim that call for another
TRIM_QUIET_SECONDS = 1.0    # after a kick, this long without another ends the burst: trim


class Compactor:
    """Runs compactions of one pool in slices; counts them.

    Attributes:
        threshold: background compaction starts below this frag ratio (0..1).
        interval: seconds between background checks.
        background_runs, manual_runs: compactions done, by who asked.
        longest_slice: the longest time (seconds) one slice held the event loop.
    """

    def __init__(self, pool: Pool, threshold: float, interval: float,
                 min_freeable_pages: int = 64) -> None:
        self.pool = pool
        self.threshold = threshold
        self._interval = interval
        self._sleep: trio.CancelScope | None = None   # the background task's wait
        self._sleep_started = 0.0
        self.min_freeable_pages = min_freeable_pages
        self.background_runs = 0
        self.manual_runs = 0
        self.longest_slice = 0.0
        self._lock = trio.Lock()
        self._kicked = trio.Event()
        self._stopping = False
        self._failed = False      # the last background compaction raised
        self._released_at_trim = 0   # the arena's pages_released at the last heap trim
        self._kicked_since_trim = False
        self._held = 0               # background compaction waits while > 0 (held())

    async def compact(self, manual: bool = True) -> int:
        """One full compaction in slices; returns the pages freed.

        After ``stop()`` it ends at the next slice (the pool is consistent there).
        """
        async with self._lock:
            freed = 0
            steps = self.pool.compact_steps(SLICE_BUDGET)
            while not self._stopping:
                start = time.perf_counter()
                pages = next(steps, None)
                self.longest_slice = max(self.longest_slice, time.perf_counter() - start)
                if pages is None:
                    break
                freed += pages
                await trio.sleep(0)
            else:
                log.info("compaction stopped after freeing %d pages: unmounting", freed)
            self._trim()
            if manual:
                self.manual_runs += 1
            else:
                self.background_runs += 1
            return freed

    @property
    def interval(self) -> float:
        return self._interval

    @interval.setter
    def interval(self, seconds: float) -> None:
        """A new interval applies to the wait under way too (counted from its start),
        so lowering a long interval takes effect at once."""
        self._interval = seconds
        if self._sleep is not None:
            self._sleep.deadline = self._sleep_started + self._wait_seconds()

    def _wait_seconds(self) -> float:
        """How long the background task sleeps unless kicked: until the burst of frees
        under way ends, or an interval."""
        if self._kicked_since_trim and not self._failed:
            return min(self._interval, TRIM_QUIET_SECONDS)
        return self._interval

    def _trim(self) -> None:
        """Give freed memory back to the kernel: the arena's pages and the C heap.

        Also when files went away without leaving anything to compact (``rm -rf`` of
        everything): the memory their data and bookkeeping took is free then, but
        malloc keeps it until asked.
        """
        self.pool.arena.release()
        release_heap()
        self._released_at_trim = self.pool.arena.pages_released
        self._kicked_since_trim = False

    def stop(self) -> None:
        """The daemon is unmounting: end a compaction under way at its next slice, and
        start none (a compaction asked for from now on returns at once, freeing 0)."""
        self._stopping = True

    def kick(self) -> None:
        """Tell the background task that much was freed: check early."""
        self._kicked.set()
        self._kicked_since_trim = True

    @contextlib.contextmanager
    def held(self) -> Iterator[None]:
        """No background compaction while in this block (compactions asked for, and those
        that make room at mem_limit, still run).

        For a recompression pass, which frees old objects and allocates smaller ones
        all along: a compaction in the middle would spill the new objects into the
        holes that larger classes have for a moment, and they would stay in those
        larger slots (corpus, ``echo all > recompress``: 2.39 file bytes per byte of
        memory with compaction held, 2.28 without).
        """
        self._held += 1
        try:
            yield
        finally:
            self._held -= 1

    def worth_it(self) -> bool:
        if self._held:
            return False
        pool = self.pool
        if not pool.pages_used or pool.obj_bytes / (pool.pages_used * PAGE_SIZE) >= self.threshold:
            return False
        freeable = pool.freeable()
        return freeable >= self.min_freeable_pages and freeable * 100 >= pool.pages_used

    async def run(self) -> None:
        """The background task: never returns (cancel it), whatever a compaction raises."""
        while True:
            self._sleep_started = trio.current_time()
            wait = self._wait_seconds()
            with trio.CancelScope(deadline=self._sleep_started + wait) as self._sleep:
                if self._failed:
                    await trio.sleep_forever()    # until the interval's deadline
                await self._kicked.wait()
                await trio.sleep(KICK_SETTLE_SECONDS)
            burst_over = self._sleep.cancelled_caught and self._kicked_since_trim
            self._sleep = None
            self._kicked = trio.Event()
            try:
                # A wake-up before the interval is up only ends a burst: compaction
                # checks keep to their interval.
                if not (burst_over and wait < self._interval) and self.worth_it():
                    freed = await self.compact(manual=False)
                    log.info("background compaction freed %d pages", freed)
                elif (burst_over or self.pool.arena.pages_released - self._released_at_trim
                      >= TRIM_PAGES):
                    self._trim()
                self._failed = False
            except Exception:
                self._failed = True
                log.exception("background compaction failed; the mount goes on serving, "
                              "next try in %g s", self._interval)
