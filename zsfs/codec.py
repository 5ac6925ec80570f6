"""Chunk encoding: same-filled detection and zstd compression.

A chunk is encoded one of three ways, cheapest first:

* *fill*: every 8-byte word is the same (all zeros included). zram calls these
  ``same_pages`` and stores only the word; so do we.
* *zstd*: a zstd frame with the content size in its header, so decompression
  needs no side information.
* *raw*: the chunk as it is, when compressing does not bring it below the pool's
  huge watermark; reading it back then costs no decompression.

Several chunks go through python-zstandard's multi-frame calls, which release the
GIL and can spread the frames over native threads inside one C call. zstd contexts
are not thread-safe, so a Codec serves one thread at a time: the trio thread has
its own (reads, stores at the memory limit), each background compressor another.
"""

from __future__ import annotations

from enum import IntEnum
from typing import Sequence, Union

import zstandard

FILL_WORD = 8
THREADS = 2   # native zstd threads per multi-chunk call made on the trio thread

Buffer = Union[bytes, bytearray, memoryview]
Payload = Union[int, Buffer, "zstandard.BufferSegment"]


class Encoding(IntEnum):
    ZSTD = 0
    RAW = 1
    FILL = 2


def fill_word(chunk: memoryview | bytes) -> int | None:
    """The repeated 8-byte word of a same-filled chunk, as an int, else None."""
    n = len(chunk)
    if n == 0 or n % FILL_WORD:
        return None
    first = bytes(chunk[:FILL_WORD])
    if bytes(chunk[FILL_WORD:2 * FILL_WORD]) not in (first, b""):
        return None
    if bytes(chunk) != first * (n // FILL_WORD):
        return None
    return int.from_bytes(first, "little")


def fill_bytes(word: int, length: int) -> bytes:
    """``length`` bytes of the repeated 8-byte ``word``."""
    pattern = word.to_bytes(FILL_WORD, "little")
    return (pattern * (-(-length // FILL_WORD)))[:length]


class Codec:
    """zstd at one level, with per-thread contexts.

    Args:
        level: zstd compression level (negative levels are zstd's fast modes).
        raw_threshold: compressed sizes at or above this are not worth keeping.
        threads: native threads a multi-chunk call spreads its frames over.
    """

    def __init__(self, level: int, raw_threshold: int, threads: int = THREADS) -> None:
        self.level = level
        self.raw_threshold = raw_threshold
        self.threads = threads
        self._compressor = zstandard.ZstdCompressor(level=level)
        self._decompressor = zstandard.ZstdDecompressor()

    def encode(self, chunk: Buffer) -> tuple[Encoding, Payload]:
        """Choose the cheapest encoding of ``chunk``: (FILL, word) or (ZSTD|RAW, payload)."""
        return self.encode_many([chunk])[0]

    def encode_many(self, chunks: Sequence[Buffer]) -> list[tuple[Encoding, Payload]]:
        """Encode several chunks; zstd compresses them on ``threads`` threads in one C call.

        Handing chunks to Python threads costs tens of microseconds each way;
        python-zstandard's multi-frame API spreads them over native threads instead.
        """
        results: list[tuple[Encoding, Payload]] = [(Encoding.FILL, 0)] * len(chunks)
        todo = []
        for i, chunk in enumerate(chunks):
            word = fill_word(chunk)
            if word is None:
                todo.append(i)
            else:
                results[i] = (Encoding.FILL, word)
        cctx = self._compressor
        if len(todo) > 1:
            frames = cctx.multi_compress_to_buffer([chunks[i] for i in todo], threads=self.threads)
            compressed = [frames[k] for k in range(len(todo))]
        else:
            compressed = [cctx.compress(chunks[i]) for i in todo]
        for i, frame in zip(todo, compressed):
            chunk = chunks[i]
            if len(frame) >= self.raw_threshold or len(frame) >= len(chunk):
                results[i] = (Encoding.RAW, chunk)
            else:
                results[i] = (Encoding.ZSTD, frame)
        return results

    def decompress(self, payload: Buffer) -> bytes:
        return self._decompressor.decompress(payload)

    def decompress_many(self, payloads: Sequence[Buffer]) -> list[Buffer]:
        """Decompress several frames, on ``threads`` native threads when there are several."""
        if len(payloads) < 2:
            return [self.decompress(p) for p in payloads]
        frames = self._decompressor.multi_decompress_to_buffer(payloads, threads=self.threads)
        return [memoryview(frames[k]) for k in range(len(payloads))]
