"""Which chunk_size and zstd level should zsfs default to? Measure them on a corpus.

For every (chunk_size, level) pair, stores each file of CORPUS_DIR the way the chunk
store does (same-fill detection, zstd, raw above the pool's huge watermark) in a
fresh Pool, then reports memory efficiency (file bytes per byte of pool pages) and
single-thread encode and decode throughput. No FUSE involved: this isolates the
codec and allocator from request overhead.

    python tools/bench_chunking.py CORPUS_DIR [--sizes 16k,32k,64k] [--levels 1,3]
"""

from __future__ import annotations

import argparse
import os
import time

from zsfs.codec import Codec, Encoding
from zsfs.zsmalloc import Pool


def corpus_files(root: str) -> list[bytes]:
    blobs = []
    for dirpath, _, names in sorted(os.walk(root)):
        for name in sorted(names):
            path = os.path.join(dirpath, name)
            if os.path.isfile(path) and not os.path.islink(path):
                with open(path, "rb") as f:
                    blobs.append(f.read())
    return blobs


def measure(blobs: list[bytes], chunk_size: int, level: int) -> dict[str, float]:
    pool = Pool(max_object_size=chunk_size)
    codec = Codec(level, raw_threshold=pool.huge_class_size)
    stored = []
    total = 0
    start = time.perf_counter()
    for blob in blobs:
        view = memoryview(blob)
        for off in range(0, len(blob), chunk_size):
            chunk = view[off:off + chunk_size]
            kind, payload = codec.encode(chunk)
            total += len(chunk)
            if kind == Encoding.FILL:
                continue
            handle = pool.malloc(len(payload))
            pool.write(handle, payload)
            stored.append((handle, kind))
    encode_s = time.perf_counter() - start
    start = time.perf_counter()
    for handle, kind in stored:
        data = pool.read(handle)
        if kind == Encoding.ZSTD:
            codec.decompress(data)
    decode_s = time.perf_counter() - start
    stats = pool.stats()
    return {
        "chunk_size": chunk_size, "level": level, "file_bytes": total,
        "mem_used": stats.mem_used, "obj_bytes": stats.obj_bytes,
        "bytes_per_byte": total / stats.mem_used,
        "frag_ratio": stats.frag_ratio,
        "encode_mb_s": total / encode_s / 1e6, "decode_mb_s": total / decode_s / 1e6,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("corpus")
    parser.add_argument("--sizes", default="4k,16k,32k,64k")
    parser.add_argument("--levels", default="-1,1,3")
    args = parser.parse_args()
    sizes = [int(s.rstrip("k")) * 1024 for s in args.sizes.split(",")]
    levels = [int(x) for x in args.levels.split(",")]
    blobs = corpus_files(args.corpus)
    print(f"{len(blobs)} files, {sum(map(len, blobs)) / 1e6:.1f} MB\n")
    print("| chunk | level | file bytes / pool byte | frag ratio | encode MB/s | decode MB/s |")
    print("|---|---|---|---|---|---|")
    for size in sizes:
        for level in levels:
            r = measure(blobs, size, level)
            print(f"| {size // 1024} KiB | {level} | {r['bytes_per_byte']:.2f} | "
                  f"{r['frag_ratio'] * 100:.1f}% | {r['encode_mb_s']:.0f} | {r['decode_mb_s']:.0f} |",
                  flush=True)


if __name__ == "__main__":
    main()
