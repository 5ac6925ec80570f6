"""Unit tests of the chunk store, driven directly (no FUSE), against a bytearray model."""

import os
import random

import pytest

from zsfs.chunkstore import ChunkMap, ChunkStore, NoSpace
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


def read_all(store: ChunkStore, cmap: ChunkMap, size: int) -> bytes:
    return store.read(cmap, 0, size)


async def test_random_writes_match_a_model():
    store = make_store()
    cmap = ChunkMap()
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
    cmap = ChunkMap()
    data = text(size, seed=3)
    assert await store.write(cmap, 100, data) == size
    assert store.read(cmap, 100, size) == data
    assert store.read(cmap, 0, 100) == bytes(100)
    await store.truncate(cmap, 100 + size // 2)         # trimmed chunks read as zeros
    assert store.read(cmap, 0, size + 100) == bytes(100) + data[:size // 2] + bytes(size - size // 2)


async def test_same_filled_and_incompressible_chunks():
    store = make_store()
    zeros, fill, noise = ChunkMap(), ChunkMap(), ChunkMap()
    await store.write(zeros, 0, bytes(4 * CHUNK))
    await store.write(fill, 0, b"\xab" * (4 * CHUNK))
    await store.flush()
    assert store.pool.stats().objects == 0 and store.same_chunks == 8
    assert zeros.stored_bytes == 0          # zeros: no RAM, like holes
    assert fill.stored_bytes > 0            # but never zero blocks for non-zero data
    assert read_all(store, fill, 4 * CHUNK) == b"\xab" * (4 * CHUNK)
    data = os.urandom(2 * CHUNK)
    await store.write(noise, 0, data)
    await store.flush()
    assert store.huge_chunks == store.huge_chunks_since == 2
    assert read_all(store, noise, 2 * CHUNK) == data
    assert store.orig_bytes == 10 * CHUNK


async def test_holes_cost_nothing():
    store = make_store()
    cmap = ChunkMap()
    far = 1 << 40
    await store.write(cmap, far, b"end")
    assert cmap.indexes() == [far // CHUNK]
    assert store.read(cmap, far - 10, 13) == bytes(10) + b"end"
    assert store.read(cmap, 12345, 100_000) == bytes(100_000)


async def test_truncate_drops_and_trims_without_allocating():
    store = make_store()
    cmap = ChunkMap()
    data = text(5 * CHUNK + 300)
    await store.write(cmap, 0, data)
    await store.flush()
    store.pool.mem_limit = store.pool.pages_used * 4096   # no room for anything new
    await store.truncate(cmap, 2 * CHUNK + 10)
    assert sorted(cmap.indexes()) == [0, 1, 2]
    assert store.orig_bytes == 2 * CHUNK + 10
    # extending again reads zeros past the old cut
    assert store.read(cmap, 0, 3 * CHUNK) == data[:2 * CHUNK + 10] + bytes(CHUNK - 10)
    await store.truncate(cmap, 0)
    assert len(cmap) == 0 and store.chunks == 0 and store.pool.stats().objects == 0


async def test_mem_limit_stops_a_write_without_touching_earlier_bytes():
    store = make_store()
    cmap = ChunkMap()
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
    assert (3 * CHUNK + written) // CHUNK == len(cmap)


async def test_capacity_limits_logical_bytes():
    store = make_store(capacity=2 * CHUNK)
    cmap = ChunkMap()
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
    maps = [ChunkMap() for _ in range(400)]
    for i, cmap in enumerate(maps):
        await store.write(cmap, 0, text(3000, seed=i))
    await store.flush()
    for cmap in maps[::2]:
        store.release(cmap)
    assert store.pool.freeable() > 0
    store.pool.mem_limit = store.pool.pages_used * 4096
    fresh = ChunkMap()
    assert await store.write(fresh, 0, text(3000, seed=999) + os.urandom(2000)) == 5000
    assert calls == [1]
    for i, cmap in enumerate(maps[1::2]):
        assert read_all(store, cmap, 3000) == text(3000, seed=2 * i + 1)


async def test_release_returns_every_page():
    store = make_store()
    cmap = ChunkMap()
    await store.write(cmap, 0, text(40 * CHUNK))
    await store.flush()
    assert store.pool.pages_used > 0
    store.release(cmap)
    assert store.pool.pages_used == 0 and store.orig_bytes == 0 and store.chunks == 0
    assert cmap.stored_bytes == 0


def test_chunk_map_keeps_one_entry_inline():
    cmap = ChunkMap()
    assert cmap.get(0) is None and len(cmap) == 0 and cmap.indexes() == []
    cmap[5] = 50
    cmap[5] = 51
    assert (cmap.get(5), cmap.get(4), len(cmap), cmap._dict) == (51, None, 1, None)
    cmap[7] = 70
    assert sorted(cmap.indexes()) == [5, 7] and sorted(cmap.entries()) == [51, 70]
    assert cmap.pop(5) == 51
    assert (cmap.get(7), len(cmap), cmap._dict) == (70, 1, None)   # back inline
    with pytest.raises(KeyError):
        cmap.pop(5)
    assert cmap.pop(7) == 70 and len(cmap) == 0
