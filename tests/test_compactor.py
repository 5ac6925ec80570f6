"""Unit tests of the background compactor's decisions (no FUSE)."""

import trio
import trio.testing

from zsfs import compactor as compactor_module
from zsfs.compactor import TRIM_PAGES, TRIM_QUIET_SECONDS, Compactor
from zsfs.zsmalloc import Pool


def filled_pool(pages: int) -> tuple[Pool, list[int]]:
    pool = Pool(max_object_size=4096, arena_capacity=64 << 20)
    handles = [pool.malloc(4096) for _ in range(pages)]    # one object per page
    return pool, handles


async def test_a_burst_of_frees_with_nothing_to_compact_gives_memory_back(monkeypatch,
                                                                          autojump_clock):
    """rm -rf of everything leaves an empty pool: nothing to compact, but the memory
    the files' data and bookkeeping took must still go back to the kernel."""
    trims = []
    monkeypatch.setattr(compactor_module, "release_heap", lambda: trims.append(1))
    pool, handles = filled_pool(2 * TRIM_PAGES)
    compactor = Compactor(pool, threshold=0.95, interval=5)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(compactor.run)
        await trio.sleep(7)
        assert not trims                       # nothing freed yet
        for h in handles[:TRIM_PAGES // 4]:
            pool.free(h)
            compactor.kick()
            await trio.sleep(0.01)
        assert not trims                       # too little to bother while frees go on
        await trio.sleep(TRIM_QUIET_SECONDS + 0.5)
        assert len(trims) == 1                 # once they stop
        for h in handles[TRIM_PAGES // 4:]:
            pool.free(h)
        compactor.kick()
        await trio.sleep(1)
        assert len(trims) == 2                 # many pages: at once
        assert pool.pages_used == 0 and not pool.arena._unreleased
        await trio.sleep(20)
        assert len(trims) == 2                 # once per burst, not per interval
        nursery.cancel_scope.cancel()
    assert compactor.background_runs == 0      # it was no compaction


async def test_frees_that_release_no_page_give_memory_back_once_quiet(monkeypatch,
                                                                      autojump_clock):
    """rm -rf of empty files frees bookkeeping only: the heap is trimmed once the
    deletions stop, and not again until something else is freed."""
    trims = []
    monkeypatch.setattr(compactor_module, "release_heap", lambda: trims.append(1))
    compactor = Compactor(Pool(max_object_size=4096, arena_capacity=1 << 20),
                          threshold=0.95, interval=5)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(compactor.run)
        for _ in range(300):                   # 3 s of unlinks
            compactor.kick()
            await trio.sleep(0.01)
        assert not trims
        await trio.sleep(TRIM_QUIET_SECONDS + 0.5)
        assert len(trims) == 1
        await trio.sleep(30)
        assert len(trims) == 1
        compactor.kick()
        await trio.sleep(TRIM_QUIET_SECONDS + 0.5)
        assert len(trims) == 2
        nursery.cancel_scope.cancel()
