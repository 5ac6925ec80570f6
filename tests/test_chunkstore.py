"""Unit tests of the chunk store, driven directly (no FUSE), against a bytearray model."""

import os
import random
import threading
from contextlib import asynccontextmanager
from typing import AsyncIterator

import pytest
import trio
import trio.testing

from zsfs import chunkstore, staging
from zsfs.arena import PAGE_SIZE
from zsfs.chunkstore import (STAGED, ChunkStore, NoSpace, entry_kind, entry_length,
                             entry_payload)
from zsfs.codec import FILL_WORD, Encoding
from zsfs.zsmalloc import Pool

CHUNK = 16384


def make_store(mem_limit: int = 0, capacity: int = 0, make_room=None) -> ChunkStore:
    pool = Pool(max_object_size=CHUNK, mem_limit=mem_limit, arena_capacity=1 << 30)
    return ChunkStore(pool, CHUNK, level=1, capacity=capacity, make_room=make_room)


def text(n: int, seed: int = 0) -> bytes:
    rng = random.Random(seed)
    words = [b"alpha", b"beta", b"gamma", b"delta", b"chunk", b"zspage", b"\n"]
    out = bytearray()
    while len(out) < n:
        out += rng.choice(words) + b" "
    return bytes(out[:n])


def read_all(store: ChunkStore, cmap: int, size: int) -> bytes:
    return store.read(cmap, 0, size)


async def test_random_writes_match_a_model():
    store = make_store()
    cmap = store.new_map()
    model = bytearray()
    rng = random.Random(7)
    for step in range(300):
        offset = rng.randrange(0, 6 * CHUNK)
        length = rng.choice([1, 7, 100, CHUNK - 1, CHUNK, CHUNK + 1, 3 * CHUNK + 5])
        data = text(length, seed=step) if step % 3 else os.urandom(length)
        assert await store.write(cmap, offset, data) == length
        if len(model) < offset + length:
            model.extend(bytes(offset + length - len(model)))
        model[offset:offset + length] = data
        if step % 25 == 0:
            assert read_all(store, cmap, len(model)) == model
            at = rng.randrange(len(model))
            assert store.read(cmap, at, 5000) == bytes(model[at:at + 5000]).ljust(5000, b"\0")
    assert read_all(store, cmap, len(model)) == model


@pytest.mark.parametrize("size", [CHUNK - 1, 2 * CHUNK, 64 * CHUNK + 12345])
async def test_multi_chunk_writes_and_reads_keep_their_order(size):
    store = make_store()
    cmap = store.new_map()
    data = text(size, seed=3)
    assert await store.write(cmap, 100, data) == size
    assert store.read(cmap, 100, size) == data
    assert store.read(cmap, 0, 100) == bytes(100)
    await store.truncate(cmap, 100 + size // 2)         # trimmed chunks read as zeros
    assert store.read(cmap, 0, size + 100) == bytes(100) + data[:size // 2] + bytes(size - size // 2)


async def test_same_filled_and_incompressible_chunks():
    store = make_store()
    zeros, fill, noise = store.new_map(), store.new_map(), store.new_map()
    await store.write(zeros, 0, bytes(4 * CHUNK))
    await store.write(fill, 0, b"\xab" * (4 * CHUNK))
    await store.flush()
    assert store.pool.stats().objects == 0 and store.same_chunks == 8
    assert store.maps.stored[zeros] == 0          # zeros: no RAM, like holes
    assert store.maps.stored[fill] > 0            # but never zero blocks for non-zero data
    assert read_all(store, fill, 4 * CHUNK) == b"\xab" * (4 * CHUNK)
    data = os.urandom(2 * CHUNK)
    await store.write(noise, 0, data)
    await store.flush()
    assert store.huge_chunks == store.huge_chunks_since == 2
    assert read_all(store, noise, 2 * CHUNK) == data
    assert store.orig_bytes == 10 * CHUNK


async def test_holes_cost_nothing():
    store = make_store()
    cmap = store.new_map()
    far = 1 << 40
    await store.write(cmap, far, b"end")
    assert store.maps.indexes(cmap) == [far // CHUNK]
    assert store.read(cmap, far - 10, 13) == bytes(10) + b"end"
    assert store.read(cmap, 12345, 100_000) == bytes(100_000)


async def test_truncate_drops_and_trims_without_allocating():
    store = make_store()
    cmap = store.new_map()
    data = text(5 * CHUNK + 300)
    await store.write(cmap, 0, data)
    await store.flush()
    store.pool.mem_limit = store.pool.pages_used * 4096   # no room for anything new
    await store.truncate(cmap, 2 * CHUNK + 10)
    assert sorted(store.maps.indexes(cmap)) == [0, 1, 2]
    assert store.orig_bytes == 2 * CHUNK + 10
    # extending again reads zeros past the old cut
    assert store.read(cmap, 0, 3 * CHUNK) == data[:2 * CHUNK + 10] + bytes(CHUNK - 10)
    await store.truncate(cmap, 0)
    assert store.maps.chunks(cmap) == 0 and store.chunks == 0 and store.pool.stats().objects == 0


async def test_mem_limit_stops_a_write_without_touching_earlier_bytes():
    store = make_store()
    cmap = store.new_map()
    old = os.urandom(3 * CHUNK)
    await store.write(cmap, 0, old)
    await store.flush()
    store.pool.mem_limit = store.pool.pages_used * 4096
    with pytest.raises(NoSpace):
        await store.write(cmap, CHUNK, os.urandom(CHUNK))
    assert read_all(store, cmap, 3 * CHUNK) == old
    # a big threaded write that runs out part-way reports what it stored
    store.pool.mem_limit = store.pool.pages_used * 4096 + 20 * CHUNK
    big = os.urandom(64 * CHUNK)
    written = await store.write(cmap, 3 * CHUNK, big)
    assert 0 < written < len(big) and written % CHUNK == 0
    assert read_all(store, cmap, 3 * CHUNK + written) == old + big[:written]
    assert (3 * CHUNK + written) // CHUNK == store.maps.chunks(cmap)


async def test_capacity_limits_logical_bytes():
    store = make_store(capacity=2 * CHUNK)
    cmap = store.new_map()
    assert await store.write(cmap, 0, bytes(2 * CHUNK)) == 2 * CHUNK
    with pytest.raises(NoSpace):
        await store.write(cmap, 2 * CHUNK, b"x")
    assert await store.write(cmap, 0, b"y" * CHUNK) == CHUNK   # overwriting needs no more


async def test_pool_full_makes_room_by_compacting_first():
    calls = []

    async def make_room():
        calls.append(1)
        store.pool.compact()

    store = make_store(make_room=make_room)
    maps = [store.new_map() for _ in range(400)]
    for i, cmap in enumerate(maps):
        await store.write(cmap, 0, text(3000, seed=i))
    await store.flush()
    for cmap in maps[::2]:
        store.release(cmap)
    assert store.pool.freeable() > 0
    store.pool.mem_limit = store.pool.pages_used * 4096
    fresh = store.new_map()
    assert await store.write(fresh, 0, text(3000, seed=999) + os.urandom(2000)) == 5000
    assert calls == [1]
    for i, cmap in enumerate(maps[1::2]):
        assert read_all(store, cmap, 3000) == text(3000, seed=2 * i + 1)


async def test_release_returns_every_page():
    store = make_store()
    cmap = store.new_map()
    await store.write(cmap, 0, text(40 * CHUNK))
    await store.flush()
    assert store.pool.pages_used > 0
    store.release(cmap)
    assert store.pool.pages_used == 0 and store.orig_bytes == 0 and store.chunks == 0
    assert store.maps.count == 0 and len(store.maps) == 1      # the map is gone too


# -- staged writes ----------------------------------------------------------------------
#
# A write keeps each chunk's new content uncompressed ("staged") under a pool
# reservation; the compressors (ChunkStore.run) or flush() store it later.

HANG = 120                     # seconds: fail rather than hang if the compressors deadlock


def parts(entry: int) -> tuple[int, int, int]:
    """(kind, length, payload) of a chunk map entry."""
    return entry_kind(entry), entry_length(entry), entry_payload(entry)


def model_write(model: bytearray, offset: int, data: bytes) -> None:
    if len(model) < offset + len(data):
        model.extend(bytes(offset + len(data) - len(model)))
    model[offset:offset + len(data)] = data


def model_truncate(model: bytearray, size: int) -> None:
    if size < len(model):
        del model[size:]
    else:
        model.extend(bytes(size - len(model)))


def check_store(store: ChunkStore, maps, check_orig: bool = False) -> None:
    """Nothing staged, and every counter agrees with the entries of ``maps`` (all live files)."""
    pool = store.pool
    assert store.staged_bytes == 0 and store.stats().staged_bytes == 0
    assert not store._staged and not len(store.queue) and not store.queue.batches
    assert pool.reserved_pages == 0 == pool.stats().reserved_pages
    handles = []
    lengths = chunks = fills = raws = 0
    for cmap in maps:
        stored = 0
        for idx in store.maps.indexes(cmap):
            kind, length, payload = parts(store.maps.get(cmap, idx))
            assert kind != STAGED, "a staged entry after flush()"
            assert 0 < length <= store.chunk_size
            lengths += length
            chunks += 1
            if kind == Encoding.FILL:
                fills += 1
                stored += FILL_WORD if payload else 0
            else:
                handles.append(payload)
                size = pool.size(payload)
                stored += size
                if kind == Encoding.RAW:
                    raws += 1
                    assert size >= length          # the chunk as it was (maybe cut since)
        assert store.maps.stored[cmap] == stored
    assert len(set(handles)) == len(handles)
    s = pool.stats()
    assert s.objects == len(handles)
    assert s.obj_bytes == sum(pool.size(h) for h in handles)
    assert store.chunks == chunks and store.same_chunks == fills and store.huge_chunks == raws
    if check_orig:
        assert store.orig_bytes == lengths


async def test_a_write_is_staged_and_flush_stores_it():
    store = make_store()
    pool = store.pool
    cmap = store.new_map()
    data = text(3 * CHUNK + 100, seed=11)
    assert await store.write(cmap, 0, data) == len(data)
    # accepted, readable, reserved, but not in the pool yet
    assert read_all(store, cmap, len(data)) == data
    assert store.read(cmap, CHUNK - 50, 100) == data[CHUNK - 50:CHUNK + 50]
    assert store.stats().staged_bytes == store.staged_bytes == len(data)
    assert store.orig_bytes == len(data) and store.chunks == 4
    assert store.maps.stored[cmap] == len(data)             # staged contents count as they are
    assert [parts(store.maps.get(cmap, i))[0] for i in range(4)] == [STAGED] * 4
    assert pool.reserved_pages == 3 * pool.worst_case_pages(CHUNK) + pool.worst_case_pages(100)
    assert pool.stats().objects == 0 and pool.pages_used == 0
    await store.flush()
    assert store.staged_bytes == 0 and pool.reserved_pages == 0
    assert pool.stats().objects == 4 and pool.pages_used > 0
    assert read_all(store, cmap, len(data)) == data
    assert store.orig_bytes == len(data) and store.chunks == 4
    assert 0 < store.maps.stored[cmap] < len(data)
    check_store(store, [cmap], check_orig=True)
    await store.flush()                                # nothing to do: returns at once
    assert read_all(store, cmap, len(data)) == data


async def test_rewriting_a_staged_chunk_keeps_one_staging_and_the_larger_reservation():
    store = make_store()
    pool = store.pool
    cmap = store.new_map()
    await store.write(cmap, 0, b"x" * 10)
    small = pool.reserved_pages
    assert small == pool.worst_case_pages(10)
    await store.write(cmap, 10, text(CHUNK - 10))      # grows the staged chunk
    assert pool.reserved_pages == pool.worst_case_pages(CHUNK) > small
    assert store.staged_bytes == CHUNK == store.orig_bytes == store.maps.stored[cmap]
    assert store.chunks == 1 and len(store._staged) == 1
    await store.truncate(cmap, 5)                      # cut: the reservation stays
    assert store.staged_bytes == 5 == store.orig_bytes == store.maps.stored[cmap]
    assert pool.reserved_pages == pool.worst_case_pages(CHUNK)
    assert read_all(store, cmap, 20) == b"x" * 5 + bytes(15)
    await store.flush()
    assert read_all(store, cmap, 20) == b"x" * 5 + bytes(15)
    check_store(store, [cmap], check_orig=True)


async def mixed_workload(seed: int, gather: bool, monkeypatch) -> tuple[ChunkStore, list]:
    """Random writes, overwrites of the same chunks and truncates over three files,
    with the compressors running; every step checked against bytearray models.
    Returns the flushed store and its live (map, model) pairs."""
    if not gather:
        monkeypatch.setattr(staging, "GATHER_SECONDS", 0)   # compress at once: more races
    store = make_store()
    rng = random.Random(seed)
    files = [(store.new_map(), bytearray()) for _ in range(3)]
    lengths = [1, 8, 100, 3000, CHUNK - 1, CHUNK, CHUNK + 1, 2 * CHUNK + 17]
    with trio.fail_after(HANG):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(store.run)
            for step in range(500):
                i = rng.randrange(len(files))
                cmap, model = files[i]
                op = rng.random()
                if op < 0.65:
                    # mostly the first chunks, so the same chunks are rewritten while staged
                    offset = rng.choice([0, rng.randrange(2 * CHUNK), rng.randrange(6 * CHUNK),
                                         rng.randrange(4) * CHUNK])
                    length = rng.choice(lengths)
                    data = rng.choice([lambda: text(length, seed=step),
                                       lambda: os.urandom(length),
                                       lambda: b"\xab" * length,
                                       lambda: bytes(length)])()
                    assert await store.write(cmap, offset, data) == length
                    model_write(model, offset, data)
                elif op < 0.85:
                    size = rng.choice([0, rng.randrange(len(model) + 1), rng.randrange(7 * CHUNK),
                                       len(model) + rng.randrange(2 * CHUNK)])
                    await store.truncate(cmap, size)
                    model_truncate(model, size)
                elif op < 0.90:
                    store.release(cmap)
                    assert cmap not in store.maps
                    files[i] = (store.new_map(), bytearray())
                elif op < 0.93:
                    await store.flush()
                    assert store.staged_bytes == 0 and store.pool.reserved_pages == 0
                if rng.random() < 0.1:
                    await trio.testing.wait_all_tasks_blocked()
                else:
                    await trio.sleep(0)
                for cmap, model in files:
                    assert read_all(store, cmap, len(model)) == model, f"step {step}"
                cmap, model = files[rng.randrange(len(files))]
                if model:
                    at = rng.randrange(len(model))
                    n = rng.randrange(1, 3 * CHUNK)
                    assert store.read(cmap, at, n) == bytes(model[at:at + n]).ljust(n, b"\0")
            await store.flush()
            nursery.cancel_scope.cancel()
    for cmap, model in files:
        assert read_all(store, cmap, len(model)) == model
    return store, files


@pytest.mark.parametrize("seed, gather", [(1, True), (2, False), (3, False)])
async def test_concurrent_writes_overwrites_and_truncates_match_a_model(seed, gather,
                                                                        monkeypatch):
    store, files = await mixed_workload(seed, gather, monkeypatch)
    check_store(store, [cmap for cmap, _ in files])
    for cmap, _ in files:
        store.release(cmap)
    assert store.pool.pages_used == 0 and store.pool.reserved_pages == 0
    assert store.chunks == 0 and store.staged_bytes == 0


async def test_concurrent_writes_keep_orig_bytes(monkeypatch):
    """orig_bytes is the sum of chunk lengths (staging over a stored chunk once
    subtracted the stored chunk's length twice)."""
    store, files = await mixed_workload(4, False, monkeypatch)
    check_store(store, [cmap for cmap, _ in files], check_orig=True)


async def test_overwriting_a_stored_chunk_keeps_orig_bytes():
    """Staging over a stored chunk uncounts it once (it once did twice)."""
    store = make_store()
    cmap = store.new_map()
    await store.write(cmap, 0, text(2 * CHUNK + 500))
    await store.flush()
    assert store.orig_bytes == 2 * CHUNK + 500
    await store.write(cmap, 100, b"new")            # rewrites stored chunk 0 (staged)
    assert store.orig_bytes == 2 * CHUNK + 500
    await store.flush()
    assert store.orig_bytes == 2 * CHUNK + 500


async def test_capacity_holds_after_overwriting_stored_chunks():
    """Rewriting in place needs no capacity, and frees none (a lost orig_bytes once
    let the store grow past size=)."""
    store = make_store(capacity=2 * CHUNK)
    cmap = store.new_map()
    assert await store.write(cmap, 0, text(2 * CHUNK)) == 2 * CHUNK
    await store.flush()
    assert await store.write(cmap, 0, text(2 * CHUNK, seed=1)) == 2 * CHUNK   # in place
    await store.flush()
    with pytest.raises(NoSpace):
        await store.write(cmap, 2 * CHUNK, text(CHUNK, seed=2))


async def test_compressors_store_staged_chunks_without_flush():
    store = make_store()
    cmap = store.new_map()
    data = text(5 * CHUNK, seed=12) + os.urandom(CHUNK) + b"\x11" * CHUNK + text(3, seed=13)
    with trio.fail_after(HANG):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(store.run)
            assert await store.write(cmap, 0, data) == len(data)
            assert read_all(store, cmap, len(data)) == data
            with trio.fail_after(30):                  # a bound, not a timing expectation
                while store.staged_bytes:
                    await trio.sleep(0.001)
            assert store.pool.reserved_pages == 0
            assert read_all(store, cmap, len(data)) == data
            nursery.cancel_scope.cancel()
    check_store(store, [cmap], check_orig=True)
    assert store.same_chunks == 1 and store.huge_chunks == 2   # 3 bytes do not compress either


@pytest.mark.parametrize("how", ["fsync", "write at mem_limit"])
async def test_compressors_keep_working_after_a_flush_took_their_batch(how, mock_clock):
    """A compressor that wakes from its gather delay to find that flush() (fsync, or a
    write short of room) took and stored its batch goes back to waiting for work.
    (It once waited for the end of a batch that nobody ran, and unsynced writes then
    stayed staged until the next fsync.)"""
    # The mock clock stands still: the compressors' gather sleep ends only when we jump.
    store = make_store()
    pool = store.pool
    cmap = store.new_map()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(store.run)
        await trio.testing.wait_all_tasks_blocked()
        await store.write(cmap, 0, text(1000, seed=1))
        await trio.testing.wait_all_tasks_blocked()     # both compressors gather more work
        if how == "fsync":
            await store.flush()                         # compresses and stores it all
        else:
            # room for what is promised only: the write cannot reserve, flushes (the
            # staged chunk leaves room to spare) and stores its chunk itself
            pool.mem_limit = (pool.pages_used + pool.reserved_pages) * PAGE_SIZE
            assert await store.write(cmap, 2 * CHUNK, os.urandom(CHUNK)) == CHUNK
            assert parts(store.maps.get(cmap, 2))[0] == Encoding.RAW
            pool.mem_limit = 0
        assert store.staged_bytes == 0
        mock_clock.jump(1)                              # the compressors find nothing to do
        await trio.testing.wait_all_tasks_blocked()
        await store.write(cmap, CHUNK, text(1000, seed=2))
        await trio.testing.wait_all_tasks_blocked()
        mock_clock.jump(1)                              # past any gather delay
        await trio.testing.wait_all_tasks_blocked()     # a compressor has taken the batch
        assert not len(store.queue), "staged chunks that no compressor will ever take"
        await store.flush()
        nursery.cancel_scope.cancel()
    check_store(store, [cmap], check_orig=True)


async def test_staging_limit_makes_a_write_wait_for_compression(monkeypatch):
    monkeypatch.setattr(chunkstore, "STAGING_LIMIT", 3 * CHUNK)
    store = make_store()
    cmap = store.new_map()
    model = bytearray()
    for step in range(20):
        data = text(2 * CHUNK + 77 * step, seed=step)
        await store.write(cmap, step * CHUNK, data)
        model_write(model, step * CHUNK, data)
        assert store.staged_bytes <= 3 * CHUNK
        assert read_all(store, cmap, len(model)) == model
    await store.flush()
    check_store(store, [cmap])


@pytest.mark.parametrize("limit", ["used", "half", "one page", "background"])
async def test_lowered_mem_limit_still_stores_what_was_staged(limit):
    store = make_store()
    pool = store.pool
    a, b = store.new_map(), store.new_map()
    ma, mb = bytearray(), bytearray()
    await store.write(a, 0, data := text(4 * CHUNK, seed=1))
    model_write(ma, 0, data)
    await store.flush()
    # staged: compressible, incompressible, same-filled, short, and over stored chunks
    for cmap, model, off, data in [
            (b, mb, 0, text(2 * CHUNK, seed=2) + os.urandom(2 * CHUNK) + b"\xab" * CHUNK
             + bytes(CHUNK) + text(777, seed=3)),
            (a, ma, CHUNK // 2, os.urandom(CHUNK + 100)),
            (a, ma, 3 * CHUNK + 5, b"tail")]:
        await store.write(cmap, off, data)
        model_write(model, off, data)
    assert store.staged_bytes > 0 and pool.reserved_pages > 0
    used = pool.pages_used
    pool.mem_limit = {"used": used, "half": used // 2, "one page": 1,
                      "background": used}[limit] * PAGE_SIZE
    if limit == "background":
        with trio.fail_after(HANG):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(store.run)
                with trio.fail_after(30):
                    while store.staged_bytes:
                        await trio.sleep(0.001)
                nursery.cancel_scope.cancel()
    else:
        await store.flush()
    assert store.staged_bytes == 0 and pool.reserved_pages == 0
    assert read_all(store, a, len(ma)) == ma and read_all(store, b, len(mb)) == mb
    check_store(store, [a, b])
    assert pool.pages_used * PAGE_SIZE > pool.mem_limit or limit == "used"
    # what was accepted is kept; nothing new needing a zspage is
    with pytest.raises(NoSpace):
        await store.write(store.new_map(), 0, os.urandom(CHUNK))
    assert read_all(store, a, len(ma)) == ma and read_all(store, b, len(mb)) == mb
    check_store(store, [a, b])


async def test_mem_limit_part_way_with_staged_chunks_from_an_earlier_write():
    store = make_store()
    pool = store.pool
    cmap = store.new_map()
    old = os.urandom(3 * CHUNK)
    await store.write(cmap, 0, old)                     # staged, not flushed
    assert pool.reserved_pages == 3 * pool.worst_case_pages(CHUNK) and pool.pages_used == 0
    # room for exactly what is promised
    pool.mem_limit = (pool.pages_used + pool.reserved_pages) * PAGE_SIZE
    big = os.urandom(64 * CHUNK)
    written = await store.write(cmap, 3 * CHUNK, big)
    assert 0 < written < len(big) and written % CHUNK == 0
    assert read_all(store, cmap, 3 * CHUNK + written) == old + big[:written]
    assert store.maps.chunks(cmap) == 3 + written // CHUNK
    assert store.orig_bytes == 3 * CHUNK + written
    await store.flush()
    assert store.staged_bytes == 0 and pool.reserved_pages == 0
    assert pool.pages_used * PAGE_SIZE <= pool.mem_limit
    assert read_all(store, cmap, 3 * CHUNK + written) == old + big[:written]
    check_store(store, [cmap], check_orig=True)
    # it stored as much as the pool holds: the next chunk does not fit
    with pytest.raises(NoSpace):
        await store.write(cmap, 3 * CHUNK + written, os.urandom(CHUNK))
    assert read_all(store, cmap, 3 * CHUNK + written + CHUNK) == old + big[:written] + bytes(CHUNK)
    assert store.staged_bytes == 0 and pool.reserved_pages == 0


async def test_mem_limit_with_nothing_staged_raises_and_keeps_earlier_bytes():
    store = make_store()
    pool = store.pool
    cmap = store.new_map()
    old = os.urandom(3 * CHUNK)
    await store.write(cmap, 0, old)
    await store.flush()
    pool.mem_limit = pool.pages_used * PAGE_SIZE
    before = (pool.stats(), store.stats(), store.maps.stored[cmap])
    for offset, data in [(CHUNK, os.urandom(CHUNK)), (3 * CHUNK, os.urandom(3 * CHUNK)),
                         (100, os.urandom(50))]:
        with pytest.raises(NoSpace):
            await store.write(cmap, offset, data)
        assert read_all(store, cmap, 4 * CHUNK) == old + bytes(CHUNK)
        assert (pool.stats(), store.stats(), store.maps.stored[cmap]) == before
        assert store.staged_bytes == 0 and pool.reserved_pages == 0


async def test_a_failed_rewrite_of_a_staged_chunk_keeps_its_content():
    store = make_store()
    pool = store.pool
    cmap = store.new_map()
    old = os.urandom(100)
    await store.write(cmap, 0, old)                      # staged under a small reservation
    pool.mem_limit = (pool.pages_used + pool.reserved_pages) * PAGE_SIZE
    with pytest.raises(NoSpace):
        await store.write(cmap, 0, os.urandom(CHUNK))    # needs a 4-page huge zspage
    assert read_all(store, cmap, CHUNK) == old + bytes(CHUNK - 100)
    await store.flush()
    assert read_all(store, cmap, CHUNK) == old + bytes(CHUNK - 100)
    check_store(store, [cmap], check_orig=True)


async def test_release_of_staged_chunks_returns_reservations_and_pages():
    store = make_store()
    pool = store.pool
    keep, gone = store.new_map(), store.new_map()
    kept = text(3 * CHUNK, seed=5)
    await store.write(keep, 0, kept)
    await store.write(gone, 0, text(6 * CHUNK, seed=6) + os.urandom(CHUNK))
    await store.flush()
    # stage over stored chunks of both files (their old objects wait for the new ones)
    await store.write(gone, 100, os.urandom(3 * CHUNK))
    await store.write(gone, 10 * CHUNK, b"\xee" * 999)
    await store.write(keep, 5 * CHUNK, b"later")
    assert store.staged_bytes > 0 and pool.reserved_pages > 0
    store.release(gone)
    assert gone not in store.maps
    assert pool.reserved_pages == pool.worst_case_pages(5)       # keep's staged chunk only
    await store.flush()
    assert pool.pages_used > 0
    check_store(store, [keep])
    assert read_all(store, keep, 5 * CHUNK + 5) == kept + bytes(2 * CHUNK) + b"later"
    store.release(keep)
    assert pool.pages_used == 0 and pool.reserved_pages == 0
    assert store.chunks == 0 and store.staged_bytes == 0 and pool.stats().objects == 0


# A compression held in its thread until the test lets it go, while the trio
# thread changes the chunks of the batch.

@asynccontextmanager
async def compression_held(store: ChunkStore, monkeypatch, task) -> AsyncIterator[trio.Nursery]:
    """Run ``task`` (store.flush or store.run) until a batch is compressing in its
    thread, and hold that compression there for the body of the ``with``."""
    started, go = threading.Event(), threading.Event()
    for codec in store.queue._idle_codecs:
        encode_many = codec.encode_many

        def held(chunks, encode_many=encode_many):
            started.set()
            assert go.wait(30), "the test never let the compression finish"
            return encode_many(chunks)

        monkeypatch.setattr(codec, "encode_many", held)
    with trio.fail_after(HANG):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(task)
            try:
                assert await trio.to_thread.run_sync(started.wait, 30)
                yield nursery
            finally:
                go.set()


async def rewrite_longer(store, cmap, model):
    data = text(CHUNK, seed=21)
    await store.write(cmap, 0, data)
    model_write(model, 0, data)


async def rewrite_shorter(store, cmap, model):
    await store.write(cmap, 10, b"short")
    model_write(model, 10, b"short")


async def rewrite_filled(store, cmap, model):
    await store.write(cmap, 0, b"\xcd" * 5000)
    model_write(model, 0, b"\xcd" * 5000)


async def rewrite_incompressible(store, cmap, model):
    data = os.urandom(5000)
    await store.write(cmap, 0, data)
    model_write(model, 0, data)


async def cut(store, cmap, model):
    await store.truncate(cmap, 3000)
    model_truncate(model, 3000)


async def cut_and_extend(store, cmap, model):
    await store.truncate(cmap, 3000)
    model_truncate(model, 3000)
    await store.write(cmap, 4000, b"tail")
    model_write(model, 4000, b"tail")


async def drop(store, cmap, model):
    await store.truncate(cmap, 0)
    model_truncate(model, 0)


async def release(store, cmap, model):
    """The file goes, and a new file takes its map number."""
    store.release(cmap)
    assert store.new_map() == cmap
    model_truncate(model, 0)


@pytest.mark.parametrize("change", [rewrite_longer, rewrite_shorter, rewrite_filled,
                                    rewrite_incompressible, cut, cut_and_extend, drop, release])
@pytest.mark.parametrize("over_stored", [False, True])
async def test_a_change_during_compression_drops_the_stale_result(change, over_stored,
                                                                 monkeypatch):
    store = make_store()
    pool = store.pool
    cmap, other = store.new_map(), store.new_map()
    model, other_data = bytearray(), text(2 * CHUNK, seed=23)
    if over_stored:                       # the staged chunks replace stored ones
        first = text(CHUNK + 5000, seed=24)
        await store.write(cmap, 0, first)
        await store.flush()
        model_write(model, 0, first)
    a = text(CHUNK + 5000, seed=20)       # content A: chunk 0 changes, chunk 1 may not
    await store.write(cmap, 0, a)
    model_write(model, 0, a)
    await store.write(other, 0, other_data)
    async with compression_held(store, monkeypatch, store.flush):
        assert not len(store.queue)        # the whole of A is in the batch being compressed
        await change(store, cmap, model)   # content B
        assert read_all(store, cmap, len(model)) == model
    # The flush ended with A's batch: B was written after it began.
    assert read_all(store, cmap, len(model)) == model
    assert read_all(store, other, len(other_data)) == other_data
    await store.flush()
    assert read_all(store, cmap, len(model)) == model
    check_store(store, [cmap, other])
    store.release(cmap)
    store.release(other)
    assert pool.pages_used == 0 and pool.reserved_pages == 0 and pool.stats().objects == 0


async def test_a_compression_cancelled_in_its_thread_is_stored_later(monkeypatch):
    store = make_store()
    cmap = store.new_map()
    data = text(2 * CHUNK, seed=25)
    await store.write(cmap, 0, data)
    async with compression_held(store, monkeypatch, store.run) as nursery:
        nursery.cancel_scope.cancel()      # the daemon stops while a batch is compressing
    assert read_all(store, cmap, len(data)) == data
    await store.flush()                   # whatever the cancelled batch left is stored now
    assert read_all(store, cmap, len(data)) == data
    check_store(store, [cmap], check_orig=True)


async def test_a_failed_compression_leaves_its_chunks_staged(monkeypatch):
    store = make_store()
    cmap = store.new_map()
    data = text(3 * CHUNK, seed=27)
    await store.write(cmap, 0, data)
    reserved = store.pool.reserved_pages

    def failing(chunks):
        raise RuntimeError("compression failed")

    for codec in store.queue._idle_codecs:
        monkeypatch.setattr(codec, "encode_many", failing)
    with pytest.raises(RuntimeError, match="compression failed"):
        await store.flush()
    # nothing lost, nothing half-stored: the batch is staged (and queued) again
    assert read_all(store, cmap, len(data)) == data
    assert store.staged_bytes == len(data) and store.pool.reserved_pages == reserved
    assert store.pool.stats().objects == 0 and len(store.queue) == 3
    assert len(store.queue._idle_codecs) == chunkstore.COMPRESSORS    # the codec came back
    monkeypatch.undo()
    await store.flush()
    assert read_all(store, cmap, len(data)) == data
    check_store(store, [cmap], check_orig=True)


async def test_write_does_not_keep_a_view_of_the_callers_buffer():
    """Staged contents must not alias a writable buffer the caller may reuse."""
    store = make_store()
    cmap = store.new_map()
    buf = bytearray(text(2 * CHUNK, seed=26))
    expected = bytes(buf)
    assert await store.write(cmap, 0, memoryview(buf)) == len(buf)
    buf[:] = bytes(len(buf))               # the caller reuses its buffer
    assert read_all(store, cmap, len(expected)) == expected
    await store.flush()
    assert read_all(store, cmap, len(expected)) == expected


def rewrite_during_every_compression(store: ChunkStore, monkeypatch, rewrite,
                                     limit: int) -> None:
    """The worst timing for a writer: each compression, while in its thread, first has
    the trio thread run ``rewrite()`` (``limit`` times in all)."""
    runs = 0
    for codec in store.queue._idle_codecs:
        def racing(chunks, encode_many=codec.encode_many):
            nonlocal runs
            if runs < limit:
                runs += 1
                trio.from_thread.run(rewrite)
            return encode_many(chunks)

        monkeypatch.setattr(codec, "encode_many", racing)


async def test_flush_returns_while_a_writer_keeps_rewriting_its_chunks(monkeypatch):
    """fsync must not wait for a writer that keeps rewriting the chunks it waits for.

    The worst timing, made deterministic: while each batch compresses in its thread,
    the trio thread rewrites every chunk of the file, so each result is stale by the
    time it is ready. (The store once compressed such chunks again and again, and a
    flush waited for as long as the rewrites went on.)
    """
    store = make_store()
    cmap = store.new_map()
    model = bytearray()
    size = 4 * CHUNK
    first = text(size, seed=28)
    await store.write(cmap, 0, first)
    model_write(model, 0, first)
    rewrites = 0
    limit = 20

    async def rewrite():
        nonlocal rewrites
        rewrites += 1
        data = text(size, seed=100 + rewrites)
        assert await store.write(cmap, 0, data) == size
        model_write(model, 0, data)

    rewrite_during_every_compression(store, monkeypatch, rewrite, limit)
    with trio.fail_after(HANG):
        await store.flush()
        assert rewrites == 1          # one batch: nothing written after the call counts
        assert read_all(store, cmap, size) == model
        # The rewritten chunks are staged still; each flush costs one more batch,
        # and once the writer stops, the store drains.
        flushes = 1
        while store.staged_bytes:
            await store.flush()
            flushes += 1
    assert flushes == limit + 1 and rewrites == limit
    assert read_all(store, cmap, size) == model
    check_store(store, [cmap], check_orig=True)


async def test_compressors_store_chunks_a_writer_keeps_rewriting(monkeypatch):
    """Staging ends in bounded time too: with the compressors running and a writer
    rewriting the same chunks during every compression, each batch supersedes, and
    the chunks are stored as soon as the writer stops."""
    monkeypatch.setattr(staging, "GATHER_SECONDS", 0)
    store = make_store()
    cmap = store.new_map()
    model = bytearray()
    rewrites = 0
    limit = 10

    async def rewrite():
        nonlocal rewrites
        rewrites += 1
        data = text(2 * CHUNK, seed=200 + rewrites)
        assert await store.write(cmap, CHUNK // 2, data) == len(data)
        model_write(model, CHUNK // 2, data)

    rewrite_during_every_compression(store, monkeypatch, rewrite, limit)
    with trio.fail_after(HANG):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(store.run)
            await rewrite()
            while store.staged_bytes or rewrites < limit:
                await trio.sleep(0.001)
            nursery.cancel_scope.cancel()
    assert read_all(store, cmap, len(model)) == model
    check_store(store, [cmap], check_orig=True)


async def test_a_compressor_failure_is_logged_and_the_chunks_are_stored_later(monkeypatch,
                                                                             caplog):
    """An unexpected exception in a background compressor must not stop the mount."""
    monkeypatch.setattr(staging, "RETRY_SECONDS", 0)
    store = make_store()
    cmap = store.new_map()
    data = text(3 * CHUNK, seed=29)
    failures = 0
    for codec in store.queue._idle_codecs:
        def failing_once(chunks, encode_many=codec.encode_many):
            nonlocal failures
            if not failures:
                failures += 1
                raise RuntimeError("planted compression failure")
            return encode_many(chunks)

        monkeypatch.setattr(codec, "encode_many", failing_once)
    with trio.fail_after(HANG):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(store.run)
            await store.write(cmap, 0, data)
            while store.staged_bytes:
                await trio.sleep(0.001)
            nursery.cancel_scope.cancel()
    assert failures == 1
    assert "planted compression failure" in caplog.text and "Traceback" in caplog.text
    assert read_all(store, cmap, len(data)) == data
    check_store(store, [cmap], check_orig=True)


# Large reads decompress on a worker thread (read_parallel).

async def mixed_file(store: ChunkStore, seed: int) -> tuple[int, bytearray]:
    """A file of zstd, raw, filled, staged chunks and holes, and its model."""
    rng = random.Random(seed)
    cmap, model = store.new_map(), bytearray()
    for idx in range(40):
        kind = rng.choice(["text", "noise", "fill", "hole", "short"])
        if kind == "hole":
            continue
        data = {"text": lambda: text(CHUNK, seed=idx), "noise": lambda: os.urandom(CHUNK),
                "fill": lambda: b"\x5a" * CHUNK,
                "short": lambda: text(rng.randrange(1, CHUNK), seed=idx)}[kind]()
        await store.write(cmap, idx * CHUNK, data)
        model_write(model, idx * CHUNK, data)
    await store.flush()
    late = text(3 * CHUNK, seed=seed)            # and some chunks staged still
    await store.write(cmap, 7 * CHUNK + 100, late)
    model_write(model, 7 * CHUNK + 100, late)
    return cmap, model


async def test_parallel_reads_match_the_model():
    store = make_store()
    cmap, model = await mixed_file(store, seed=30)
    rng = random.Random(31)
    size = len(model)
    for _ in range(40):
        offset = rng.randrange(size)
        length = rng.choice([chunkstore.PARALLEL_READ_BYTES, size, rng.randrange(1, size)])
        want = bytes(model[offset:offset + length]).ljust(length, b"\0")
        assert await store.read_parallel(cmap, offset, length) == want
    assert len(store._read_codecs) == 1          # one decoder served every read in turn


async def test_reads_decode_runs_of_frames_only_across_whole_chunks():
    """Frames of consecutive chunks decode as one stream; a chunk cut by a truncate
    (its frame still holds the stale tail), a short chunk, a hole or a raw chunk
    must end the stream, or the bytes after it would shift."""
    store = make_store()
    cmap, model = store.new_map(), bytearray()
    for idx in range(12):
        model_write(model, idx * CHUNK, text(CHUNK, seed=idx))
    await store.write(cmap, 0, bytes(model))
    await store.flush()
    await store.truncate(cmap, 3 * CHUNK + 500)         # chunk 3 keeps 500 of its bytes
    model_truncate(model, 3 * CHUNK + 500)
    for offset, data in [(4 * CHUNK, text(CHUNK, seed=40)), (5 * CHUNK, text(900, seed=41)),
                         (6 * CHUNK, os.urandom(CHUNK)), (8 * CHUNK, text(2 * CHUNK, seed=42))]:
        await store.write(cmap, offset, data)
        model_write(model, offset, data)
    await store.flush()
    entries = [store.maps.get(cmap, i) for i in range(10)]
    assert [entry_kind(e) for e in entries if e is not None] == [
        Encoding.ZSTD] * 6 + [Encoding.RAW] + [Encoding.ZSTD] * 2
    size = len(model)
    for offset in range(0, size, 3001):
        for length in (CHUNK + 1, 3 * CHUNK, chunkstore.PARALLEL_READ_BYTES, size):
            want = bytes(model[offset:offset + length]).ljust(length, b"\0")
            assert store.read(cmap, offset, length) == want
            assert await store.read_parallel(cmap, offset, length) == want


async def test_a_parallel_read_returns_what_was_there_when_it_began(monkeypatch):
    """While the thread decompresses, the file is freed, its pages reused and the pool
    compacted: the read's frames were copied out, so it still returns the old bytes."""
    store = make_store()
    cmap, model = await mixed_file(store, seed=32)
    started, go = threading.Event(), threading.Event()
    codec = chunkstore.Codec(1, store.pool.huge_class_size)

    def held(out, frames, dictionary=None, skip=0, decompress_into=codec.decompress_into):
        started.set()
        assert go.wait(30), "the test never let the decompression finish"
        return decompress_into(out, frames, dictionary, skip)

    monkeypatch.setattr(codec, "decompress_into", held)
    store._read_codecs.append(codec)
    result = []

    async def reader():
        result.append(await store.read_parallel(cmap, 0, len(model)))

    with trio.fail_after(HANG):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(reader)
            assert await trio.to_thread.run_sync(started.wait, 30)
            store.release(cmap)                        # frees every object of the file
            other = store.new_map()
            await store.write(other, 0, os.urandom(20 * CHUNK))   # reuses its pages
            await store.flush()
            store.pool.compact()
            go.set()
    assert result == [model]
    check_store(store, [other])
