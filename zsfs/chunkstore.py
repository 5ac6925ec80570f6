"""The chunk store: file contents as maps of compressed chunks held in a Pool.

A file's data is cut into ``chunk_size`` pieces. Chunk ``i`` covers bytes
``[i * chunk_size, (i + 1) * chunk_size)`` and holds *content*: the first ``length``
bytes of that range, the rest of the range reading as zeros. A chunk map only has
entries for chunks that got data, so holes cost nothing and a map costs memory in
proportion to the chunks stored, never to the file size.

An entry is one int: ``payload << 19 | length << 2 | encoding``, where the payload
is a pool handle (zstd or raw chunks) or the fill word (same-filled chunks, which
take no pool memory at all). Truncation only lowers ``length``: the object keeps
its stale tail until the chunk is next written, so shrinking a file never needs to
allocate and cannot fail.

Writes encode first and allocate last. Each new object is allocated before the
old one is freed, so a write that hits ``mem_limit`` (``PoolFull``) or the
logical capacity (``NoSpace``) leaves the file's earlier bytes exactly as they
were; a write that fails part-way reports the bytes it stored before the failure.
When the pool is full but compaction could free pages, the store compacts once
and retries before giving up (zram's reason for compaction in the first place).

Concurrency: the store runs on the trio thread; a request spanning several chunks
has zstd (de)compress them on two native threads in one call (codec.py). A write
may ``await`` a compaction between gathering old contents and committing new
objects, so writes and truncates are serialized by one lock (reads are not: a read
sees each chunk either before or after it commits).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Awaitable, Callable

import trio

from .codec import FILL_WORD, Codec, Encoding, Payload, fill_bytes
from .zsmalloc import Pool, PoolFull

_LEN_SHIFT = 2
_PAYLOAD_SHIFT = 19
_LEN_MASK = (1 << 17) - 1
_KIND_MASK = 3


def _fill_cost(word: int) -> int:
    """Bytes a fill entry counts in ``stored_bytes``: its word, unless it is zero.

    A file of, say, 0xab bytes must not show zero blocks: archivers (``tar -S``)
    take a non-empty file with ``st_blocks == 0`` for one big hole and skip reading it.
    """
    return FILL_WORD if word else 0


class NoSpace(Exception):
    """The write would pass the logical capacity (``size=``) or the memory limit."""


class ChunkMap:
    """The chunks of one file: chunk index -> entry, and the bytes of RAM they hold.

    Most files have one chunk, and a one-entry dict costs 224 bytes, several times
    the chunk's own bookkeeping; so a single entry is kept inline and a dict is made
    only for a second one.
    """

    __slots__ = ("_index", "_entry", "_dict", "stored_bytes")

    def __init__(self) -> None:
        self._index = -1                      # the inline entry's chunk, -1 for none
        self._entry = 0
        self._dict: dict[int, int] | None = None
        self.stored_bytes = 0

    def get(self, index: int) -> int | None:
        if self._dict is not None:
            return self._dict.get(index)
        return self._entry if index == self._index else None

    def __setitem__(self, index: int, entry: int) -> None:
        if self._dict is not None:
            self._dict[index] = entry
        elif self._index < 0 or self._index == index:
            self._index, self._entry = index, entry
        else:
            self._dict = {self._index: self._entry, index: entry}
            self._index = -1

    def pop(self, index: int) -> int:
        if self._dict is None:
            if index != self._index:
                raise KeyError(index)
            self._index = -1
            return self._entry
        entry = self._dict.pop(index)
        if len(self._dict) == 1:
            ((self._index, self._entry),) = self._dict.items()
            self._dict = None
        return entry

    def indexes(self) -> list[int]:
        if self._dict is not None:
            return list(self._dict)
        return [self._index] if self._index >= 0 else []

    def entries(self) -> list[int]:
        if self._dict is not None:
            return list(self._dict.values())
        return [self._entry] if self._index >= 0 else []

    def __len__(self) -> int:
        return len(self._dict) if self._dict is not None else int(self._index >= 0)

    def clear(self) -> None:
        self._index = -1
        self._dict = None


@dataclass(frozen=True)
class StoreStats:
    """Counters of the chunk store.

    Attributes:
        orig_bytes: logical bytes of chunk contents held (zram's orig_data_size).
        chunks: chunks held; same_chunks: of them same-filled (no pool memory);
        huge_chunks: of them stored uncompressed;
        huge_chunks_since: chunks ever stored uncompressed (zram's huge_pages_since).
    """

    orig_bytes: int
    chunks: int
    same_chunks: int
    huge_chunks: int
    huge_chunks_since: int


class ChunkStore:
    """Files as chunk maps over a Pool.

    Args:
        pool: where compressed chunks live; its max_object_size must be >= chunk_size.
        chunk_size: bytes per chunk, a power of two.
        level: zstd level.
        capacity: logical bytes the store may hold (0 = unlimited).
        make_room: compacts the pool (in slices) when an allocation hits mem_limit.
    """

    def __init__(self, pool: Pool, chunk_size: int, level: int, capacity: int = 0,
                 make_room: Callable[[], Awaitable[object]] | None = None) -> None:
        if chunk_size > pool.max_object_size:
            raise ValueError("chunk_size exceeds the pool's max_object_size")
        self.pool = pool
        self.chunk_size = chunk_size
        self.capacity = capacity
        self.make_room = make_room
        self.codec = Codec(level, raw_threshold=pool.huge_class_size)
        self.orig_bytes = 0
        self.chunks = 0
        self.same_chunks = 0
        self.huge_chunks = 0
        self.huge_chunks_since = 0
        self._write_lock = trio.Lock()

    def stats(self) -> StoreStats:
        return StoreStats(self.orig_bytes, self.chunks, self.same_chunks, self.huge_chunks,
                          self.huge_chunks_since)

    # -- reading ------------------------------------------------------------------

    def _content(self, entry: int) -> bytes | memoryview:
        """The chunk's content, exactly ``length`` bytes."""
        kind = entry & _KIND_MASK
        length = (entry >> _LEN_SHIFT) & _LEN_MASK
        payload = entry >> _PAYLOAD_SHIFT
        if kind == Encoding.FILL:
            return fill_bytes(payload, length)
        data = self.pool.read(payload)
        if kind == Encoding.ZSTD:
            data = self.codec.decompress(data)
        return data if len(data) == length else data[:length]

    def read(self, cmap: ChunkMap, offset: int, length: int) -> bytes | bytearray:
        """``length`` bytes at ``offset`` (the caller clips to the file size)."""
        cs = self.chunk_size
        first = offset // cs
        in_chunk = offset - first * cs
        get = cmap.get
        if in_chunk + length <= cs:
            entry = get(first)
            if entry is None:
                return bytes(length)
            content = self._content(entry)
            piece = bytes(content[in_chunk:in_chunk + length])
            return piece + bytes(length - len(piece)) if len(piece) < length else piece
        out = bytearray(length)
        compressed = []   # (position in out, offset in chunk, bytes wanted, entry)
        pos = 0
        idx = first
        while pos < length:
            n = min(cs - in_chunk, length - pos)
            entry = get(idx)
            if entry is None:
                pass
            elif entry & _KIND_MASK == Encoding.ZSTD:
                compressed.append((pos, in_chunk, n, entry))
            else:
                piece = self._content(entry)[in_chunk:in_chunk + n]
                out[pos:pos + len(piece)] = piece
            pos += n
            in_chunk = 0
            idx += 1
        if compressed:
            frames = [self.pool.read(entry >> _PAYLOAD_SHIFT) for *_, entry in compressed]
            for (pos, in_chunk, n, entry), content in zip(compressed,
                                                          self.codec.decompress_many(frames)):
                end = min(in_chunk + n, (entry >> _LEN_SHIFT) & _LEN_MASK)
                if end > in_chunk:
                    out[pos:pos + end - in_chunk] = memoryview(content)[in_chunk:end]
        return out

    # -- writing ------------------------------------------------------------------

    async def write(self, cmap: ChunkMap, offset: int, data: bytes | memoryview) -> int:
        """Store ``data`` at ``offset``; return the bytes stored.

        Raises:
            NoSpace: not even the first chunk could be stored.
        """
        async with self._write_lock:
            pieces = self._new_contents(cmap, offset, memoryview(data).cast("B"))
            encoded = self.codec.encode_many([content for _, content in pieces])
            written = 0
            for (idx, content), (kind, payload) in zip(pieces, encoded):
                try:
                    try:
                        self._commit(cmap, idx, len(content), kind, payload)
                    except PoolFull:
                        await self._commit_after_making_room(cmap, idx, len(content), kind, payload)
                except NoSpace:
                    if written:
                        break
                    raise
                written += self._covered(offset, len(data), idx)
            return written

    async def _commit_after_making_room(self, cmap: ChunkMap, idx: int, length: int,
                                        kind: Encoding, payload: Payload) -> None:
        """The pool was full: if compaction can free pages, compact and commit again."""
        if self.make_room is None or not self.pool.freeable():
            raise NoSpace("memory limit reached (mem_limit=)")
        await self.make_room()
        try:
            self._commit(cmap, idx, length, kind, payload)
        except PoolFull:
            raise NoSpace("memory limit reached (mem_limit=)") from None

    def _covered(self, offset: int, length: int, idx: int) -> int:
        """Bytes of the write ``[offset, offset + length)`` that fall in chunk ``idx``."""
        start = max(offset, idx * self.chunk_size)
        end = min(offset + length, (idx + 1) * self.chunk_size)
        return end - start

    def _new_contents(self, cmap: ChunkMap, offset: int,
                      data: memoryview) -> list[tuple[int, memoryview | bytearray]]:
        """The new content of each chunk the write touches (read-modify-write at the edges)."""
        cs = self.chunk_size
        pieces = []
        pos = 0
        end = len(data)
        while pos < end:
            idx, in_chunk = divmod(offset + pos, cs)
            n = min(cs - in_chunk, end - pos)
            entry = cmap.get(idx)
            old_len = 0 if entry is None else (entry >> _LEN_SHIFT) & _LEN_MASK
            if in_chunk == 0 and n >= old_len:
                content: memoryview | bytearray = data[pos:pos + n]
            else:
                content = bytearray(max(old_len, in_chunk + n))
                if entry is not None:
                    content[:old_len] = self._content(entry)
                content[in_chunk:in_chunk + n] = data[pos:pos + n]
            pieces.append((idx, content))
            pos += n
        return pieces

    def _commit(self, cmap: ChunkMap, idx: int, length: int, kind: Encoding,
                payload: Payload) -> None:
        """Replace chunk ``idx`` with an encoded content: allocate new, then free old.

        Raises NoSpace (capacity) or PoolFull (mem_limit) with nothing changed.
        """
        old = cmap.get(idx)
        old_len = 0 if old is None else (old >> _LEN_SHIFT) & _LEN_MASK
        if self.capacity and self.orig_bytes - old_len + length > self.capacity:
            raise NoSpace("file system full (size=)")
        if kind == Encoding.FILL:
            value = payload
            stored = _fill_cost(value)
        else:
            value = self._store(payload)
            stored = len(payload)
        if old is not None:
            self._drop(cmap, old)
        cmap[idx] = (value << _PAYLOAD_SHIFT) | (length << _LEN_SHIFT) | kind
        cmap.stored_bytes += stored
        self.orig_bytes += length
        self.chunks += 1
        if kind == Encoding.FILL:
            self.same_chunks += 1
        elif kind == Encoding.RAW:
            self.huge_chunks += 1
            self.huge_chunks_since += 1

    def _store(self, payload: Payload) -> int:
        handle = self.pool.malloc(len(payload))
        self.pool.write(handle, payload)
        return handle

    def _drop(self, cmap: ChunkMap, entry: int) -> None:
        """Forget one entry's storage and counters (the caller removes or replaces it)."""
        kind = entry & _KIND_MASK
        self.orig_bytes -= (entry >> _LEN_SHIFT) & _LEN_MASK
        self.chunks -= 1
        if kind == Encoding.FILL:
            self.same_chunks -= 1
            cmap.stored_bytes -= _fill_cost(entry >> _PAYLOAD_SHIFT)
            return
        handle = entry >> _PAYLOAD_SHIFT
        cmap.stored_bytes -= self.pool.size(handle)
        self.pool.free(handle)
        if kind == Encoding.RAW:
            self.huge_chunks -= 1

    # -- truncating and freeing ----------------------------------------------------

    async def truncate(self, cmap: ChunkMap, size: int) -> None:
        """Drop the contents at and beyond ``size``."""
        async with self._write_lock:
            cs = self.chunk_size
            for idx in [i for i in cmap.indexes() if i * cs >= size]:
                self._drop(cmap, cmap.pop(idx))
            idx, keep = divmod(size, cs)
            entry = cmap.get(idx)
            if entry is not None and (entry >> _LEN_SHIFT) & _LEN_MASK > keep:
                self.orig_bytes -= ((entry >> _LEN_SHIFT) & _LEN_MASK) - keep
                cmap[idx] = entry & ~(_LEN_MASK << _LEN_SHIFT) | (keep << _LEN_SHIFT)

    def release(self, cmap: ChunkMap) -> None:
        """Free every chunk of a file that is gone."""
        for entry in cmap.entries():
            self._drop(cmap, entry)
        cmap.clear()
