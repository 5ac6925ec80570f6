"""The chunk store: file contents as maps of compressed chunks held in a Pool.

A file's data is cut into ``chunk_size`` pieces. Chunk ``i`` covers bytes
``[i * chunk_size, (i + 1) * chunk_size)`` and holds *content*: the first ``length``
bytes of that range, the rest of the range reading as zeros. A chunk map only has
entries for chunks that got data, so holes cost nothing and a map costs memory in
proportion to the chunks stored, never to the file size.

An entry is one int: ``payload << 19 | length << 2 | kind``, where the payload is a
pool handle (zstd or raw chunks), the fill word (same-filled chunks, which take no
pool memory at all) or a staging slot. Truncation only lowers ``length``: the
object keeps its stale tail until the chunk is next written, so shrinking a file
never needs to allocate and cannot fail.

Writes are *staged*: a write keeps the new content of each chunk uncompressed and
answers at once, and a background task compresses staged chunks in batches on
native threads while the trio thread serves the next requests. This is what lets
a single writer use both cores (the kernel sends it one request at a time). The
memory limit still holds at write time: staging a chunk first reserves the pool
pages its object could take in the worst case, so data that was accepted can
always be stored. When that reservation does not fit, the write waits for the
staged chunks to be stored (which returns their unused reservations) and, if
there is still no room, stores its chunk itself, exactly as much as the pool
holds: then a write that hits ``mem_limit`` or the logical capacity (``size=``)
stores nothing and leaves the file's earlier bytes as they were, and one that
fails part-way reports the bytes it stored before the failure. When the pool is
full but compaction could free pages, the store compacts once and retries before
giving up (zram's reason for compaction in the first place). Every new object is
allocated before the old one is freed. ``flush()`` (fsync) waits until nothing is
staged.

Concurrency: the store runs on the trio thread except for the compression of a
batch, which works on contents that are never modified (a rewrite replaces a
staged content and bumps its version; a stale result is dropped). Writes and
truncates are serialized by one lock, since a write may ``await`` (backpressure,
compaction); reads are not: a read sees each chunk either before or after a change.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Awaitable, Callable

import trio

from .codec import FILL_WORD, Buffer, Codec, Encoding, Payload, fill_bytes
from .zsmalloc import Pool, PoolFull

_LEN_SHIFT = 2
_PAYLOAD_SHIFT = 19
_LEN_MASK = (1 << 17) - 1
_KIND_MASK = 3
_STAGED = 3                    # the entry kind beside Encoding's three: payload = staging slot

STAGING_LIMIT = 8 << 20        # staged bytes past which a write waits for the compressors
BATCH_BYTES = 1 << 20          # staged bytes compressed in one call
GATHER_SECONDS = 0.010         # how long a small batch waits for more (random writes, small files)
COMPRESSORS = 2                # batches compressed at once, one thread each: one commits
                               # on the trio thread while the other compresses


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


class _Staged:
    """A chunk's accepted content, waiting to be compressed into the pool.

    ``content`` is never modified once set (a compression thread may be reading
    it): a rewrite replaces it and bumps ``version``. ``old`` is the entry the
    chunk had before it was staged, whose object is freed only when the new one
    is stored; ``pages`` is the pool reservation that guarantees that it can be.
    """

    __slots__ = ("cmap", "index", "content", "version", "old", "pages")

    def __init__(self, cmap: ChunkMap, index: int, content: Buffer, old: int | None,
                 pages: int) -> None:
        self.cmap = cmap
        self.index = index
        self.content = content
        self.version = 0
        self.old = old
        self.pages = pages


@dataclass(frozen=True)
class StoreStats:
    """Counters of the chunk store.

    Attributes:
        orig_bytes: logical bytes of chunk contents held (zram's orig_data_size).
        chunks: chunks held; same_chunks: of them same-filled (no pool memory);
        huge_chunks: of them stored uncompressed;
        huge_chunks_since: chunks ever stored uncompressed (zram's huge_pages_since).
        staged_bytes: of orig_bytes, bytes accepted but not compressed yet.
    """

    orig_bytes: int
    chunks: int
    same_chunks: int
    huge_chunks: int
    huge_chunks_since: int
    staged_bytes: int


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
        self._idle_codecs = [Codec(level, pool.huge_class_size, threads=1)
                             for _ in range(COMPRESSORS)]        # one per running batch
        self.orig_bytes = 0
        self.chunks = 0
        self.same_chunks = 0
        self.huge_chunks = 0
        self.huge_chunks_since = 0
        self.staged_bytes = 0
        self._staged: dict[int, _Staged] = {}
        self._pending: dict[int, None] = {}          # slots to compress, oldest first
        self._next_slot = 1
        self._work = trio.Event()                    # set when something is staged
        self._batch_end = trio.Event()               # set (and replaced) when a batch ends
        self._write_lock = trio.Lock()

    def stats(self) -> StoreStats:
        return StoreStats(self.orig_bytes, self.chunks, self.same_chunks, self.huge_chunks,
                          self.huge_chunks_since, self.staged_bytes)

    # -- reading ------------------------------------------------------------------

    def _content(self, entry: int) -> Buffer:
        """The chunk's content, exactly ``length`` bytes."""
        kind = entry & _KIND_MASK
        length = (entry >> _LEN_SHIFT) & _LEN_MASK
        payload = entry >> _PAYLOAD_SHIFT
        if kind == _STAGED:
            return self._staged[payload].content
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

    async def write(self, cmap: ChunkMap, offset: int, data: Buffer) -> int:
        """Store ``data`` at ``offset``; return the bytes stored.

        Raises:
            NoSpace: not even the first chunk could be stored.
        """
        if not isinstance(data, bytes):
            data = bytes(data)        # staged contents are views of it: it must not change
        await self._lock()
        try:
            written = 0
            for idx, content in self._new_contents(cmap, offset, memoryview(data)):
                try:
                    if not self._stage(cmap, idx, content):
                        await self.flush()
                        if not self._stage(cmap, idx, content):
                            await self._store_now(cmap, idx, content)
                except NoSpace:
                    if written:
                        break
                    raise
                written += self._covered(offset, len(data), idx)
            while self.staged_bytes > STAGING_LIMIT:
                await self._flush_step()
            return written
        finally:
            self._write_lock.release()

    async def _lock(self) -> None:
        """Take the write lock, without a trip through the scheduler when it is free.

        (``Lock.acquire`` always yields; that is a scheduler pass per request.)
        """
        try:
            self._write_lock.acquire_nowait()
        except trio.WouldBlock:
            await self._write_lock.acquire()

    def _stage(self, cmap: ChunkMap, idx: int, content: Buffer) -> bool:
        """Accept ``content`` as chunk ``idx``'s new content, to be compressed later.

        Returns False, changing nothing, when the pool cannot reserve the room the
        content might need. Raises NoSpace past the logical capacity.
        """
        entry = cmap.get(idx)
        length = len(content)
        old_len = 0 if entry is None else (entry >> _LEN_SHIFT) & _LEN_MASK
        if self.capacity and self.orig_bytes - old_len + length > self.capacity:
            raise NoSpace("file system full (size=)")
        pages = self.pool.worst_case_pages(length)
        if entry is not None and entry & _KIND_MASK == _STAGED:
            slot = entry >> _PAYLOAD_SHIFT
            staged = self._staged[slot]
            if pages > staged.pages:
                try:
                    self.pool.reserve(pages - staged.pages)
                except PoolFull:
                    return False
                staged.pages = pages
            grown = length - len(staged.content)
            staged.content = content
            staged.version += 1
        else:
            try:
                self.pool.reserve(pages)
            except PoolFull:
                return False
            if entry is not None:
                self._uncount(cmap, entry)
            slot = self._next_slot
            self._next_slot += 1
            self._staged[slot] = _Staged(cmap, idx, content, entry, pages)
            self.chunks += 1
            grown = length
        self.staged_bytes += grown
        cmap.stored_bytes += grown
        self.orig_bytes += grown
        cmap[idx] = (slot << _PAYLOAD_SHIFT) | (length << _LEN_SHIFT) | _STAGED
        self._pending[slot] = None
        self._work.set()
        return True

    async def _store_now(self, cmap: ChunkMap, idx: int, content: Buffer) -> None:
        """Compress and store one chunk in the request: the pool is (nearly) full."""
        kind, payload = self.codec.encode(content)
        try:
            self._commit(cmap, idx, len(content), kind, payload)
        except PoolFull:
            if self.make_room is None or not self.pool.freeable():
                raise NoSpace("memory limit reached (mem_limit=)") from None
            await self.make_room()
            try:
                self._commit(cmap, idx, len(content), kind, payload)
            except PoolFull:
                raise NoSpace("memory limit reached (mem_limit=)") from None

    # -- the compressor ---------------------------------------------------------------

    async def run(self) -> None:
        """Compress staged chunks in the background, forever (a task of the daemon)."""
        async with trio.open_nursery() as nursery:
            for _ in range(COMPRESSORS):
                nursery.start_soon(self._compressor)

    async def _compressor(self) -> None:
        while True:
            while not self._pending:
                if self._work.is_set():
                    self._work = trio.Event()
                await self._work.wait()
            if self.staged_bytes < BATCH_BYTES:
                await trio.sleep(GATHER_SECONDS)
            await self._flush_step()

    @property
    def _batches(self) -> int:
        """Batches being compressed: each holds one of the compressors' codecs."""
        return COMPRESSORS - len(self._idle_codecs)

    async def flush(self) -> None:
        """Return when every chunk staged before the call is compressed and stored.

        What fsync waits for. Chunks staged meanwhile (another writer) do not keep
        it waiting.
        """
        waiting = set(self._staged)
        while waiting:
            await self._flush_step()
            waiting.intersection_update(self._staged)

    async def _flush_step(self) -> None:
        """Compress a batch if a compressor is free, else wait for a running batch to end."""
        if not (self._pending and self._idle_codecs):
            if self._batches:
                await self._batch_end.wait()
            elif self._staged:
                # Every staged chunk is queued or in a running batch: callers loop on
                # this step, so a broken promise must not spin the event loop.
                raise RuntimeError(f"{len(self._staged)} staged chunks are neither queued "
                                   f"nor being compressed")
            return
        codec = self._idle_codecs.pop()
        try:
            await self._compress_batch(codec)
        finally:
            self._idle_codecs.append(codec)
            ended, self._batch_end = self._batch_end, trio.Event()
            ended.set()

    async def _compress_batch(self, codec: Codec) -> None:
        batch = []
        size = 0
        for slot in self._pending:
            staged = self._staged[slot]
            batch.append((slot, staged, staged.version))
            size += len(staged.content)
            if size >= BATCH_BYTES:
                break
        for slot, _, _ in batch:
            del self._pending[slot]
        contents = [staged.content for _, staged, _ in batch]
        try:
            encoded = await trio.to_thread.run_sync(codec.encode_many, contents)
        except BaseException:
            for slot, _, _ in batch:
                if slot in self._staged:
                    self._pending[slot] = None
            raise
        for (slot, staged, version), (kind, payload) in zip(batch, encoded):
            if self._staged.get(slot) is staged and staged.version == version:
                self._commit_staged(staged, kind, payload)

    def _commit_staged(self, staged: _Staged, kind: Encoding, payload: Payload) -> None:
        """Store a staged chunk's encoded content under its reservation."""
        cmap, idx = staged.cmap, staged.index
        entry = cmap.get(idx)
        assert entry is not None
        value, stored = self._place(kind, payload, staged.pages)
        staged.pages = 0
        self._drop(cmap, entry)
        self._install(cmap, idx, (entry >> _LEN_SHIFT) & _LEN_MASK, kind, value, stored)

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
        value, stored = self._place(kind, payload, 0)
        if old is not None:
            self._drop(cmap, old)
        self._install(cmap, idx, length, kind, value, stored)

    def _place(self, kind: Encoding, payload: Payload, reserved: int) -> tuple[int, int]:
        """Put an encoded content where it lives: (entry payload, bytes it holds).

        ``reserved`` pool pages, if any, are used up (or given back for a fill).
        """
        if kind == Encoding.FILL:
            self.pool.unreserve(reserved)
            return payload, _fill_cost(payload)   # type: ignore[arg-type]
        size = len(payload)                        # type: ignore[arg-type]
        handle = (self.pool.malloc_reserved(size, reserved) if reserved
                  else self.pool.malloc(size))
        self.pool.write(handle, payload)           # type: ignore[arg-type]
        return handle, size

    def _install(self, cmap: ChunkMap, idx: int, length: int, kind: Encoding, value: int,
                 stored: int) -> None:
        cmap[idx] = (value << _PAYLOAD_SHIFT) | (length << _LEN_SHIFT) | kind
        cmap.stored_bytes += stored
        self.orig_bytes += length
        self.chunks += 1
        if kind == Encoding.FILL:
            self.same_chunks += 1
        elif kind == Encoding.RAW:
            self.huge_chunks += 1
            self.huge_chunks_since += 1

    def _drop(self, cmap: ChunkMap, entry: int) -> None:
        """Forget one entry: its counters and its storage (the caller removes or replaces it)."""
        self._uncount(cmap, entry)
        self._free(entry)

    def _uncount(self, cmap: ChunkMap, entry: int) -> None:
        kind = entry & _KIND_MASK
        payload = entry >> _PAYLOAD_SHIFT
        self.orig_bytes -= (entry >> _LEN_SHIFT) & _LEN_MASK
        self.chunks -= 1
        if kind == Encoding.FILL:
            self.same_chunks -= 1
            cmap.stored_bytes -= _fill_cost(payload)
        elif kind == _STAGED:
            held = len(self._staged[payload].content)
            self.staged_bytes -= held
            cmap.stored_bytes -= held
        else:
            cmap.stored_bytes -= self.pool.size(payload)
            if kind == Encoding.RAW:
                self.huge_chunks -= 1

    def _free(self, entry: int) -> None:
        """Free what an uncounted entry holds: its object, or its staging and what that kept."""
        kind = entry & _KIND_MASK
        payload = entry >> _PAYLOAD_SHIFT
        if kind == _STAGED:
            staged = self._staged.pop(payload)
            self._pending.pop(payload, None)
            self.pool.unreserve(staged.pages)
            if staged.old is not None:
                self._free(staged.old)
        elif kind != Encoding.FILL:
            self.pool.free(payload)

    # -- truncating and freeing ----------------------------------------------------

    async def truncate(self, cmap: ChunkMap, size: int) -> None:
        """Drop the contents at and beyond ``size``."""
        await self._lock()
        try:
            cs = self.chunk_size
            for idx in [i for i in cmap.indexes() if i * cs >= size]:
                self._drop(cmap, cmap.pop(idx))
            idx, keep = divmod(size, cs)
            entry = cmap.get(idx)
            if entry is None or (entry >> _LEN_SHIFT) & _LEN_MASK <= keep:
                return
            cut = ((entry >> _LEN_SHIFT) & _LEN_MASK) - keep
            self.orig_bytes -= cut
            cmap[idx] = entry & ~(_LEN_MASK << _LEN_SHIFT) | (keep << _LEN_SHIFT)
            if entry & _KIND_MASK == _STAGED:
                # A staged content is exactly its chunk's length: cut it, compress again.
                slot = entry >> _PAYLOAD_SHIFT
                staged = self._staged[slot]
                staged.content = staged.content[:keep]
                staged.version += 1
                self.staged_bytes -= cut
                cmap.stored_bytes -= cut
                self._pending[slot] = None
                self._work.set()
        finally:
            self._write_lock.release()

    def release(self, cmap: ChunkMap) -> None:
        """Free every chunk of a file that is gone."""
        for entry in cmap.entries():
            self._drop(cmap, entry)
        cmap.clear()
