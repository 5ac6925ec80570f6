"""The chunk store: file contents as maps of compressed chunks held in a Pool.

A file's data is cut into ``chunk_size`` pieces. Chunk ``i`` covers bytes
``[i * chunk_size, (i + 1) * chunk_size)`` and holds *content*: the first ``length``
bytes of that range, the rest of the range reading as zeros. A chunk map (a number
in ``maps``: chunkmaps.py) only has entries for chunks that got data, so holes cost
nothing and a map costs memory in proportion to the chunks stored, never to the
file size.

An entry is one int packing kind, length and payload (``pack_entry``), where the
payload is a pool handle (zstd or raw chunks), the fill word (same-filled chunks,
which take no pool memory at all) or a staging slot. Truncation only lowers ``length``: the
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
allocated before the old one is freed. ``flush()`` (fsync) waits until what was
staged before it is stored.

Idle recompression (recompress.py schedules it) replaces a stored chunk's object
with a smaller one made at a stronger level, maybe with a dictionary: its worker
thread works on *copies* of objects (``Recoding``), and ``commit_recompressed``
stores a result only if the chunk's entry and its object's bytes are still those
that were copied, so whatever happened meanwhile (a write, a truncate, a free, a
compaction, a handle reused) just makes the result stale. Like the compressors'
commits, it changes how a chunk is held, never what it holds: a write that read a
chunk's content before an ``await`` may use it after.

Recompression also *shares* objects: a chunk whose new object would be
byte-identical to one that another chunk got from the same setting (in the same
pass: ``Twins``) takes that object instead of a copy, as copies of files and
files that repeat each other's chunks are common in trees of files (16% of the
benchmark corpus's bytes). A shared object counts its extra references in
``_refs`` and is freed with its last one; since objects never change once
written (a write makes a new one), sharing needs no copy-on-write. Writes do not
look for twins: that would cost the write path a hash per chunk.

Concurrency: the store runs on the trio thread except for the compression of a
batch (staging.py says which contents a thread may read and what that forbids),
recompression (on copies) and the decompression of large reads (on copies).
Writes and truncates are serialized by one lock, since a write may ``await``
(backpressure, compaction); reads are not, and need not be: they never await, so
a read sees each chunk either before or after a change.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from typing import Awaitable, Callable

import trio

from .chunkmaps import ChunkMaps
from .codec import FILL_WORD, Buffer, Codec, Dictionary, Encoding, Payload, fill_bytes
from .recompress import TAG_BITS, Twins, Version, Versions
from .staging import CompressionQueue, Staged
from .zsmalloc import Pool, PoolFull

STAGING_LIMIT = 8 << 20        # staged bytes past which a write waits for the compressors
PARALLEL_READ_BYTES = 256 << 10   # reads at least this long decompress on a worker thread
COMPRESSORS = 2                # batches compressed at once, one thread each: one commits
                               # on the trio thread while the other compresses

# A chunk map entry is one int: payload, tag, length and kind. Kinds 0-2 are the
# codec's encodings as a write stores them (the payload is a pool handle or a fill
# word). Kinds 3-5 are chunks the recompressor has been through (recompress.py), and
# their tag names the recompression Version that did it: ZSTD_DICT is a frame made
# with that version's dictionary, which reading it needs; ZSTD_SEEN and RAW_SEEN are
# read like ZSTD and RAW (a frame without dictionary, recompressed or found small
# enough already; a raw chunk that did not shrink), the tag only says which setting
# has tried them. Kind 6 is free; STAGED's payload is a staging slot.
_KIND_BITS = 3
_LEN_BITS = 17                 # lengths up to 64 KiB inclusive
_TAG_SHIFT = _KIND_BITS + _LEN_BITS
_PAYLOAD_SHIFT = _TAG_SHIFT + TAG_BITS
_KIND_MASK = (1 << _KIND_BITS) - 1
_LEN_MASK = (1 << _LEN_BITS) - 1
TAG_MASK = (1 << TAG_BITS) - 1
ZSTD_DICT = 3
ZSTD_SEEN = 4
RAW_SEEN = 5
STAGED = _KIND_MASK
_FRAMES = frozenset({Encoding.ZSTD, ZSTD_DICT, ZSTD_SEEN})    # kinds held as zstd frames
_RAWS = frozenset({Encoding.RAW, RAW_SEEN})                   # kinds held uncompressed
_FRESH = frozenset({Encoding.ZSTD, Encoding.RAW})             # not recompressed yet
_SEEN = frozenset({ZSTD_DICT, ZSTD_SEEN, RAW_SEEN})            # recompressed, tagged


def pack_entry(kind: int, length: int, payload: int, tag: int = 0) -> int:
    return (payload << _PAYLOAD_SHIFT) | (tag << _TAG_SHIFT) | (length << _KIND_BITS) | kind


def entry_kind(entry: int) -> int:
    return entry & _KIND_MASK


def entry_length(entry: int) -> int:
    return (entry >> _KIND_BITS) & _LEN_MASK


def entry_tag(entry: int) -> int:
    return (entry >> _TAG_SHIFT) & TAG_MASK


def entry_payload(entry: int) -> int:
    return entry >> _PAYLOAD_SHIFT


def with_length(entry: int, length: int) -> int:
    """The same entry with another length (truncation)."""
    return entry & ~(_LEN_MASK << _KIND_BITS) | (length << _KIND_BITS)


def _fill_cost(word: int) -> int:
    """Bytes a fill entry counts in its map's stored bytes: its word, unless it is zero.

    A file of, say, 0xab bytes must not show zero blocks: archivers (``tar -S``)
    take a non-empty file with ``st_blocks == 0`` for one big hole and skip reading it.
    """
    return FILL_WORD if word else 0


class NoSpace(Exception):
    """The write would pass the logical capacity (``size=``) or the memory limit."""


@dataclass(frozen=True)
class StoreStats:
    """Counters of the chunk store.

    Attributes:
        orig_bytes: logical bytes of chunk contents held (zram's orig_data_size).
        chunks: chunks held; same_chunks: of them same-filled (no pool memory);
        huge_chunks: of them stored uncompressed;
        huge_chunks_since: chunks ever stored uncompressed (zram's huge_pages_since).
        staged_bytes: of orig_bytes, bytes accepted but not compressed yet.
        recompressed_chunks: objects the recompressor replaced since the mount
            (by smaller ones, by a twin's, or moved off a retired dictionary).
        recompress_saved_bytes: the object bytes those replacements saved (objects
            freed minus objects made; chunks freed or rewritten since included).
        dictionary_chunks: chunks held as frames made with a dictionary.
        dictionaries: dictionaries alive (the current one and those chunks need);
        dictionary_bytes: their memory (content and decoding tables).
        dedup_chunks: chunks held by an object another chunk holds too (its
            references beyond the first, summed over shared objects).
        dedup_saved_bytes: the object bytes those references would take as copies.
    """

    orig_bytes: int
    chunks: int
    same_chunks: int
    huge_chunks: int
    huge_chunks_since: int
    staged_bytes: int
    recompressed_chunks: int = 0
    recompress_saved_bytes: int = 0
    dictionary_chunks: int = 0
    dictionaries: int = 0
    dictionary_bytes: int = 0
    dedup_chunks: int = 0
    dedup_saved_bytes: int = 0


class Recoding:
    """A chunk copied out of the arena to be recompressed (or sampled) on a worker thread.

    ``frame`` is its object's bytes: a zstd frame made with ``dictionary`` if
    ``compressed``, else the raw chunk; its content is the first ``length`` bytes.
    ``entry`` is the chunk's entry when it was copied, to tell whether it changed since.
    """

    __slots__ = ("cmap", "index", "entry", "frame", "compressed", "dictionary")

    def __init__(self, cmap: int, index: int, entry: int, frame: bytes, compressed: bool,
                 dictionary: Dictionary | None) -> None:
        self.cmap = cmap
        self.index = index
        self.entry = entry
        self.frame = frame
        self.compressed = compressed
        self.dictionary = dictionary

    @property
    def length(self) -> int:
        return entry_length(self.entry)

    @property
    def source(self) -> tuple[Buffer, bool, Dictionary | None, int]:
        """What ``Codec.recode_many`` takes."""
        return self.frame, self.compressed, self.dictionary, entry_length(self.entry)


@dataclass(slots=True)
class _Run:
    """Frames of consecutive chunks a read decompresses as one stream (``ChunkStore._gather``)."""

    pos: int                        # where its content goes in the read's buffer
    skip: int                       # content of the first frame before the read's start
    want: int                       # bytes of the read's buffer it fills
    frames: list[Buffer]
    dictionary: Dictionary | None


Runs = list[tuple[int, int, int, bytes, list[int], Dictionary | None]]
Pieces = list[tuple[int, bytes]]     # (position in the read's buffer, content copied there)


def _assemble(codec: Codec, length: int, pieces: Pieces, runs: Runs,
              worker: bool = False) -> bytes | bytearray:
    """A read's ``length`` bytes from what ``ChunkStore._gather`` took (holes are zeros).

    The buffer is made here, on the thread that decodes into it: made on the event
    loop for a worker, its zeroing and first-touch page faults took a quarter of the
    loop's time in a cold sequential read. On a ``worker`` thread, a read that one
    run of frames fills from its start is decoded in one call (``decompress_joined``)
    and needs no buffer to zero.
    """
    if worker and not pieces and len(runs) == 1:
        pos, skip, want, frames, sizes, dictionary = runs[0]
        if pos == skip == 0 and want == length:
            content = codec.decompress_joined(frames, sizes, dictionary)
            return content if len(content) == length else content[:length]
    out = bytearray(length)
    for pos, piece in pieces:
        out[pos:pos + len(piece)] = piece
    view = memoryview(out)
    for pos, skip, want, frames, _, dictionary in runs:
        codec.decompress_into(view[pos:pos + want], frames, dictionary, skip)
    return out


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
                 make_room: Callable[[], Awaitable[object]] | None = None,
                 recompress_level: int = 6) -> None:
        if chunk_size > pool.max_object_size:
            raise ValueError("chunk_size exceeds the pool's max_object_size")
        self.pool = pool
        self.chunk_size = chunk_size
        self.capacity = capacity
        self.make_room = make_room
        self.codec = Codec(level, raw_threshold=pool.huge_class_size)
        self._read_codecs: list[Codec] = []          # idle, for reads on worker threads
        # One decoding thread per core: more only add GIL handoffs and context switches.
        self._read_threads = trio.CapacityLimiter(os.cpu_count() or 1)
        self.queue = CompressionQueue(
            [Codec(level, pool.huge_class_size, threads=1) for _ in range(COMPRESSORS)],
            self._commit_staged)
        self.maps = ChunkMaps()
        self.orig_bytes = 0
        self.chunks = 0
        self.same_chunks = 0
        self.huge_chunks = 0
        self.huge_chunks_since = 0
        self.staged_bytes = 0
        self._staged: dict[int, Staged] = {}          # slot -> the chunk staged there
        self._next_slot = 1
        self._write_lock = trio.Lock()
        self.versions = Versions(pool, recompress_level)
        self.recompressed_chunks = 0
        self.recompress_saved_bytes = 0
        self._refs: dict[int, int] = {}      # shared handle -> its references beyond the first
        self.dedup_chunks = 0
        self.dedup_saved_bytes = 0

    def stats(self) -> StoreStats:
        versions = self.versions
        return StoreStats(self.orig_bytes, self.chunks, self.same_chunks, self.huge_chunks,
                          self.huge_chunks_since, self.staged_bytes, self.recompressed_chunks,
                          self.recompress_saved_bytes, versions.dictionary_chunks,
                          versions.dictionaries, versions.dictionary_bytes,
                          self.dedup_chunks, self.dedup_saved_bytes)

    def bookkeeping_bytes(self) -> int:
        """The Python memory of the chunk maps and of the shared objects' counts (the
        counts themselves are mostly small ints, which CPython keeps anyway)."""
        refs = self._refs
        return self.maps.memory() + sys.getsizeof(refs) + sum(map(sys.getsizeof, refs))

    # -- reading ------------------------------------------------------------------

    def _content(self, entry: int) -> Buffer:
        """The chunk's content, exactly ``length`` bytes."""
        kind = entry_kind(entry)
        length = entry_length(entry)
        payload = entry_payload(entry)
        if kind == STAGED:
            data = self._staged[payload].content
        elif kind == Encoding.FILL:
            return fill_bytes(payload, length)
        else:
            data = self.pool.read(payload)
            if kind in _FRAMES:
                data = self.codec.decompress(data, self._dictionary(entry))
        return data if len(data) == length else data[:length]

    def _dictionary(self, entry: int) -> Dictionary | None:
        """The dictionary a frame entry needs (None for frames made without one)."""
        if entry_kind(entry) != ZSTD_DICT:
            return None
        return self.versions.get(entry_tag(entry)).dictionary

    def read(self, cmap: int, offset: int, length: int) -> bytes | bytearray:
        """``length`` bytes at ``offset`` (the caller clips to the file size)."""
        cs = self.chunk_size
        first, in_chunk = divmod(offset, cs)
        if in_chunk + length <= cs:
            entry = self.maps.get(cmap, first)
            if entry is None:
                return bytes(length)
            content = self._content(entry)
            piece = bytes(content[in_chunk:in_chunk + length])
            return piece + bytes(length - len(piece)) if len(piece) < length else piece
        return _assemble(self.codec, length, *self._gather(cmap, offset, length))

    async def read_parallel(self, cmap: int, offset: int, length: int) -> bytes | bytearray:
        """``read``, but a large read decompresses on a worker thread.

        The event loop meanwhile serves other requests, among them the kernel's
        other read-ahead READs of the same file: with several in flight, both cores
        decompress. ``_gather`` copies the frames out of the arena first, since
        compaction may move objects while the thread works; a chunk written
        meanwhile is read as it was when the read began.
        """
        if length < PARALLEL_READ_BYTES:
            return self.read(cmap, offset, length)
        pieces, runs = self._gather(cmap, offset, length)
        if not runs:
            return _assemble(self.codec, length, pieces, runs)
        codec = self._read_codecs.pop() if self._read_codecs else Codec(
            self.codec.level, self.codec.raw_threshold)
        try:
            return await trio.to_thread.run_sync(_assemble, codec, length, pieces, runs, True,
                                                 limiter=self._read_threads)
        finally:
            self._read_codecs.append(codec)

    def _gather(self, cmap: int, offset: int, length: int) -> tuple[Pieces, Runs]:
        """What a read needs from the arena, copied out: the pieces of its buffer that are
        not zstd chunks (holes are left out: zeros), and the runs of frames for the rest.

        A run is (position in the buffer, bytes to skip, bytes to fill, frames joined,
        their sizes, dictionary): frames of consecutive chunks with one dictionary, which decode
        as one stream because each but the last holds a whole chunk, read to its end.
        Joining copies the frames out of the arena; a run holds its dictionary, so
        one retired while a worker thread decodes lives until it is done.
        """
        cs = self.chunk_size
        idx, in_chunk = divmod(offset, cs)
        pieces: Pieces = []
        runs: list[_Run] = []
        run: _Run | None = None     # the run the next chunk's frame may extend
        pos = 0
        get = self.maps.get
        while pos < length:
            n = min(cs - in_chunk, length - pos)
            entry = get(cmap, idx)
            if entry is not None and entry_kind(entry) in _FRAMES:
                held = entry_length(entry)
                dictionary = self._dictionary(entry)
                if run is None or run.dictionary is not dictionary:
                    run = _Run(pos, in_chunk, 0, [], dictionary)
                    runs.append(run)
                run.frames.append(self.pool.read(entry_payload(entry)))
                run.want = pos - run.pos + max(0, min(n, held - in_chunk))
                if held < cs:       # what follows in the buffer is not in its frame
                    run = None
            else:
                run = None
                if entry is not None:
                    pieces.append((pos, bytes(self._content(entry)[in_chunk:in_chunk + n])))
            pos += n
            in_chunk = 0
            idx += 1
        return pieces, [(r.pos, r.skip, r.want, b"".join(r.frames), [len(f) for f in r.frames],
                         r.dictionary) for r in runs if r.want]

    # -- writing ------------------------------------------------------------------

    async def write(self, cmap: int, offset: int, data: Buffer) -> int:
        """Store ``data`` at ``offset``; return the bytes stored.

        The new contents are computed before the first ``await``; that is sound
        because what may run at an await (the compressors' commits, releases of
        *other* files: this one is open) changes how a chunk is held, never what it
        holds, and truncates wait for the write lock.

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
                await self.queue.step(len(self._staged))
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

    def _stage(self, cmap: int, idx: int, content: Buffer) -> bool:
        """Accept ``content`` as chunk ``idx``'s new content, to be compressed later.

        A chunk staged and still queued takes the new content in place (keeping its
        place in the queue); one being compressed is superseded by a new staging
        (see staging.py). Returns False, changing nothing, when the pool cannot
        reserve the room the content might need. Raises NoSpace past the logical
        capacity.
        """
        entry = self.maps.get(cmap, idx)
        length = len(content)
        old_len = 0 if entry is None else entry_length(entry)
        if self.capacity and self.orig_bytes - old_len + length > self.capacity:
            raise NoSpace("file system full (size=)")
        pages = self.pool.worst_case_pages(length)
        if entry is not None and entry_kind(entry) == STAGED:
            staged = self._staged[entry_payload(entry)]
            if pages > staged.pages:
                try:
                    self.pool.reserve(pages - staged.pages)
                except PoolFull:
                    return False
                staged.pages = pages
            if self.queue.is_queued(staged):
                staged.content = content
            else:
                self.queue.discard(staged)
                del self._staged[staged.slot]
                staged = self._new_staged(cmap, idx, content, staged.old, staged.pages)
        else:
            try:
                self.pool.reserve(pages)
            except PoolFull:
                return False
            if entry is not None:
                self._uncount(cmap, entry)
                old_len = 0
            staged = self._new_staged(cmap, idx, content, entry, pages)
            self.chunks += 1
        grown = length - old_len
        self.staged_bytes += grown
        self.maps.stored[cmap] += grown
        self.orig_bytes += grown
        self.maps.set(cmap, idx, pack_entry(STAGED, length, staged.slot))
        self.queue.add(staged)
        return True

    def _new_staged(self, cmap: int, idx: int, content: Buffer, old: int | None,
                    pages: int) -> Staged:
        slot = self._next_slot
        self._next_slot += 1
        staged = self._staged[slot] = Staged(cmap, idx, slot, content, old, pages)
        return staged

    async def _store_now(self, cmap: int, idx: int, content: Buffer) -> None:
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

    # -- the compressors ----------------------------------------------------------

    async def run(self) -> None:
        """Compress staged chunks in the background, forever (a task of the daemon)."""
        await self.queue.run()

    async def flush(self) -> None:
        """Return when every chunk staged before the call is stored or superseded.

        What fsync waits for. Bounded by the batches queued before the call: chunks
        staged or rewritten meanwhile (another writer) do not keep it waiting.
        """
        waiting = set(self._staged)
        while waiting:
            await self.queue.step(len(self._staged))
            waiting.intersection_update(self._staged)

    def _commit_staged(self, staged: Staged, kind: Encoding, payload: Payload) -> None:
        """Store a staged chunk's encoded content under its reservation.

        The chunk may have been cut while it was compressed: the entry's length,
        not the content's, is what it holds (the object keeps a stale tail).
        """
        cmap, idx = staged.cmap, staged.index
        entry = self.maps.get(cmap, idx)
        assert entry is not None and entry_payload(entry) == staged.slot
        value, stored = self._place(kind, payload, staged.pages)
        staged.pages = 0
        self._drop(cmap, entry)
        self._install(cmap, idx, entry_length(entry), kind, value, stored)

    def _covered(self, offset: int, length: int, idx: int) -> int:
        """Bytes of the write ``[offset, offset + length)`` that fall in chunk ``idx``."""
        start = max(offset, idx * self.chunk_size)
        end = min(offset + length, (idx + 1) * self.chunk_size)
        return end - start

    def _new_contents(self, cmap: int, offset: int,
                      data: memoryview) -> list[tuple[int, memoryview | bytearray]]:
        """The new content of each chunk the write touches (read-modify-write at the edges)."""
        cs = self.chunk_size
        pieces = []
        pos = 0
        end = len(data)
        while pos < end:
            idx, in_chunk = divmod(offset + pos, cs)
            n = min(cs - in_chunk, end - pos)
            entry = self.maps.get(cmap, idx)
            old_len = 0 if entry is None else entry_length(entry)
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

    def _commit(self, cmap: int, idx: int, length: int, kind: Encoding,
                payload: Payload) -> None:
        """Replace chunk ``idx`` with an encoded content: allocate new, then free old.

        Raises NoSpace (capacity) or PoolFull (mem_limit) with nothing changed.
        """
        old = self.maps.get(cmap, idx)
        old_len = 0 if old is None else entry_length(old)
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

    def _install(self, cmap: int, idx: int, length: int, kind: int, value: int,
                 stored: int, tag: int = 0) -> None:
        self.maps.set(cmap, idx, pack_entry(kind, length, value, tag))
        self.maps.stored[cmap] += stored
        self.orig_bytes += length
        self.chunks += 1
        if kind == Encoding.FILL:
            self.same_chunks += 1
        elif kind in _RAWS:
            self.huge_chunks += 1
            if kind == Encoding.RAW:
                self.huge_chunks_since += 1
        elif kind == ZSTD_DICT:
            self.versions.use(tag)

    def _drop(self, cmap: int, entry: int) -> None:
        """Forget one entry: its counters and its storage (the caller removes or replaces it)."""
        self._uncount(cmap, entry)
        self._free(entry)

    def _uncount(self, cmap: int, entry: int) -> None:
        kind = entry_kind(entry)
        payload = entry_payload(entry)
        length = entry_length(entry)
        self.orig_bytes -= length
        self.chunks -= 1
        if kind == Encoding.FILL:
            self.same_chunks -= 1
            self.maps.stored[cmap] -= _fill_cost(payload)
        elif kind == STAGED:
            self.staged_bytes -= length
            self.maps.stored[cmap] -= length
        else:
            self.maps.stored[cmap] -= self.pool.size(payload)
            if kind in _RAWS:
                self.huge_chunks -= 1
            elif kind == ZSTD_DICT:
                self.versions.unuse(entry_tag(entry))

    def _free(self, entry: int) -> None:
        """Free what an uncounted entry holds: its object, or its staging and what that kept."""
        kind = entry_kind(entry)
        payload = entry_payload(entry)
        if kind == STAGED:
            staged = self._staged.pop(payload)
            self.queue.discard(staged)
            self.pool.unreserve(staged.pages)
            if staged.old is not None:
                self._free(staged.old)
        elif kind != Encoding.FILL:
            self._unref(payload)

    def _unref(self, handle: int) -> None:
        """Drop one reference to an object: free it with its last."""
        extra = self._refs.pop(handle, 0)
        if not extra:
            self.pool.free(handle)
            return
        if extra > 1:
            self._refs[handle] = extra - 1
        self.dedup_chunks -= 1
        self.dedup_saved_bytes -= self.pool.size(handle)

    # -- recompression (recompress.py schedules it) -----------------------------------

    def needs_recompression(self, entry: int) -> bool:
        """Whether the current recompression setting has yet to go through the chunk."""
        kind = entry_kind(entry)
        if kind in _FRESH:
            return True
        return kind in _SEEN and entry_tag(entry) != self.versions.current.tag

    def needs_recompression_at(self, cmap: int, idx: int) -> bool:
        entry = self.maps.lookup(cmap, idx)
        return entry is not None and self.needs_recompression(entry)

    @property
    def busy(self) -> bool:
        """Writes have chunks waiting for the compressors: background work should wait."""
        return bool(self._staged)

    def recompression_source(self, cmap: int, idx: int) -> Recoding | None:
        """Chunk ``idx``, copied out of the arena for recompression on a worker thread;
        None when it needs none (a hole, a fill, staged, or seen by the current setting)."""
        entry = self.maps.lookup(cmap, idx)
        if entry is None or not self.needs_recompression(entry):
            return None
        return Recoding(cmap, idx, entry, bytes(self.pool.read(entry_payload(entry))),
                        entry_kind(entry) in _FRAMES, self._dictionary(entry))

    def training_source(self, cmap: int, idx: int) -> Recoding | None:
        """Chunk ``idx`` copied out of the arena as a sample for a dictionary: zstd
        frames only (what did not compress at all would teach it nothing)."""
        entry = self.maps.lookup(cmap, idx)
        if entry is None or entry_kind(entry) not in _FRAMES:
            return None
        return Recoding(cmap, idx, entry, bytes(self.pool.read(entry_payload(entry))), True,
                        self._dictionary(entry))

    def commit_recompressed(self, job: Recoding, version: Version, kind: Encoding,
                            payload: Payload, twins: Twins | None = None) -> bool:
        """Store ``job``'s chunk encoded again by ``version``, if that still applies and is
        worth it; True when its object was replaced.

        It applies when ``version`` is still the current setting and the chunk is as
        it was copied out: the same entry, and the same bytes in its object (a map or a
        handle freed meanwhile may be in use again, for an object of the same length).
        The chunk then takes, in this order: the object of a twin in ``twins`` (a chunk
        this pass left with the same kind and bytes), whatever its size; a new object,
        when it is smaller and the old one is not shared (other chunks sharing it may
        not be in this pass: both objects would stay), or when the chunk's dictionary
        is not the current setting's (moving it off lets that dictionary go); or it
        keeps its own object, marked as seen by ``version``. A new or kept object goes
        into ``twins``. A new object that does not fit under ``mem_limit`` is skipped.
        New is allocated before old is freed.
        """
        cmap, idx, entry = job.cmap, job.index, job.entry
        if version is not self.versions.current or self.maps.lookup(cmap, idx) != entry:
            return False
        handle = entry_payload(entry)
        if bytes(self.pool.read(handle)) != job.frame:   # (memoryview == bytes: per byte)
            return False
        old_kind = entry_kind(entry)
        length = entry_length(entry)
        tag = version.tag
        shared = handle in self._refs
        freed = 0 if shared else len(job.frame)
        new = None if kind == Encoding.FILL else bytes(payload)   # type: ignore[arg-type]
        new_kind = (kind if new is None else RAW_SEEN if kind == Encoding.RAW
                    else ZSTD_DICT if version.dictionary is not None else ZSTD_SEEN)
        if new is not None and twins is not None:
            twin = self._twin(twins, new_kind, tag, new)
            if twin is not None and twin != handle:
                self._share(job, twin, new_kind, tag, freed)
                return True
        retired = job.dictionary is not version.dictionary and job.dictionary is not None
        if new is None or retired or (len(new) < len(job.frame) and not shared):
            try:
                value, stored = self._place(kind, new if new is not None else payload, 0)
            except PoolFull:
                return False
            self._replace(job, new_kind, value, stored, tag,
                          freed - (0 if new is None else stored))
            if new is not None and twins is not None:
                twins.add(new_kind, new, cmap, idx)
            return True
        # kept: a frame made with a dictionary is one made with the current one here
        seen = (ZSTD_DICT if old_kind == ZSTD_DICT else RAW_SEEN if old_kind in _RAWS
                else ZSTD_SEEN)
        if twins is not None:
            twin = self._twin(twins, seen, tag, job.frame)
            if twin is not None and twin != handle:
                self._share(job, twin, seen, tag, freed)
                return True
            twins.add(seen, job.frame, cmap, idx)
        if old_kind == ZSTD_DICT:           # the same dictionary under a newer version
            self.versions.use(tag)
            self.versions.unuse(entry_tag(entry))
        self.maps.set(cmap, idx, pack_entry(seen, length, handle, tag))
        return False

    def _twin(self, twins: Twins, kind: int, tag: int, obj: bytes) -> int | None:
        """The handle of the object that ``twins`` says holds ``obj`` as a chunk of
        ``kind`` made by version ``tag``, if that is still so."""
        where = twins.get(kind, obj)
        if where is None:
            return None
        entry = self.maps.lookup(*where)
        if entry is None or entry_kind(entry) != kind or entry_tag(entry) != tag:
            return None
        handle = entry_payload(entry)
        if self.pool.size(handle) != len(obj) or bytes(self.pool.read(handle)) != obj:
            return None
        return handle

    def _share(self, job: Recoding, twin: int, kind: int, tag: int, freed: int) -> None:
        """Let ``job``'s chunk hold its twin's object instead of its own."""
        size = self.pool.size(twin)
        self._refs[twin] = self._refs.get(twin, 0) + 1
        self.dedup_chunks += 1
        self.dedup_saved_bytes += size
        self._replace(job, kind, twin, size, tag, freed)

    def _replace(self, job: Recoding, kind: int, value: int, stored: int, tag: int,
                 saved: int) -> None:
        """Put a recompression result in place of ``job``'s entry, and count it."""
        self._drop(job.cmap, job.entry)
        self._install(job.cmap, job.index, entry_length(job.entry), kind, value, stored, tag)
        self.recompressed_chunks += 1
        self.recompress_saved_bytes += saved

    # -- truncating and freeing ----------------------------------------------------

    async def truncate(self, cmap: int, size: int) -> None:
        """Drop the contents at and beyond ``size``."""
        await self._lock()
        try:
            cs = self.chunk_size
            for idx in [i for i in self.maps.indexes(cmap) if i * cs >= size]:
                self._drop(cmap, self.maps.pop(cmap, idx))
            idx, keep = divmod(size, cs)
            entry = self.maps.get(cmap, idx)
            if entry is None or entry_length(entry) <= keep:
                return
            cut = entry_length(entry) - keep
            self.orig_bytes -= cut
            self.maps.set(cmap, idx, with_length(entry, keep))
            if entry_kind(entry) == STAGED:
                self.staged_bytes -= cut
                self.maps.stored[cmap] -= cut
                staged = self._staged[entry_payload(entry)]
                if self.queue.is_queued(staged):       # else a thread is reading it
                    staged.content = staged.content[:keep]
        finally:
            self._write_lock.release()

    def new_map(self) -> int:
        """A new, empty chunk map for a file: its number in ``maps``."""
        return self.maps.new()

    def release(self, cmap: int) -> None:
        """Free every chunk of a file that is gone, and its map.

        Needs no write lock: it does not await, and the file has no open handle
        left, so no write or truncate of it is in progress.
        """
        for entry in self.maps.entries(cmap):
            self._drop(cmap, entry)
        self.maps.free(cmap)
