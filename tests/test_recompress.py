"""Unit tests of recompression (zsfs/recompress.py and the chunk store's side of it),
driven directly (no FUSE), against bytearray models."""

from __future__ import annotations

import collections
import logging
import os
import random
import threading
import time
from contextlib import asynccontextmanager
from typing import AsyncIterator

import pytest
import trio
import trio.testing

from zsfs import chunkstore, recompress, staging
from zsfs.chunkstore import (RAW_SEEN, STAGED, ZSTD_DICT, ZSTD_SEEN, ChunkStore,
                             entry_kind, entry_length, entry_payload, entry_tag)
from zsfs.codec import FILL_WORD, Codec, Dictionary, DictionaryError, Encoding
from zsfs.recompress import NoRoom, NotEnoughData, Recompressor, Twins, Versions
from zsfs.zsmalloc import Pool, PoolFull

try:
    from test_chunkstore import model_truncate, model_write
except ImportError:  # tests/ imported as a package
    from tests.test_chunkstore import model_truncate, model_write

CHUNK = 16384
HANG = 60
PAGE = 4096


def make_store(mem_limit: int = 0) -> ChunkStore:
    pool = Pool(max_object_size=CHUNK, mem_limit=mem_limit, arena_capacity=1 << 30)
    return ChunkStore(pool, CHUNK, level=1)


def text(n: int, seed: int = 0) -> bytes:
    """Text-like bytes: words from a vocabulary shared by every seed, in a seeded order,
    so that a dictionary trained on some of them helps with the others."""
    rng = random.Random(seed)
    vocabulary = random.Random(99)
    words = [bytes(vocabulary.choice(b"abcdefghijklmnopqrstuvwxyz_")
                   for _ in range(vocabulary.randrange(3, 12))) for _ in range(400)]
    out = bytearray()
    while len(out) < n:
        out += rng.choice(words) + rng.choice([b" ", b"(", b");\n", b" = ", b".", b"\n    "])
    return bytes(out[:n])


class Node:
    """What the recompressor needs of an inode."""

    def __init__(self, cmap: int, age: float = 3600.0) -> None:
        self.data = cmap
        self.mtime_ns = self.ctime_ns = time.time_ns() - int(age * 1e9)


class FakeTree:
    """What the recompressor walks: ``Tree.chunk_maps`` over a list of nodes."""

    def __init__(self) -> None:
        self.nodes: list[Node] = []

    def add(self, cmap: int, age: float = 3600.0) -> Node:
        node = Node(cmap, age)
        self.nodes.append(node)
        return node

    def chunk_maps(self, changed_before: int | None = None):
        for node in list(self.nodes):
            changed = max(node.mtime_ns, node.ctime_ns)
            idle = changed_before is None or changed < changed_before
            yield node.data if idle else 0


def kinds(store: ChunkStore, cmap: int) -> list[int]:
    return [entry_kind(store.maps.get(cmap, i)) for i in sorted(store.maps.indexes(cmap))]


def check_counters(store: ChunkStore, maps) -> None:
    """Every counter agrees with the entries of ``maps`` (all live files), nothing staged."""
    pool = store.pool
    assert not store._staged and store.staged_bytes == 0
    assert pool.reserved_pages == store.versions.dictionary_pages
    handles = []
    chunks = fills = raws = dict_chunks = orig = 0
    per_tag: dict[int, int] = {}
    for cmap in maps:
        stored = 0
        for idx in store.maps.indexes(cmap):
            entry = store.maps.get(cmap, idx)
            kind, length, payload = entry_kind(entry), entry_length(entry), entry_payload(entry)
            assert kind != STAGED
            chunks += 1
            orig += length
            if kind == Encoding.FILL:
                fills += 1
                stored += FILL_WORD if payload else 0
                continue
            handles.append(payload)
            stored += pool.size(payload)
            if kind in (Encoding.RAW, RAW_SEEN):
                raws += 1
            if kind == ZSTD_DICT:
                dict_chunks += 1
                tag = entry_tag(entry)
                per_tag[tag] = per_tag.get(tag, 0) + 1
        assert store.maps.stored[cmap] == stored
    shared = {h: n - 1 for h, n in collections.Counter(handles).items() if n > 1}
    assert store._refs == shared
    assert store.dedup_chunks == sum(shared.values())
    assert store.dedup_saved_bytes == sum(pool.size(h) * n for h, n in shared.items())
    s = pool.stats()
    assert s.objects == len(set(handles))
    assert s.obj_bytes == sum(pool.size(h) for h in set(handles))
    assert (store.chunks, store.same_chunks, store.huge_chunks) == (chunks, fills, raws)
    assert store.orig_bytes == orig
    versions = store.versions
    assert versions.dictionary_chunks == dict_chunks
    for tag, n in per_tag.items():
        assert versions.get(tag).chunks == n
    # live versions: the current one and those chunks use; dictionaries: theirs
    live = {versions.current.tag, *per_tag}
    assert set(versions._live) == live
    dictionaries = {versions.get(t).dictionary for t in live} - {None}
    assert set(versions._dictionaries) == dictionaries
    assert versions.dictionary_pages == sum(-(-d.memory // PAGE) for d in dictionaries)


def read_all(store: ChunkStore, cmap: int, size: int) -> bytes:
    return bytes(store.read(cmap, 0, size))


async def fill_store(store: ChunkStore, tree: FakeTree, files: int, seed: int = 0,
                     age: float = 3600.0) -> list[tuple[int, bytearray]]:
    """Files of every chunk kind: text (zstd), noise (raw), fills, short and cut chunks."""
    rng = random.Random(seed)
    out = []
    for f in range(files):
        cmap, model = store.new_map(), bytearray()
        for idx in range(rng.randrange(1, 5)):
            kind = rng.choice(["text", "text", "text", "noise", "fill", "hole", "short"])
            data = {"text": lambda: text(CHUNK, seed=seed * 1000 + f * 10 + idx),
                    "noise": lambda: os.urandom(CHUNK),
                    "fill": lambda: b"\x5a" * CHUNK,
                    "hole": lambda: b"",
                    "short": lambda: text(rng.randrange(1, CHUNK), seed=f + idx)}[kind]()
            if data:
                await store.write(cmap, idx * CHUNK, data)
                model_write(model, idx * CHUNK, data)
        if rng.random() < 0.3 and model:               # a cut: the object keeps a stale tail
            size = rng.randrange(len(model))
            await store.truncate(cmap, size)
            model_truncate(model, size)
        tree.add(cmap, age)
        out.append((cmap, model))
    await store.flush()
    return out


def make_recompressor(store: ChunkStore, tree: FakeTree, **kw) -> Recompressor:
    args = dict(idle_age=60.0, level=6, dictionary=True)
    args.update(kw)
    return Recompressor(store, tree, **args)


def check_models(store: ChunkStore, files) -> None:
    for cmap, model in files:
        assert read_all(store, cmap, len(model)) == model


# -- the codec's side ------------------------------------------------------------------

def test_dictionary_frames_need_their_dictionary():
    samples = [text(CHUNK, seed=s) for s in range(300)]
    dictionary = Dictionary.train(samples, 32 << 10)
    assert 0 < dictionary.size <= 32 << 10
    assert dictionary.memory > dictionary.size
    codec = Codec(6, raw_threshold=15000, dictionary=dictionary)
    plain = Codec(6, raw_threshold=15000)
    data = text(CHUNK, seed=1000)
    kind, frame = codec.encode(data)
    assert kind == Encoding.ZSTD
    assert len(frame) < len(plain.encode(data)[1])
    other = Codec(1, raw_threshold=15000)          # any codec reads it, given the dictionary
    assert other.decompress(frame, dictionary) == data
    out = bytearray(2 * CHUNK - 5)                   # and a stream of its frames
    other.decompress_into(memoryview(out), frame + frame, dictionary, skip=5)
    assert out == (data + data)[5:]


def test_recode_many_drops_stale_tails_and_finds_fills():
    codec = Codec(6, raw_threshold=15000)
    fast = Codec(1, raw_threshold=15000)
    data = b"\x00" * 8000 + text(8384)
    frame = fast.encode(data)[1]
    noise = os.urandom(CHUNK)
    out = codec.recode_many([(frame, True, None, 8000), (frame, True, None, CHUNK),
                             (noise, False, None, 100)])
    assert out[0] == (Encoding.FILL, 0)
    assert out[1][0] == Encoding.ZSTD and codec.decompress(out[1][1]) == data
    assert out[2][0] == Encoding.RAW and bytes(out[2][1]) == noise[:100]


def test_training_too_little_raises():
    with pytest.raises(DictionaryError):
        Dictionary.train([b"abc"] * 3, 16 << 10)
    with pytest.raises(DictionaryError):
        Dictionary.train([], 16 << 10)


# -- a pass over every chunk kind ---------------------------------------------------------

async def test_recompress_all_keeps_every_byte_and_saves_memory(monkeypatch):
    monkeypatch.setattr(recompress, "DICT_MIN_DATA", 64 << 10)
    store, tree = make_store(), FakeTree()
    files = await fill_store(store, tree, 60)
    before = store.pool.obj_bytes
    rc = make_recompressor(store, tree)
    with trio.fail_after(HANG):
        replaced = await rc.recompress(idle_only=False)
    assert replaced > 0
    check_models(store, files)
    check_counters(store, [c for c, _ in files])
    s = store.stats()
    assert s.dictionaries == 1 and s.dictionary_bytes > 0 and s.dictionary_chunks > 0
    assert s.recompressed_chunks == replaced
    assert s.recompress_saved_bytes == before - store.pool.obj_bytes > 0
    # every chunk has been seen by the current version: a second pass does nothing
    tag = store.versions.current.tag
    for cmap, _ in files:
        for idx in store.maps.indexes(cmap):
            entry = store.maps.get(cmap, idx)
            assert not store.needs_recompression(entry)
            if entry_kind(entry) != Encoding.FILL:
                assert entry_kind(entry) in (ZSTD_DICT, ZSTD_SEEN, RAW_SEEN)
                assert entry_tag(entry) == tag
    assert await rc.recompress(idle_only=False) == 0
    assert store.recompressed_chunks == replaced


async def test_without_dictionary_frames_are_recompressed_stronger():
    store, tree = make_store(), FakeTree()
    files = await fill_store(store, tree, 20, seed=1)
    rc = make_recompressor(store, tree, dictionary=False)
    with trio.fail_after(HANG):
        assert await rc.recompress(idle_only=False) > 0
    check_models(store, files)
    check_counters(store, [c for c, _ in files])
    assert store.stats().dictionaries == 0
    assert not any(ZSTD_DICT in kinds(store, c) for c, _ in files)


async def test_idle_pass_takes_only_files_left_alone():
    store, tree = make_store(), FakeTree()
    old, fresh = store.new_map(), store.new_map()
    await store.write(old, 0, text(3 * CHUNK, seed=1))
    await store.write(fresh, 0, text(3 * CHUNK, seed=2))
    await store.flush()
    tree.add(old, age=120)
    node = tree.add(fresh, age=120)
    node.ctime_ns = time.time_ns()         # e.g. a chmod or a utimes just now
    rc = make_recompressor(store, tree, idle_age=60, dictionary=False)
    await rc.recompress(idle_only=True)
    assert set(kinds(store, old)) == {ZSTD_SEEN} and set(kinds(store, fresh)) == {Encoding.ZSTD}
    rc.idle_age = 0                        # 0: every file counts as idle
    await rc.recompress(idle_only=True)
    assert set(kinds(store, fresh)) == {ZSTD_SEEN}
    assert read_all(store, old, 3 * CHUNK) == text(3 * CHUNK, seed=1)
    assert read_all(store, fresh, 3 * CHUNK) == text(3 * CHUNK, seed=2)


async def test_a_larger_result_is_not_kept_but_marked_seen():
    store, tree = make_store(), FakeTree()
    cmap = store.new_map()
    data = text(CHUNK, seed=5)
    await store.write(cmap, 0, data)
    await store.flush()
    tree.add(cmap)
    handle = entry_payload(store.maps.get(cmap, 0))
    # level 1 again cannot beat level 1: the object stays, the chunk is marked seen
    rc = make_recompressor(store, tree, level=1, dictionary=False)
    assert await rc.recompress(idle_only=False) == 0
    entry = store.maps.get(cmap, 0)
    assert entry_kind(entry) == ZSTD_SEEN and entry_payload(entry) == handle
    assert entry_tag(entry) == store.versions.current.tag
    assert store.recompressed_chunks == 0 and store.recompress_saved_bytes == 0
    # a new level is a new version: the chunk is a candidate again
    rc.level = 9
    assert store.needs_recompression(store.maps.get(cmap, 0))
    assert await rc.recompress(idle_only=False) == 1
    assert read_all(store, cmap, CHUNK) == data
    check_counters(store, [cmap])


# -- copies share one object ---------------------------------------------------------------

async def write_copies(store: ChunkStore, tree: FakeTree, data: bytes,
                       copies: int) -> list[tuple[int, bytearray]]:
    files = []
    for _ in range(copies):
        cmap = store.new_map()
        await store.write(cmap, 0, data)
        tree.add(cmap)
        files.append((cmap, bytearray(data)))
    await store.flush()
    return files


def payloads(store: ChunkStore, cmap: int) -> list[int]:
    return [entry_payload(store.maps.get(cmap, i)) for i in sorted(store.maps.indexes(cmap))]


@pytest.mark.parametrize("dictionary", [False, True])
async def test_copies_share_one_object_per_chunk(dictionary, monkeypatch):
    monkeypatch.setattr(recompress, "DICT_MIN_DATA", 64 << 10)
    store, tree = make_store(), FakeTree()
    # text chunks get new objects, the noise keeps its raw object, the fill has none
    data = text(3 * CHUNK, seed=1) + os.urandom(CHUNK) + b"\x5a" * CHUNK + text(999, seed=2)
    copies = await write_copies(store, tree, data, 3)
    files = copies + await fill_store(store, tree, 20, seed=4)
    rc = make_recompressor(store, tree, dictionary=dictionary)
    with trio.fail_after(HANG):
        await rc.recompress(idle_only=False)
    check_models(store, files)
    check_counters(store, [c for c, _ in files])
    first = payloads(store, copies[0][0])
    assert all(payloads(store, cmap) == first for cmap, _ in copies)
    assert store.dedup_chunks >= 2 * 5
    assert (ZSTD_DICT in kinds(store, copies[0][0])) == dictionary
    # a write and a cut change one copy each, and nothing of the others
    (a, model_a), (b, model_b), (c, model_c) = copies
    await store.write(a, 100, b"changed")
    model_write(model_a, 100, b"changed")
    await store.truncate(b, CHUNK + 5)         # chunk 1 stays shared, cut short
    model_truncate(model_b, CHUNK + 5)
    await store.flush()
    check_models(store, files)
    check_counters(store, [c for c, _ in files])
    assert payloads(store, c) == first
    # an object goes with its last chunk
    for cmap, _ in files:
        store.release(cmap)
    assert store.pool.stats().objects == 0 and store._refs == {}
    assert store.dedup_chunks == store.dedup_saved_bytes == 0


async def test_a_shared_object_stays_under_a_new_level_and_leaves_a_retired_dictionary(
        monkeypatch):
    """A smaller object for a new level would not free a shared one if some chunks
    sharing it are not in the pass: it stays. One on a retired dictionary must go,
    and its chunks take one new object."""
    monkeypatch.setattr(recompress, "DICT_MIN_DATA", 64 << 10)
    store, tree = make_store(), FakeTree()
    copies = await write_copies(store, tree, text(4 * CHUNK, seed=3), 3)
    others = await fill_store(store, tree, 20, seed=4)
    files = copies + others
    copy_maps = [c for c, _ in copies]
    rc = make_recompressor(store, tree, level=3)
    with trio.fail_after(HANG):
        await rc.recompress(idle_only=False)
        shared = set(payloads(store, copy_maps[0]))
        assert all(set(payloads(store, c)) == shared for c in copy_maps)
        assert set(kinds(store, copy_maps[0])) == {ZSTD_DICT}
        tree.nodes[2].ctime_ns = time.time_ns()        # the third copy is not idle
        rc.level = 9
        await rc.recompress(idle_only=True)
        assert all(set(payloads(store, c)) == shared for c in copy_maps)
        tag = store.versions.current.tag
        assert {entry_tag(store.maps.get(c, i)) for c in copy_maps[:2] for i in range(4)} == {tag}
        check_counters(store, [c for c, _ in files])
        await rc.retrain()                             # the old dictionary is retired
        await rc.recompress(idle_only=False)
    moved = set(payloads(store, copy_maps[0]))
    assert moved.isdisjoint(shared) and len(moved) == 4
    assert all(set(payloads(store, c)) == moved for c in copy_maps)
    assert store.versions.dictionaries == 1
    check_models(store, files)
    check_counters(store, [c for c, _ in files])


async def rewritten(store, tree, cmap, data):
    await store.write(cmap, 0, text(CHUNK, seed=99))
    await store.flush()


async def rewritten_and_recompressed(store, tree, cmap, data):
    """The same setting's object is now the other content's: same kind and tag,
    other bytes."""
    await rewritten(store, tree, cmap, data)
    job = store.recompression_source(cmap, 0)
    version = store.versions.current
    (kind, payload), = Codec(version.level, store.pool.huge_class_size).recode_many([job.source])
    assert store.commit_recompressed(job, version, kind, payload, Twins())


async def released_and_reused(store, tree, cmap, data):
    store.release(cmap)
    assert store.new_map() == cmap
    await store.write(cmap, 0, data)
    await store.flush()


@pytest.mark.parametrize("change", [rewritten, rewritten_and_recompressed, released_and_reused])
async def test_a_twin_changed_since_the_pass_left_it_is_no_twin(change):
    store, tree = make_store(), FakeTree()
    data = text(CHUNK, seed=6)
    (a, model_a), (b, model_b) = await write_copies(store, tree, data, 2)
    version = store.versions.current
    codec = Codec(version.level, store.pool.huge_class_size)
    jobs = [store.recompression_source(a, 0), store.recompression_source(b, 0)]
    (kind_a, payload_a), (kind_b, payload_b) = codec.recode_many([j.source for j in jobs])
    twins = Twins()
    assert store.commit_recompressed(jobs[0], version, kind_a, payload_a, twins)
    await change(store, tree, a, data)
    model_a[:] = store.read(a, 0, CHUNK)
    assert store.commit_recompressed(jobs[1], version, kind_b, payload_b, twins)
    assert store._refs == {} and store.dedup_chunks == 0
    assert read_all(store, b, CHUNK) == data
    check_counters(store, [a, b])
    check_models(store, [(a, model_a), (b, model_b)])


# -- changes while a batch is being recompressed in its thread ----------------------------

@asynccontextmanager
async def recompression_held(rc: Recompressor, monkeypatch, idle_only: bool = False
                             ) -> AsyncIterator[trio.Nursery]:
    """Run a pass until its first batch is in the worker thread, and hold that batch
    there for the body of the ``with``."""
    started, go = threading.Event(), threading.Event()
    recode_many = Codec.recode_many

    def held(self, sources):
        started.set()
        assert go.wait(30), "the test never let the recompression finish"
        return recode_many(self, sources)

    monkeypatch.setattr(Codec, "recode_many", held)
    with trio.fail_after(HANG):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(rc.recompress, idle_only)
            try:
                assert await trio.to_thread.run_sync(started.wait, 30)
                yield nursery
            finally:
                go.set()


async def rewrite(store, cmap, model):
    data = text(CHUNK, seed=77)
    await store.write(cmap, 0, data)
    model_write(model, 0, data)
    await store.flush()


async def rewrite_staged(store, cmap, model):
    data = text(5000, seed=78)
    await store.write(cmap, 100, data)     # still staged when the batch commits
    model_write(model, 100, data)


async def cut(store, cmap, model):
    await store.truncate(cmap, 3000)
    model_truncate(model, 3000)


async def drop(store, cmap, model):
    await store.truncate(cmap, 0)
    model_truncate(model, 0)


async def release(store, cmap, model):
    """The file goes, and a new file takes its map number."""
    store.release(cmap)
    assert store.new_map() == cmap
    model_truncate(model, 0)


async def release_and_reuse(store, cmap, model):
    """The file goes, a new file takes its map number, and the chunks' handles are
    taken by new objects of the same lengths."""
    handles = [entry_payload(store.maps.get(cmap, i)) for i in sorted(store.maps.indexes(cmap))]
    lengths = [store.pool.size(h) for h in handles]
    await release(store, cmap, model)
    taken = [store.pool.malloc(n) for n in reversed(lengths)]
    for h in taken:
        store.pool.write(h, os.urandom(store.pool.size(h)))
    assert set(taken) == set(handles)


async def compact(store, cmap, model):
    other = store.new_map()
    await store.write(other, 0, text(20 * CHUNK, seed=79))
    await store.flush()
    store.release(other)
    store.pool.compact()


async def lower_mem_limit(store, cmap, model):
    store.pool.mem_limit = store.pool.pages_used * PAGE     # no room for a new zspage


@pytest.mark.parametrize("change", [rewrite, rewrite_staged, cut, drop, release,
                                    release_and_reuse, compact, lower_mem_limit])
async def test_a_change_during_recompression_drops_the_stale_result(change, monkeypatch):
    store, tree = make_store(), FakeTree()
    cmap, other = store.new_map(), store.new_map()
    model = bytearray(text(3 * CHUNK + 500, seed=70))
    other_data = text(2 * CHUNK, seed=71)
    await store.write(cmap, 0, bytes(model))
    await store.write(other, 0, other_data)
    await store.flush()
    tree.add(cmap)
    tree.add(other)
    rc = make_recompressor(store, tree, dictionary=False)
    async with recompression_held(rc, monkeypatch):
        await change(store, cmap, model)
        assert read_all(store, cmap, len(model)) == model
        handles_then = {entry_payload(store.maps.get(cmap, i)) for i in store.maps.indexes(cmap)
                        if entry_kind(store.maps.get(cmap, i)) != STAGED}
    await store.flush()
    assert read_all(store, cmap, len(model)) == model
    assert read_all(store, other, len(other_data)) == other_data
    # nothing of cmap's that the change touched was replaced by a stale result
    if change in (release, release_and_reuse, drop):
        assert store.maps.chunks(cmap) == 0
    if change is release_and_reuse:
        assert store.pool.stats().objects >= 4
    store.pool.mem_limit = 0
    maps = [other] + ([cmap] if store.maps.chunks(cmap) else [])
    if change is not release_and_reuse:
        check_counters(store, maps)
    # what is left of the file recompresses on a later pass
    await rc.recompress(idle_only=False)
    assert read_all(store, cmap, len(model)) == model
    assert not any(store.needs_recompression(store.maps.get(c, i))
                   for c in maps for i in store.maps.indexes(c))
    del handles_then


async def test_a_setting_changed_during_a_batch_drops_its_results(monkeypatch):
    store, tree = make_store(), FakeTree()
    files = await fill_store(store, tree, 10, seed=3)
    rc = make_recompressor(store, tree, dictionary=False)
    async with recompression_held(rc, monkeypatch):
        rc.level = 3
    assert store.recompressed_chunks == 0
    check_models(store, files)
    check_counters(store, [c for c, _ in files])


async def test_a_full_pool_skips_chunks_and_keeps_them(monkeypatch):
    store, tree = make_store(), FakeTree()
    files = await fill_store(store, tree, 30, seed=4)
    store.pool.mem_limit = store.pool.pages_used * PAGE
    store.pool.compact()
    rc = make_recompressor(store, tree, dictionary=False)
    await rc.recompress(idle_only=False)
    check_models(store, files)
    check_counters(store, [c for c, _ in files])
    assert store.pool.pages_used * PAGE <= store.pool.mem_limit


async def test_a_dictionary_that_does_not_fit_under_mem_limit_is_not_used(monkeypatch):
    monkeypatch.setattr(recompress, "DICT_MIN_DATA", 64 << 10)
    store, tree = make_store(), FakeTree()
    files = await fill_store(store, tree, 40, seed=5)
    store.pool.mem_limit = store.pool.pages_used * PAGE + 2 * PAGE
    rc = make_recompressor(store, tree)
    await rc.recompress(idle_only=False)
    assert store.versions.dictionaries == 0 and store.pool.reserved_pages == 0
    check_models(store, files)
    check_counters(store, [c for c, _ in files])
    with pytest.raises(NoRoom):
        await rc.retrain()
    assert store.versions.dictionaries == 0


# -- dictionaries: versions, retraining, freeing --------------------------------------------

async def test_retrain_keeps_the_old_dictionary_while_chunks_need_it(monkeypatch):
    monkeypatch.setattr(recompress, "DICT_MIN_DATA", 64 << 10)
    store, tree = make_store(), FakeTree()
    files = await fill_store(store, tree, 50, seed=6)
    rc = make_recompressor(store, tree)
    await rc.recompress(idle_only=False)
    versions = store.versions
    first = versions.current
    assert first.dictionary is not None and first.chunks > 0
    reserved = store.pool.reserved_pages
    await rc.retrain()
    second = versions.current
    assert second is not first and second.dictionary is not first.dictionary
    assert versions.dictionaries == 2 and store.pool.reserved_pages > reserved
    check_models(store, files)                 # old chunks still read with the old one
    check_counters(store, [c for c, _ in files])
    # a pass moves every chunk off the old dictionary, which is then freed
    await rc.recompress(idle_only=False)
    assert versions.dictionaries == 1 and first.tag not in versions._live
    assert store.pool.reserved_pages == versions.dictionary_pages
    check_models(store, files)
    check_counters(store, [c for c, _ in files])


async def test_old_dictionary_is_freed_with_its_last_chunk(monkeypatch):
    monkeypatch.setattr(recompress, "DICT_MIN_DATA", 64 << 10)
    store, tree = make_store(), FakeTree()
    files = await fill_store(store, tree, 50, seed=7)
    rc = make_recompressor(store, tree)
    await rc.recompress(idle_only=False)
    first = store.versions.current
    await rc.retrain()
    users = [c for c, _ in files if ZSTD_DICT in kinds(store, c)]
    for cmap in users[:-1]:
        store.release(cmap)
        assert store.versions.dictionaries == 2
    last = users[-1]
    await store.truncate(last, 0)               # the last chunk that needs it
    assert store.versions.dictionaries == 1 and store.versions.current.dictionary is not None
    assert first.tag not in store.versions._live
    assert store.pool.reserved_pages == store.versions.dictionary_pages
    check_counters(store, [c for c, _ in files if c not in users[:-1]])


async def test_dictionary_off_moves_chunks_off_it_and_frees_it(monkeypatch):
    monkeypatch.setattr(recompress, "DICT_MIN_DATA", 64 << 10)
    store, tree = make_store(), FakeTree()
    files = await fill_store(store, tree, 40, seed=8)
    rc = make_recompressor(store, tree)
    await rc.recompress(idle_only=False)
    assert store.versions.dictionaries == 1
    rc.dictionary = False
    assert store.versions.dictionaries == 1     # still needed by its chunks
    await rc.recompress(idle_only=False)
    assert store.versions.dictionaries == 0 and store.pool.reserved_pages == 0
    assert store.versions.dictionary_chunks == 0
    check_models(store, files)
    check_counters(store, [c for c, _ in files])


async def test_too_little_data_means_no_dictionary():
    store, tree = make_store(), FakeTree()
    cmap = store.new_map()
    await store.write(cmap, 0, text(100))
    await store.flush()
    tree.add(cmap)
    rc = make_recompressor(store, tree)
    with pytest.raises(NotEnoughData):
        await rc.retrain()
    await rc.recompress(idle_only=False)        # below DICT_MIN_DATA: no training at all
    assert store.versions.dictionaries == 0
    assert read_all(store, cmap, 100) == text(100)


def test_versions_tags_wrap_and_skip_live_ones():
    pool = Pool(max_object_size=CHUNK, arena_capacity=1 << 26)
    versions = Versions(pool, 6)
    first = versions.current
    versions.use(first.tag)                     # keeps it alive
    for _ in range((1 << recompress.TAG_BITS) + 5):
        versions.switch(6, None)
    assert versions.get(first.tag) is first
    assert 0 < versions.current.tag < 1 << recompress.TAG_BITS
    assert versions.versions == 2
    versions.unuse(first.tag)
    assert versions.versions == 1


# -- reads of recompressed chunks -------------------------------------------------------------

async def test_reads_and_parallel_reads_of_recompressed_files(monkeypatch):
    monkeypatch.setattr(recompress, "DICT_MIN_DATA", 64 << 10)
    store, tree = make_store(), FakeTree()
    files = await fill_store(store, tree, 30, seed=9)
    big, big_model = store.new_map(), bytearray()
    for idx in range(40):
        data = [text(CHUNK, seed=idx), os.urandom(CHUNK), b"\x11" * CHUNK][idx % 3]
        await store.write(big, idx * CHUNK, data)
        model_write(big_model, idx * CHUNK, data)
    await store.flush()
    tree.add(big)
    rc = make_recompressor(store, tree)
    await rc.recompress(idle_only=False)
    await rc.retrain()
    # half of it moves to the new dictionary, half stays on the old one
    for n, (cmap, model) in enumerate(files):
        if n % 2:
            data = text(CHUNK // 2, seed=500 + n)
            await store.write(cmap, 0, data)
            model_write(model, 0, data)
    late = text(3 * CHUNK, seed=600)
    await store.write(big, 5 * CHUNK + 10, late)       # staged, when read
    model_write(big_model, 5 * CHUNK + 10, late)
    assert set(kinds(store, big)) >= {ZSTD_DICT, RAW_SEEN, Encoding.FILL, STAGED}
    rng = random.Random(10)
    size = len(big_model)
    for _ in range(30):
        offset = rng.randrange(size)
        length = rng.choice([chunkstore.PARALLEL_READ_BYTES, size, rng.randrange(1, size)])
        want = bytes(big_model[offset:offset + length]).ljust(length, b"\0")
        assert await store.read_parallel(big, offset, length) == want
        assert store.read(big, offset, length) == want
    check_models(store, files)


async def test_a_parallel_read_keeps_a_dictionary_retired_meanwhile(monkeypatch):
    monkeypatch.setattr(recompress, "DICT_MIN_DATA", 64 << 10)
    store, tree = make_store(), FakeTree()
    cmap, model = store.new_map(), bytearray()
    for idx in range(30):
        data = text(CHUNK, seed=idx)
        await store.write(cmap, idx * CHUNK, data)
        model_write(model, idx * CHUNK, data)
    await store.flush()
    tree.add(cmap)
    rc = make_recompressor(store, tree)
    await rc.recompress(idle_only=False)
    assert set(kinds(store, cmap)) == {ZSTD_DICT}
    started, go = threading.Event(), threading.Event()
    codec = Codec(1, store.pool.huge_class_size)

    def held(frames, sizes, dictionary=None, decompress=codec.decompress_joined):
        started.set()
        assert go.wait(30)
        return decompress(frames, sizes, dictionary)

    monkeypatch.setattr(codec, "decompress_joined", held)     # the read is one run
    store._read_codecs.append(codec)
    result = []

    async def reader():
        result.append(await store.read_parallel(cmap, 0, len(model)))

    with trio.fail_after(HANG):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(reader)
            assert await trio.to_thread.run_sync(started.wait, 30)
            rc.dictionary = False
            store.release(cmap)                 # the dictionary's last chunks go
            assert store.versions.dictionaries == 0
            go.set()
    assert result == [model]


# -- the background task ------------------------------------------------------------------------

async def until(predicate, seconds: float = 30) -> None:
    """Wait for ``predicate()``; under the autojump clock virtual time flies while a
    worker thread works, so the bound is in real time."""
    deadline = time.monotonic() + seconds
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        await trio.sleep(0.5)


async def test_background_pass_recompresses_idle_files(autojump_clock):
    store, tree = make_store(), FakeTree()
    cmap = store.new_map()
    data = text(4 * CHUNK, seed=11)
    await store.write(cmap, 0, data)
    await store.flush()
    node = tree.add(cmap, age=0)
    kicked = []
    rc = Recompressor(store, tree, idle_age=30, level=6, dictionary=False,
                      kick=lambda: kicked.append(1))
    async with trio.open_nursery() as nursery:
        nursery.start_soon(rc.run)
        await trio.sleep(20)
        assert set(kinds(store, cmap)) == {Encoding.ZSTD}           # not idle yet
        node.mtime_ns = node.ctime_ns = time.time_ns() - int(40e9)
        await until(lambda: set(kinds(store, cmap)) == {ZSTD_SEEN} and kicked)
        assert rc.passes_background >= 1
        nursery.cancel_scope.cancel()
    assert read_all(store, cmap, len(data)) == data


async def test_background_pass_waits_for_staged_writes(autojump_clock):
    store, tree = make_store(), FakeTree()
    cmap = store.new_map()
    await store.write(cmap, 0, text(4 * CHUNK, seed=12))
    await store.flush()
    tree.add(cmap)
    writing = store.new_map()
    await store.write(writing, 0, text(CHUNK, seed=13))     # staged, compressors not running
    rc = Recompressor(store, tree, idle_age=1, level=6, dictionary=False)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(rc.run)
        await trio.sleep(10)
        assert set(kinds(store, cmap)) == {Encoding.ZSTD}
        await store.flush()
        await until(lambda: set(kinds(store, cmap)) == {ZSTD_SEEN})
        nursery.cancel_scope.cancel()


async def test_a_failed_background_pass_is_logged_and_changes_nothing(monkeypatch, caplog,
                                                                     autojump_clock):
    store, tree = make_store(), FakeTree()
    files = await fill_store(store, tree, 10, seed=14)
    failures = []
    recode_many = Codec.recode_many

    def failing(self, sources):
        if not failures:
            failures.append(1)
            raise RuntimeError("planted recompression failure")
        return recode_many(self, sources)

    monkeypatch.setattr(Codec, "recode_many", failing)
    rc = Recompressor(store, tree, idle_age=1, level=6, dictionary=False)
    with caplog.at_level(logging.ERROR, logger="zsfs.recompress"):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(rc.run)
            await until(lambda: store.recompressed_chunks > 0)
            nursery.cancel_scope.cancel()
    assert failures and "planted recompression failure" in caplog.text
    assert "Traceback" in caplog.text
    assert store.recompressed_chunks > 0            # the next pass did the work
    check_models(store, files)
    check_counters(store, [c for c, _ in files])


async def test_changing_the_idle_age_applies_to_the_wait_under_way(autojump_clock):
    store, tree = make_store(), FakeTree()
    cmap = store.new_map()
    await store.write(cmap, 0, text(CHUNK, seed=15))
    await store.flush()
    tree.add(cmap, age=3600)
    rc = Recompressor(store, tree, idle_age=0, level=6, dictionary=False)
    started = []
    real_pass = rc._pass

    async def recorded(idle_only, **kw):
        started.append(trio.current_time())
        return await real_pass(idle_only, **kw)

    rc._pass = recorded
    async with trio.open_nursery() as nursery:
        nursery.start_soon(rc.run)
        await trio.sleep(1)
        rc.idle_age = 2
        await until(lambda: set(kinds(store, cmap)) == {ZSTD_SEEN})
        assert started[0] < 2           # not after the 60 s it was waiting for
        nursery.cancel_scope.cancel()


# -- a random workload with recompression forced on -------------------------------------------

async def chaos(store: ChunkStore, rc: Recompressor, rng: random.Random, stop: trio.Event,
                counts: dict, finished: trio.Event) -> None:
    """Passes asked for, new levels, the dictionary off, on and retrained, compactions:
    all while the writer goes on."""
    try:
        await _chaos(store, rc, rng, stop, counts)
    finally:
        finished.set()


async def _chaos(store: ChunkStore, rc: Recompressor, rng: random.Random, stop: trio.Event,
                 counts: dict) -> None:
    while not stop.is_set():
        op = rng.random()
        if op < 0.3:
            await rc.recompress(idle_only=rng.random() < 0.5)
            counts["passes"] += 1
        elif op < 0.45:
            rc.level = rng.choice([3, 6, 9])
        elif op < 0.6:
            rc.dictionary = not rc.dictionary
        elif op < 0.8:
            try:
                await rc.retrain()
                counts["retrains"] += 1
            except (NotEnoughData, NoRoom):
                pass
        else:
            store.pool.compact()
        counts["dictionary_chunks"] = max(counts["dictionary_chunks"],
                                          store.versions.dictionary_chunks)
        counts["dedup_chunks"] = max(counts["dedup_chunks"], store.dedup_chunks)
        await trio.sleep(rng.choice([0, 0.001, 0.01]))


@pytest.mark.parametrize("seed", [1, 2, 3])
async def test_concurrent_writes_truncates_and_recompression_match_a_model(seed, monkeypatch):
    monkeypatch.setattr(recompress, "DICT_MIN_DATA", 32 << 10)
    monkeypatch.setattr(recompress, "MIN_SCAN_SECONDS", 0.005)
    monkeypatch.setattr(recompress, "BATCH_BYTES", 64 << 10)     # more batches, more races
    monkeypatch.setattr(staging, "GATHER_SECONDS", 0)
    store, tree = make_store(), FakeTree()
    rng = random.Random(seed)
    files = []
    for f in range(4):
        cmap, model = store.new_map(), bytearray()
        node = tree.add(cmap, age=3600)
        files.append([cmap, model, node])
    for cmap, model, _ in files:                    # enough to train on
        data = text(12 * CHUNK, seed=seed * 10 + len(model))
        await store.write(cmap, 0, data)
        model_write(model, 0, data)
    rc = Recompressor(store, tree, idle_age=0.01, level=6, dictionary=True)
    lengths = [1, 100, 3000, CHUNK - 1, CHUNK, CHUNK + 1, 2 * CHUNK + 17]
    counts = {"passes": 1, "retrains": 1, "dictionary_chunks": 0, "dedup_chunks": 0}
    await store.flush()
    await rc.retrain()                              # dictionary chunks from the start
    await rc.recompress(idle_only=False)
    assert store.versions.dictionary_chunks > 0
    stop, chaos_finished = trio.Event(), trio.Event()
    with trio.fail_after(HANG * 2):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(store.run)
            nursery.start_soon(rc.run)
            nursery.start_soon(chaos, store, rc, random.Random(seed + 100), stop, counts,
                               chaos_finished)
            for step in range(400):
                i = rng.randrange(len(files))
                cmap, model, node = files[i]
                op = rng.random()
                if op < 0.55:
                    offset = rng.choice([0, rng.randrange(3 * CHUNK), rng.randrange(12 * CHUNK)])
                    length = rng.choice(lengths)
                    data = rng.choice([lambda: text(length, seed=step),
                                       lambda: os.urandom(length),
                                       lambda: b"\xab" * length, lambda: bytes(length)])()
                    assert await store.write(cmap, offset, data) == length
                    model_write(model, offset, data)
                    copy_cmap, copy_model, _ = files[rng.randrange(len(files))]
                    if rng.random() < 0.2 and copy_cmap != cmap and model:
                        # cp: another file becomes a copy, whose chunks a pass may share
                        await store.truncate(copy_cmap, 0)
                        assert await store.write(copy_cmap, 0, bytes(model)) == len(model)
                        copy_model[:] = model
                elif op < 0.75:
                    size = rng.choice([0, rng.randrange(len(model) + 1),
                                       len(model) + rng.randrange(2 * CHUNK)])
                    await store.truncate(cmap, size)
                    model_truncate(model, size)
                elif op < 0.8:
                    store.release(cmap)
                    new = store.new_map()
                    node.data = new
                    files[i] = [new, bytearray(), node]
                elif op < 0.85:
                    await store.flush()
                if rng.random() < 0.2:
                    await trio.sleep(rng.choice([0.001, 0.01]))   # let passes run
                else:
                    await trio.sleep(0)
                for cmap, model, _ in files:
                    assert read_all(store, cmap, len(model)) == model, f"step {step}"
                cmap, model, _ = files[rng.randrange(len(files))]
                if len(model) > 1:
                    at = rng.randrange(len(model))
                    n = rng.choice([rng.randrange(1, 3 * CHUNK), chunkstore.PARALLEL_READ_BYTES])
                    want = bytes(model[at:at + n]).ljust(n, b"\0")
                    assert await store.read_parallel(cmap, at, n) == want, f"step {step}"
            stop.set()
            await chaos_finished.wait()
            # a last copy, and a new setting that sends every chunk through the last pass
            copy = text(3 * CHUNK, seed=seed + 200)
            for cmap, model, _ in files[:2]:
                await store.truncate(cmap, 0)
                await store.write(cmap, 0, copy)
                model[:] = copy
            rc.level = 9 if rc.level != 9 else 6
            await store.flush()
            await rc.recompress(idle_only=False)
            counts["dedup_chunks"] = max(counts["dedup_chunks"], store.dedup_chunks)
            nursery.cancel_scope.cancel()
    for cmap, model, _ in files:
        assert read_all(store, cmap, len(model)) == model
    check_counters(store, [c for c, _, _ in files])
    # the run did what it is for
    assert counts["passes"] >= 2 and rc.passes_background > 0
    assert store.recompressed_chunks > 0 and counts["dictionary_chunks"] > 0
    assert counts["retrains"] > 0 and counts["dedup_chunks"] > 0
    for cmap, _, _ in files:
        store.release(cmap)
    versions = store.versions
    assert store.chunks == 0 and versions.dictionary_chunks == 0
    assert versions.versions == 1 and versions.dictionaries <= 1
    assert store.pool.stats().objects == 0
    assert store.pool.reserved_pages == versions.dictionary_pages


def test_levels_are_honoured_with_a_dictionary():
    samples = [text(CHUNK, seed=s) for s in range(300)]
    dictionary = Dictionary.train(samples, 32 << 10)
    data = b"".join(b"%d,%d;" % (i, i * i) for i in range(3000))[:CHUNK]
    fast = Codec(1, 1 << 20, dictionary=dictionary).encode(data)[1]
    strong = Codec(19, 1 << 20, dictionary=dictionary).encode(data)[1]
    assert len(strong) < len(fast)
    assert Codec(1, 1 << 20).decompress(strong, dictionary) == data
