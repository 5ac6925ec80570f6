"""The seed's scenario (the 2015 "zsmalloc: decouple handle and object" patch).

Fill a pool with many objects of mixed sizes, free a random half: the pool is left
fragmented (frag ratio well below 0.7). Compaction moves the survivors together:
the frag ratio comes back to at least 0.97, every object is intact under its old
handle, the freed pages are back in the arena and the process's RSS falls by
about as much.
"""

from __future__ import annotations

import gc
import random
import time

from zsfs.arena import PAGE_SIZE
from zsfs.control import process_rss as vm_rss
from zsfs.zsmalloc import Pool

N_OBJECTS = 240_000        # about 500 MB of objects before the free
SEED = 20150101
#: Objects are slices of this buffer: half random bytes, half a repeated text (the
#: mix a compressor leaves behind); (offset, size) identifies each object's content.
SOURCE_LEN = 1 << 21




def make_source(r: random.Random) -> bytes:
    half = SOURCE_LEN // 2
    text = b"zsmalloc: decouple handle and object; compaction moves objects. "
    src = r.randbytes(half) + (text * (half // len(text) + 1))[:half]
    return src + src[:4096]           # any slice of up to 4096 bytes at offset < SOURCE_LEN


def test_seed_scenario():
    t0 = time.perf_counter()
    r = random.Random(SEED)
    src = make_source(r)
    pool = Pool(max_object_size=4096)
    malloc, write = pool.malloc, pool.write
    randint, randrange = r.randint, r.randrange
    handles = [0] * N_OBJECTS
    offsets = [0] * N_OBJECTS
    for i in range(N_OBJECTS):
        size = randint(1, 4096)
        off = randrange(SOURCE_LEN)
        h = malloc(size)
        write(h, src[off:off + size])
        handles[i] = h
        offsets[i] = off
    filled = pool.stats()
    assert filled.objects == N_OBJECTS
    assert filled.frag_ratio > 0.95

    # Free a random half.
    order = list(range(N_OBJECTS))
    r.shuffle(order)
    free = pool.free
    for i in order[:N_OBJECTS // 2]:
        free(handles[i])
        handles[i] = 0
    live = [i for i in range(N_OBJECTS) if handles[i]]
    fragmented = pool.stats()
    assert fragmented.objects == len(live) == N_OBJECTS - N_OBJECTS // 2
    assert fragmented.frag_ratio < 0.6, fragmented.frag_ratio
    assert fragmented.freeable > fragmented.pages_used // 3

    # Give earlier frees back to the kernel so that RSS reflects the pages in use.
    pool.arena.release()
    gc.collect()
    rss_before = vm_rss()
    t1 = time.perf_counter()
    freed = pool.compact()
    t2 = time.perf_counter()
    rss_after = vm_rss()
    compacted = pool.stats()

    assert freed > 0
    assert freed >= fragmented.freeable           # plus what spilling into larger classes frees
    assert compacted.pages_used == fragmented.pages_used - freed
    assert compacted.pages_compacted == fragmented.pages_compacted + freed
    assert pool.arena.pages_used == compacted.pages_used
    assert compacted.freeable == 0
    assert compacted.objects == fragmented.objects
    assert compacted.obj_bytes == fragmented.obj_bytes
    assert compacted.frag_ratio >= 0.97, compacted.frag_ratio
    freed_bytes = freed * PAGE_SIZE
    assert rss_before - rss_after >= 0.7 * freed_bytes, (
        f"RSS fell by {(rss_before - rss_after) >> 20} MiB, "
        f"compaction freed {freed_bytes >> 20} MiB")

    # Every remaining object is intact under its old handle.
    size_of, read = pool.size, pool.read
    for i in live:
        h = handles[i]
        n = size_of(h)
        off = offsets[i]
        if read(h) != src[off:off + n]:
            raise AssertionError(f"object {h} (#{i}, {n} bytes) corrupted by compaction")
    t3 = time.perf_counter()
    print(f"\nseed scenario: fill+free {t1 - t0:.1f}s, compact {t2 - t1:.2f}s "
          f"({freed} pages), verify {t3 - t2:.1f}s; frag {fragmented.frag_ratio:.3f} -> "
          f"{compacted.frag_ratio:.3f}; RSS -{(rss_before - rss_after) >> 20} MiB")
