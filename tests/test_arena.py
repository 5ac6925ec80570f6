"""Unit tests of zsfs.arena.Arena: single 4 KiB pages out of one NORESERVE mapping."""

from __future__ import annotations

import gc

import pytest

from zsfs.arena import PAGE_SIZE, Arena, ArenaFull, physical_memory
from zsfs.control import process_rss as vm_rss




def page(arena: Arena, p: int) -> memoryview:
    return arena.view[p * PAGE_SIZE:(p + 1) * PAGE_SIZE]


def test_page_size_is_4k():
    assert PAGE_SIZE == 4096


def test_default_capacity_is_ram_size():
    arena = Arena()
    assert arena.capacity_pages == physical_memory() // PAGE_SIZE
    assert len(arena.buf) == arena.capacity_pages * PAGE_SIZE
    assert arena.pages_used == 0


def test_capacity_rounds_down_to_pages_and_is_at_least_one():
    assert Arena(10 * PAGE_SIZE + 100).capacity_pages == 10
    assert Arena(1).capacity_pages == 1


def test_single_pages_are_distinct_and_in_range():
    arena = Arena(64 * PAGE_SIZE)
    pages = [arena.alloc_page() for _ in range(64)]
    assert len(set(pages)) == 64
    assert all(0 <= p < 64 for p in pages)
    assert arena.pages_used == 64


def test_pages_are_independent_memory():
    arena = Arena(16 * PAGE_SIZE)
    pages = [arena.alloc_page() for _ in range(16)]
    for i, p in enumerate(pages):
        page(arena, p)[:] = bytes([i]) * PAGE_SIZE
    for i, p in enumerate(pages):
        assert bytes(page(arena, p)) == bytes([i]) * PAGE_SIZE


def test_fresh_pages_read_as_zero():
    arena = Arena(8 * PAGE_SIZE)
    p = arena.alloc_page()
    assert bytes(page(arena, p)) == bytes(PAGE_SIZE)


def test_freed_page_is_reused():
    arena = Arena(8 * PAGE_SIZE)
    a = arena.alloc_page()
    arena.alloc_page()
    arena.free_page(a)
    assert arena.pages_used == 1
    assert arena.alloc_page() == a
    assert arena.pages_used == 2


def test_capacity_exhaustion_raises_arena_full():
    arena = Arena(4 * PAGE_SIZE)
    pages = [arena.alloc_page() for _ in range(4)]
    with pytest.raises(ArenaFull):
        arena.alloc_page()
    assert issubclass(ArenaFull, MemoryError)
    assert arena.pages_used == 4
    # Still full on a second try, and usable again once a page comes back.
    with pytest.raises(ArenaFull):
        arena.alloc_page()
    arena.free_page(pages[2])
    assert arena.alloc_page() == pages[2]
    with pytest.raises(ArenaFull):
        arena.alloc_page()


def test_exhaustion_after_release_still_reuses_released_pages():
    arena = Arena(4 * PAGE_SIZE, release_batch=1)
    pages = [arena.alloc_page() for _ in range(4)]
    for p in pages:
        arena.free_page(p)
    assert arena.pages_used == 0
    again = [arena.alloc_page() for _ in range(4)]
    assert sorted(again) == sorted(pages)
    with pytest.raises(ArenaFull):
        arena.alloc_page()


def test_pages_used_pages_max_and_reset_max():
    arena = Arena(32 * PAGE_SIZE)
    pages = [arena.alloc_page() for _ in range(10)]
    assert (arena.pages_used, arena.pages_max) == (10, 10)
    for p in pages[:6]:
        arena.free_page(p)
    assert (arena.pages_used, arena.pages_max) == (4, 10)
    arena.alloc_page()
    assert (arena.pages_used, arena.pages_max) == (5, 10)
    arena.reset_max()
    assert (arena.pages_used, arena.pages_max) == (5, 5)
    arena.alloc_page()
    assert arena.pages_max == 6
    arena.release()
    assert (arena.pages_used, arena.pages_max) == (6, 6)


def test_unreleased_page_keeps_its_bytes_released_page_reads_zero():
    arena = Arena(8 * PAGE_SIZE, release_batch=1000)
    p = arena.alloc_page()
    page(arena, p)[:] = b"\xab" * PAGE_SIZE
    arena.free_page(p)
    # Freed but not yet released: still resident and reused first, not zeroed.
    q = arena.alloc_page()
    assert q == p
    assert bytes(page(arena, q)) == b"\xab" * PAGE_SIZE
    arena.free_page(q)
    arena.release()
    # Released with MADV_DONTNEED: a private anonymous page reads as zero again.
    r = arena.alloc_page()
    assert r == p
    assert bytes(page(arena, r)) == bytes(PAGE_SIZE)


def test_unreleased_pages_are_preferred_to_released_ones():
    arena = Arena(8 * PAGE_SIZE, release_batch=1000)
    a, b = arena.alloc_page(), arena.alloc_page()
    arena.free_page(a)
    arena.release()          # a released
    arena.free_page(b)       # b still resident
    assert arena.alloc_page() == b
    assert arena.alloc_page() == a


def test_release_batch_triggers_automatically():
    arena = Arena(64 * PAGE_SIZE, release_batch=4)
    pages = [arena.alloc_page() for _ in range(8)]
    for p in pages:
        page(arena, p)[:] = b"\x5a" * PAGE_SIZE
    for p in pages[:4]:      # the 4th free completes a batch: all 4 are released
        arena.free_page(p)
    for p in pages[:4]:
        assert bytes(page(arena, p)) == bytes(PAGE_SIZE)
    for p in pages[4:7]:     # 3 < batch: still resident, contents kept
        arena.free_page(p)
    for p in pages[4:7]:
        assert bytes(page(arena, p)) == b"\x5a" * PAGE_SIZE


def test_release_merges_runs_and_handles_scattered_pages():
    arena = Arena(64 * PAGE_SIZE, release_batch=1000)
    pages = [arena.alloc_page() for _ in range(40)]
    for p in pages:
        page(arena, p)[:] = b"\x11" * PAGE_SIZE
    freed = pages[0:10] + pages[12:13] + pages[20:30:3] + pages[35:40]
    keep = [p for p in pages if p not in freed]
    for p in reversed(freed):
        arena.free_page(p)
    arena.release()
    for p in freed:
        assert bytes(page(arena, p)) == bytes(PAGE_SIZE)
    for p in keep:
        assert bytes(page(arena, p)) == b"\x11" * PAGE_SIZE
    assert arena.pages_used == len(keep)
    # Every released page can be handed out again, exactly once.
    again = [arena.alloc_page() for _ in range(len(freed))]
    assert sorted(again) == sorted(freed)


def test_release_with_nothing_freed_is_harmless():
    arena = Arena(4 * PAGE_SIZE)
    arena.release()
    arena.release()
    assert arena.pages_used == 0


def test_rss_follows_pages_in_use():
    n = 16384                      # 64 MiB of touched pages
    nbytes = n * PAGE_SIZE
    arena = Arena(2 * nbytes)
    gc.collect()
    rss0 = vm_rss()
    pages = [arena.alloc_page() for _ in range(n)]
    chunk = b"\x77" * PAGE_SIZE
    view = arena.view
    for p in pages:
        view[p * PAGE_SIZE:(p + 1) * PAGE_SIZE] = chunk
    rss1 = vm_rss()
    assert rss1 - rss0 >= 0.9 * nbytes, (rss0, rss1)
    for p in pages:
        arena.free_page(p)
    arena.release()
    rss2 = vm_rss()
    assert rss1 - rss2 >= 0.9 * nbytes, (rss1, rss2)
    assert arena.pages_used == 0
    # The batches released along the way plus the final release cover everything.
    assert all(view[p * PAGE_SIZE] == 0 for p in pages)


def test_untouched_reservation_costs_no_rss():
    gc.collect()
    rss0 = vm_rss()
    arena = Arena(8 << 30)        # 8 GiB of address space, nothing touched
    pages = [arena.alloc_page() for _ in range(1000)]   # handed out, not touched
    assert vm_rss() - rss0 < 16 << 20
    assert len(pages) == 1000
