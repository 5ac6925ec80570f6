"""Chunk encoding: same-filled detection and zstd compression.

A chunk is encoded one of three ways, cheapest first:

* *fill*: every 8-byte word is the same (all zeros included). zram calls these
  ``same_pages`` and stores only the word; so do we.
* *zstd*: a zstd frame with the content size in its header, so decompression
  needs no side information.
* *raw*: the chunk as it is, when compressing does not bring it below the pool's
  huge watermark; reading it back then costs no decompression.

zstd contexts are not thread-safe, so each thread gets its own pair.
"""

from __future__ import annotations

import threading
from enum import IntEnum

import zstandard

FILL_WORD = 8


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
    """

    def __init__(self, level: int, raw_threshold: int) -> None:
        self.level = level
        self.raw_threshold = raw_threshold
        self._local = threading.local()

    def _contexts(self) -> tuple[zstandard.ZstdCompressor, zstandard.ZstdDecompressor]:
        local = self._local
        try:
            return local.contexts
        except AttributeError:
            local.contexts = (zstandard.ZstdCompressor(level=self.level),
                              zstandard.ZstdDecompressor())
            return local.contexts

    def encode(self, chunk: memoryview | bytes) -> tuple[Encoding, int | bytes | memoryview]:
        """Choose the cheapest encoding of ``chunk``: (FILL, word) or (ZSTD|RAW, payload)."""
        word = fill_word(chunk)
        if word is not None:
            return Encoding.FILL, word
        compressed = self._contexts()[0].compress(chunk)
        if len(compressed) >= self.raw_threshold or len(compressed) >= len(chunk):
            return Encoding.RAW, chunk
        return Encoding.ZSTD, compressed

    def decompress(self, payload: memoryview | bytes) -> bytes:
        return self._contexts()[1].decompress(payload)
