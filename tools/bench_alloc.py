#!/usr/bin/env python3
"""Allocator benchmark for zsfs.zsmalloc (``make bench-alloc``).

Prints Markdown tables:

* malloc+write, read and free operations per second by object size, measured
  batch-wise (malloc+write N objects, read them all, free them all; three rounds,
  medians), and malloc+write+free per second (N / (malloc+write time + free time));
* the seed's scenario (fill with mixed sizes, free a random half, compact): frag
  ratio before and after compaction, and compaction speed in MB of objects moved
  per second;
* Python-side metadata bytes per live object, measured with tracemalloc (the
  caller's handles live in a preallocated ``array('Q')`` that exists before the
  baseline, so the growth is the pool's own bookkeeping; nothing is subtracted);
* the issue's targets next to what was reached.

``read`` is ``pool.read(h)``: a zero-copy view for objects in contiguous zspages.
``--json PATH`` also writes every number as JSON.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import random
import statistics
import sys
import time
import tracemalloc
from array import array
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from zsfs.zsmalloc import Pool  # noqa: E402

TARGET_OPS = 300_000          # malloc+write+free per second of 1 KiB objects
TARGET_META = 32              # bytes of Python metadata per live object
ROUNDS = 3

#: (max_object_size, object size); each batch holds about BATCH_BYTES of objects.
CASES = [(4096, 64), (4096, 256), (4096, 1024), (4096, 3000), (4096, 4096),
         (65536, 16384), (65536, 40960)]
BATCH_OBJECTS = 100_000
BATCH_BYTES = 256 << 20


def batch_rates(max_object_size: int, size: int, n: int) -> dict[str, float]:
    """Median ops/s of malloc+write, read and free over ROUNDS batches of n objects."""
    pool = Pool(max_object_size=max_object_size)
    payload = random.Random(size).randbytes(size)
    handles = array("Q", bytes(8 * n))
    mw, rd, fr = [], [], []
    for _ in range(ROUNDS):
        gc.collect()
        malloc, write, read, free = pool.malloc, pool.write, pool.read, pool.free
        t0 = time.perf_counter()
        for i in range(n):
            h = malloc(size)
            write(h, payload)
            handles[i] = h
        t1 = time.perf_counter()
        for h in handles:
            read(h)
        t2 = time.perf_counter()
        for h in handles:
            free(h)
        t3 = time.perf_counter()
        mw.append(t1 - t0)
        rd.append(t2 - t1)
        fr.append(t3 - t2)
        assert pool.stats().objects == 0
    t_mw, t_rd, t_fr = (statistics.median(x) for x in (mw, rd, fr))
    return {
        "max_object_size": max_object_size, "size": size, "objects": n,
        "malloc_write_ops": n / t_mw, "read_ops": n / t_rd, "free_ops": n / t_fr,
        "malloc_write_free_ops": n / (t_mw + t_fr),
    }


def seed_scenario(n: int, seed: int = 20150101) -> dict[str, float]:
    """Fill with n objects of 1..4096 bytes, free a random half, compact."""
    r = random.Random(seed)
    src = r.randbytes(1 << 21)
    src += src[:4096]
    pool = Pool(max_object_size=4096)
    handles = array("Q", bytes(8 * n))
    malloc, write = pool.malloc, pool.write
    t0 = time.perf_counter()
    for i in range(n):
        size = r.randint(1, 4096)
        off = r.randrange(1 << 21)
        h = malloc(size)
        write(h, src[off:off + size])
        handles[i] = h
    t_fill = time.perf_counter() - t0
    frag_full = pool.stats().frag_ratio
    order = list(range(n))
    r.shuffle(order)
    for i in order[:n // 2]:
        pool.free(handles[i])
        handles[i] = 0
    live = [h for h in handles if h]
    before = pool.stats()
    table = getattr(pool, "_handles", None)      # to count what compaction moved
    snapshot = array("Q", table) if table is not None else None
    gc.collect()
    t0 = time.perf_counter()
    freed = pool.compact()
    t_compact = time.perf_counter() - t0
    after = pool.stats()
    if snapshot is not None:
        moved = [h for h in live if table[h] != snapshot[h]]
        moved_objects = len(moved)
        moved_bytes = sum(pool.size(h) for h in moved)
        how = "exact (handle-table entries that changed)"
    else:   # estimate: every object of a class that had something to free
        rows = {c.index for c in before.classes if c.freeable}
        moved_objects = sum(c.obj_used for c in before.classes if c.index in rows)
        moved_bytes = int(before.obj_bytes * moved_objects / max(1, before.objects))
        how = "estimate (objects of compacted classes)"
    return {
        "objects": n, "fill_s": t_fill, "frag_full": frag_full,
        "frag_before": before.frag_ratio, "frag_after": after.frag_ratio,
        "pages_before": before.pages_used, "pages_after": after.pages_used,
        "pages_freed": freed, "compact_s": t_compact,
        "moved_objects": moved_objects, "moved_bytes": moved_bytes, "moved_count": how,
        "compact_mb_s": moved_bytes / 1e6 / t_compact if t_compact else float("inf"),
        "compact_pages_s": freed / t_compact if t_compact else float("inf"),
    }


def metadata_per_object(sizes: array) -> dict[str, float]:
    """tracemalloc growth per live object while filling a fresh pool with ``sizes``."""
    n = len(sizes)
    handles = array("Q", bytes(8 * n))       # the caller's handles: before the baseline
    payload = bytes(4096)
    gc.collect()
    tracemalloc.start()
    base = tracemalloc.get_traced_memory()[0]
    pool = Pool(max_object_size=4096)
    empty = tracemalloc.get_traced_memory()[0] - base
    malloc, write = pool.malloc, pool.write
    for i in range(n):
        size = sizes[i]
        h = malloc(size)
        write(h, payload[:size])
        handles[i] = h
    gc.collect()
    used = tracemalloc.get_traced_memory()[0] - base
    tracemalloc.stop()
    s = pool.stats()
    return {
        "objects": n, "zspages": sum(c.pages_used // c.pages_per_zspage for c in s.classes),
        "pool_empty_bytes": empty, "traced_bytes": used,
        "bytes_per_object": used / n,
        "bytes_per_object_excl_empty_pool": (used - empty) / n,
    }


def fmt(x: float) -> str:
    return f"{x:,.0f}"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--json", metavar="PATH", help="also write the results as JSON")
    ap.add_argument("--objects", type=int, default=BATCH_OBJECTS,
                    help="objects per batch (capped at %d MiB per batch)" % (BATCH_BYTES >> 20))
    ap.add_argument("--seed-objects", type=int, default=240_000,
                    help="objects in the seed scenario")
    args = ap.parse_args(argv)

    results: dict = {
        "python": platform.python_version(), "machine": platform.machine(),
        "cpus": os.cpu_count(), "rounds": ROUNDS,
    }
    print(f"# zsmalloc allocator benchmark (Python {platform.python_version()}, "
          f"{os.cpu_count()} CPUs, medians of {ROUNDS} batches)\n")

    rows = []
    print("| max_object_size | object size | objects/batch | malloc+write ops/s "
          "| read ops/s | free ops/s | malloc+write+free ops/s |")
    print("|---:|---:|---:|---:|---:|---:|---:|")
    for max_size, size in CASES:
        n = max(1000, min(args.objects, BATCH_BYTES // size))
        row = batch_rates(max_size, size, n)
        rows.append(row)
        print(f"| {max_size} | {size} | {n:,} | {fmt(row['malloc_write_ops'])} "
              f"| {fmt(row['read_ops'])} | {fmt(row['free_ops'])} "
              f"| {fmt(row['malloc_write_free_ops'])} |", flush=True)
    results["batches"] = rows

    seed = seed_scenario(args.seed_objects)
    results["seed_scenario"] = seed
    print(f"\n## Seed scenario: {seed['objects']:,} objects of 1..4096 bytes, "
          "a random half freed, then compact()\n")
    print("| | value |")
    print("|---|---:|")
    print(f"| frag ratio after filling | {seed['frag_full']:.3f} |")
    print(f"| frag ratio after freeing half (before compaction) | {seed['frag_before']:.3f} |")
    print(f"| frag ratio after compaction | {seed['frag_after']:.3f} |")
    print(f"| pages before / after | {seed['pages_before']:,} / {seed['pages_after']:,} |")
    print(f"| compaction time | {seed['compact_s']:.3f} s |")
    print(f"| objects moved | {seed['moved_objects']:,} ({seed['moved_bytes'] / 1e6:.1f} MB; "
          f"{seed['moved_count']}) |")
    print(f"| compaction speed | {seed['compact_mb_s']:.0f} MB/s moved, "
          f"{fmt(seed['compact_pages_s'])} pages/s freed |", flush=True)

    rng = random.Random(7)
    n_meta = 100_000
    meta_1k = metadata_per_object(array("H", [1024]) * n_meta)
    meta_mixed = metadata_per_object(array("H", (rng.randint(1, 4096) for _ in range(n_meta))))
    results["metadata"] = {"1KiB": meta_1k, "mixed": meta_mixed}
    print("\n## Python metadata per live object (tracemalloc)\n")
    print("| fill | objects | zspages | traced bytes | bytes/object |")
    print("|---|---:|---:|---:|---:|")
    for name, m in (("1 KiB objects", meta_1k), ("mixed 1..4096", meta_mixed)):
        print(f"| {name} | {m['objects']:,} | {m['zspages']:,} | {fmt(m['traced_bytes'])} "
              f"| {m['bytes_per_object']:.1f} |")

    one_k = next(r for r in rows if r["size"] == 1024 and r["max_object_size"] == 4096)
    targets = [
        ("malloc+write+free of 1 KiB objects, ops/s", f">= {TARGET_OPS:,}",
         fmt(one_k["malloc_write_free_ops"]), one_k["malloc_write_free_ops"] >= TARGET_OPS),
        ("metadata per live object, 1 KiB fill, bytes", f"<= {TARGET_META}",
         f"{meta_1k['bytes_per_object']:.1f}", meta_1k["bytes_per_object"] <= TARGET_META),
        ("metadata per live object, mixed fill, bytes", f"<= {TARGET_META}",
         f"{meta_mixed['bytes_per_object']:.1f}", meta_mixed["bytes_per_object"] <= TARGET_META),
        ("seed scenario frag ratio before compaction", "< 0.7",
         f"{seed['frag_before']:.3f}", seed["frag_before"] < 0.7),
        ("seed scenario frag ratio after compaction", ">= 0.97",
         f"{seed['frag_after']:.3f}", seed["frag_after"] >= 0.97),
    ]
    results["targets"] = [{"metric": m, "target": t, "reached": v, "met": ok}
                          for m, t, v, ok in targets]
    print("\n## Targets (issue 2)\n")
    print("| metric | target | reached | met |")
    print("|---|---:|---:|:---:|")
    for m, t, v, ok in targets:
        print(f"| {m} | {t} | {v} | {'yes' if ok else 'NO'} |")

    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")
        print(f"\nresults written to {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
