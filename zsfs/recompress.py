"""Idle recompression: chunks of files left alone are compressed again, harder.

Writes compress at a fast level (``level=``, 1 by default) so that they keep up
with the writer. zram's ``recompress`` shows the way out: once data has cooled,
compress it again with a stronger setting. zsfs does it per file: the chunks of
files neither written nor changed (mtime and ctime) for ``recompress_idle``
seconds are compressed again at ``recompress_level``, with a zstd dictionary
zsfs trains itself from a sample of the mount's own chunks (zram can only load a
dictionary it is given). On 16 KiB chunks of the benchmark corpus that is worth
about 4% at level 6 alone, and 11-16% with a dictionary of 112 KiB to 1 MiB.

Settings and versions. A *Version* is one recompression setting: a level and a
dictionary (or none), named by a 16-bit *tag*. Every chunk the recompressor has
been through carries the tag of the version that did it (chunkstore.py's kinds
ZSTD_DICT, ZSTD_SEEN, RAW_SEEN), so a pass skips what the current version has
seen, and a new setting (level, dictionary on or off, a retrained dictionary)
makes a new current version whose passes go through everything again. A chunk
compressed with a dictionary needs it to be read: a version lives while it is
current or such chunks use it, and a dictionary while a live version refers to
it. A dictionary's memory (content and zstd's decoding tables, ``Dictionary.
memory``) is reserved in the pool while it lives, so it counts against
``mem_limit``, and shows in ``mem_used_total``.

What is kept: a recompressed object replaces the old one only when it is smaller
and the old one is not shared, except that a chunk whose dictionary is not the
current one is always moved to the current setting (else a retired dictionary
would live as long as its least compressible chunk). A chunk that did not shrink
keeps its object and only takes the new tag. Replacing allocates new before
freeing old; at ``mem_limit`` the chunk is skipped. A chunk that can take a twin's
object (below) takes it, whatever the sizes.

How the work is cut, and what runs where. A pass walks the tree's inode table
on the trio thread, copies the objects of chunks that need recompression
out of the arena until it has about ``BATCH_BYTES`` of content, and hands the
batch to a worker thread, which decompresses and compresses again with its own
zstd contexts (a Codec of the version's setting; python-zstandard drops the GIL).
Back on the trio thread each result is committed only if its chunk is unchanged
(``ChunkStore.commit_recompressed`` compares the entry and the object's bytes:
writes, truncates, frees and compactions may all have happened meanwhile) and
the version is still current. Nothing else of a pass holds the event loop longer
than a slice of ``SCAN_SLICE`` inodes. Before each batch the pass waits while
writes have chunks staged for the compressors: foreground writes go first.
Dictionary training runs on a worker thread too, on a sample of at most
``SAMPLE_CHUNKS`` chunks (``SAMPLE_BYTES`` of content), copied out the same way.

Copies share one object. A pass remembers where it left each object (``Twins``),
and a chunk whose result is byte-identical to one of them, under the same
setting, takes that object (``ChunkStore.commit_recompressed``): 16% of the
corpus's bytes are chunks that other files hold too. Only chunks that go through
the same pass find each other: a pass skips what the current setting has seen, so
a copy of data recompressed before stays a copy until a new setting sends every
chunk through again. A shared object is not replaced by a smaller one (unless its
dictionary is retired), since the chunks sharing it may not all be in the pass:
replacing it for some would hold both objects.

One pass runs at a time (a lock): the background task's, or one asked for through
``.zsfs/recompress``, which waits for the one under way and then runs its own.
A background pass compresses on one native thread, one asked for on two. A
pass that replaced objects ends with a compaction (asked for: before returning;
background: a kick to the compactor), since freeing old objects leaves holes in
their zspages.

Failures: an unexpected exception in a background pass is logged with its
traceback and the task carries on after ``RETRY_SECONDS``; a failed batch changes
nothing (results are committed one by one, each complete). When zstd cannot train
a dictionary (too few or too small samples) there is no dictionary, and training
is tried again once the data has doubled.

Rejected: per-chunk access times (memory per chunk for an approximation the
files' times already give), recompressing on the compressors' threads (they are
what writes wait for), trying both with and without dictionary for each chunk
(twice the CPU for well under 1% on the corpus).
"""

from __future__ import annotations

import contextlib
import logging
import random
import time
from typing import TYPE_CHECKING, Awaitable, Callable, ContextManager, Iterator

import trio

from .arena import PAGE_SIZE
from .codec import THREADS, Codec, Dictionary, DictionaryError
from .zsmalloc import Pool, PoolFull

if TYPE_CHECKING:
    from .chunkstore import ChunkStore, Recoding

log = logging.getLogger(__name__)

TAG_BITS = 16                   # bits of a version tag in a chunk map entry
BATCH_BYTES = 1 << 20           # chunk contents recompressed in one worker-thread call
SCAN_SLICE = 512                # inodes looked at between two yields to the event loop
BUSY_WAIT = 0.05                # seconds between checks for staged writes to drain
RETRY_SECONDS = 5.0             # rest after an unexpected failure of a background pass
MIN_SCAN_SECONDS = 0.05         # background checks: every half idle age, in these bounds
MAX_SCAN_SECONDS = 60.0
SAMPLE_CHUNKS = 4000            # chunks sampled to train a dictionary
SAMPLE_BYTES = 32 << 20         # and at most this much content
DICT_MIN_DATA = 4 << 20         # compressed bytes held before a dictionary is trained
DICT_FRACTION = 256             # dictionary size: this fraction of the compressed bytes,
MIN_DICT = 16 << 10             # within these bounds (1 MiB: 2.60 against 2.50 with 112 KiB
MAX_DICT = 1 << 20              # on the corpus at level 6, for 0.4% of its memory)
REGROW = 2                      # retrain once the data calls for a dictionary this much larger


def dictionary_size(compressed_bytes: int) -> int:
    """The dictionary size for a mount holding ``compressed_bytes`` of objects."""
    size = compressed_bytes // DICT_FRACTION // PAGE_SIZE * PAGE_SIZE
    return min(MAX_DICT, max(MIN_DICT, size))


class Version:
    """A recompression setting: level and dictionary, named by ``tag`` in chunk entries.

    ``chunks`` counts the chunks held as frames made with its dictionary.
    """

    __slots__ = ("tag", "level", "dictionary", "chunks")

    def __init__(self, tag: int, level: int, dictionary: Dictionary | None) -> None:
        self.tag = tag
        self.level = level
        self.dictionary = dictionary
        self.chunks = 0


class Versions:
    """The live versions and dictionaries, and the pool pages their memory holds.

    A version lives while it is ``current`` or has chunks; a dictionary while a live
    version refers to it, and for that long it holds a pool reservation of its
    memory (``Dictionary.memory``, rounded up to pages).
    """

    def __init__(self, pool: Pool, level: int) -> None:
        self.pool = pool
        self._live: dict[int, Version] = {}
        self._last_tag = 0
        self._dictionaries: dict[Dictionary, int] = {}    # -> live versions using it
        self.dictionary_chunks = 0
        self.dictionary_pages = 0
        self.dictionary_pages_max = 0
        self.current = self._make(level, None)

    def get(self, tag: int) -> Version:
        return self._live[tag]

    def use(self, tag: int) -> None:
        """A chunk now needs version ``tag``'s dictionary."""
        self._live[tag].chunks += 1
        self.dictionary_chunks += 1

    def unuse(self, tag: int) -> None:
        """A chunk no longer needs version ``tag``'s dictionary."""
        version = self._live[tag]
        version.chunks -= 1
        self.dictionary_chunks -= 1
        if not version.chunks and version is not self.current:
            self._drop(version)

    def switch(self, level: int, dictionary: Dictionary | None) -> Version:
        """Make (level, dictionary) the current setting, as a new version.

        Raises:
            PoolFull: a new dictionary's memory does not fit (nothing changes).
        """
        if dictionary is not None and dictionary not in self._dictionaries:
            pages = self._pages(dictionary)
            self.pool.reserve(pages)
            self._dictionaries[dictionary] = 0
            self.dictionary_pages += pages
            self.dictionary_pages_max = max(self.dictionary_pages_max, self.dictionary_pages)
        old = self.current
        self.current = self._make(level, dictionary)
        if not old.chunks:
            self._drop(old)
        return self.current

    def reset_max(self) -> None:
        self.dictionary_pages_max = self.dictionary_pages

    @property
    def dictionaries(self) -> int:
        return len(self._dictionaries)

    @property
    def dictionary_bytes(self) -> int:
        return sum(d.memory for d in self._dictionaries)

    @property
    def versions(self) -> int:
        return len(self._live)

    @staticmethod
    def _pages(dictionary: Dictionary) -> int:
        return -(-dictionary.memory // PAGE_SIZE)

    def _make(self, level: int, dictionary: Dictionary | None) -> Version:
        tag = self._last_tag
        while True:                       # the next tag no live version holds (never 0)
            tag = tag % ((1 << TAG_BITS) - 1) + 1
            if tag not in self._live:
                break
        self._last_tag = tag
        version = self._live[tag] = Version(tag, level, dictionary)
        if dictionary is not None:
            self._dictionaries[dictionary] += 1
        return version

    def _drop(self, version: Version) -> None:
        del self._live[version.tag]
        dictionary = version.dictionary
        if dictionary is None:
            return
        self._dictionaries[dictionary] -= 1
        if not self._dictionaries[dictionary]:
            del self._dictionaries[dictionary]
            pages = self._pages(dictionary)
            self.pool.unreserve(pages)
            self.dictionary_pages -= pages


class NotEnoughData(Exception):
    """There is too little data to train a dictionary from."""


class NoRoom(Exception):
    """A new dictionary does not fit under mem_limit."""


def _decode_samples(codec: Codec, sources: list[tuple], limit: int) -> list[bytes]:
    contents = []
    total = 0
    for frame, compressed, dictionary, length in sources:
        content = codec.decompress(frame, dictionary) if compressed else frame
        contents.append(bytes(memoryview(content)[:length]))
        total += length
        if total >= limit:
            break
    return contents


def _train(sources: list[tuple], size: int) -> Dictionary:
    """On a worker thread: decode the sampled frames, train a dictionary of ``size``."""
    codec = Codec(1, raw_threshold=1)
    return Dictionary.train(_decode_samples(codec, sources, SAMPLE_BYTES), size)


class Twins:
    """Where one recompression pass left each object it made or kept, by kind and
    bytes: the index ``commit_recompressed`` looks for a chunk's twin in.

    It holds locations, not handles, and a location is checked when it is used
    (the entry still of that kind and setting, its object still those bytes), so a
    chunk rewritten or freed since, or a map number reused, is simply no twin (a
    chunk cut since still is: its object is unchanged). A pass makes one and drops
    it at its end, so it costs nothing at rest (about 6 MB per 50,000 objects while
    a pass runs). Locations are packed into one int (map numbers stay below 2**32).
    """

    __slots__ = ("_where",)

    def __init__(self) -> None:
        self._where: dict[int, int] = {}

    def add(self, kind: int, obj: bytes, cmap: int, idx: int) -> None:
        self._where[hash((kind, obj))] = idx << 32 | cmap

    def get(self, kind: int, obj: bytes) -> tuple[int, int] | None:
        where = self._where.get(hash((kind, obj)))
        return None if where is None else (where & 0xFFFFFFFF, where >> 32)


class Recompressor:
    """Recompression passes over a tree's files, in the background and on demand.

    Args:
        store: whose chunks are recompressed (it does the chunk work).
        tree: whose files are walked (``Tree.chunk_maps``).
        idle_age: seconds a file must be left alone; 0 turns the background off.
        level: the zstd level of recompression.
        dictionary: whether to train and use a dictionary.
        compact: compacts the pool (after a pass asked for).
        kick: tells the background compactor that much was freed.
        hold_compaction: holds background compaction off for the length of a pass
            (``Compactor.held``: a compaction in the middle of a pass would move the
            new objects into the passing holes of larger classes, where they stay).

    Attributes:
        passes_background, passes_manual: passes done, by who asked.
    """

    def __init__(self, store: ChunkStore, tree: object, idle_age: float, level: int,
                 dictionary: bool = True,
                 compact: Callable[[], Awaitable[object]] | None = None,
                 kick: Callable[[], None] | None = None,
                 hold_compaction: Callable[[], ContextManager[object]] = contextlib.nullcontext
                 ) -> None:
        self.store = store
        self.tree = tree
        self._idle_age = idle_age
        self._dictionary = dictionary
        self._compact = compact
        self._kick = kick
        self._hold_compaction = hold_compaction
        self.passes_background = 0
        self.passes_manual = 0
        self._lock = trio.Lock()
        self._codec: Codec | None = None
        self._failed_training_at = 0      # compressed bytes when training last failed
        self._sleep: trio.CancelScope | None = None
        self._sleep_started = 0.0
        self._stopping = False
        self._rng = random.Random(0x5eed)
        if store.versions.current.level != level:
            store.versions.switch(level, None)

    # -- settings --------------------------------------------------------------------

    @property
    def idle_age(self) -> float:
        return self._idle_age

    @idle_age.setter
    def idle_age(self, seconds: float) -> None:
        """A new age applies to the background wait under way too."""
        self._idle_age = seconds
        if self._sleep is not None:
            self._sleep.deadline = self._sleep_started + self._scan_interval()

    @property
    def level(self) -> int:
        return self.store.versions.current.level

    @level.setter
    def level(self, level: int) -> None:
        versions = self.store.versions
        if level != versions.current.level:
            versions.switch(level, versions.current.dictionary)

    @property
    def dictionary(self) -> bool:
        return self._dictionary

    @dictionary.setter
    def dictionary(self, on: bool) -> None:
        """Off: recompression stops using the dictionary (and passes move chunks off it).
        On: a dictionary is trained at the next pass, if there is enough data."""
        self._dictionary = on
        versions = self.store.versions
        if not on and versions.current.dictionary is not None:
            versions.switch(versions.current.level, None)
        self._failed_training_at = 0

    def stop(self) -> None:
        """The daemon is unmounting: end a pass under way at its next batch."""
        self._stopping = True

    # -- on demand ------------------------------------------------------------------

    async def recompress(self, idle_only: bool) -> int:
        """One pass now, over idle files or all files; returns the objects replaced.

        Asked-for passes compress on two native threads, background ones on one.
        """
        async with self._lock:
            with self._hold_compaction():
                replaced = await self._pass(idle_only, threads=THREADS)
            self.passes_manual += 1
        if replaced and self._compact is not None:
            await self._compact()
        return replaced

    async def retrain(self) -> None:
        """Train a new dictionary now and make it current (the dictionary is then on).

        Raises:
            NotEnoughData: zstd cannot train one from what the mount holds.
            NoRoom: the dictionary does not fit under mem_limit.
        """
        async with self._lock:
            self._dictionary = True
            await self._train()

    # -- the background task --------------------------------------------------------

    def _scan_interval(self) -> float:
        if not self._idle_age:
            return MAX_SCAN_SECONDS
        return min(MAX_SCAN_SECONDS, max(MIN_SCAN_SECONDS, self._idle_age / 2))

    async def run(self) -> None:
        """Recompress idle files from time to time, forever (a task of the daemon)."""
        while True:
            self._sleep_started = trio.current_time()
            with trio.CancelScope(deadline=self._sleep_started + self._scan_interval()) \
                    as self._sleep:
                await trio.sleep_forever()
            self._sleep = None
            if not self._idle_age or self._stopping:
                continue
            try:
                async with self._lock:
                    with self._hold_compaction():
                        replaced = await self._pass(idle_only=True, threads=1)
                    self.passes_background += 1
                if replaced and self._kick is not None:
                    self._kick()
            except Exception:
                log.exception("background recompression failed; the data is as it was, "
                              "next try in %g s", RETRY_SECONDS)
                await trio.sleep(RETRY_SECONDS)

    # -- passes ----------------------------------------------------------------------

    def _files(self, idle_only: bool) -> Iterator[tuple[int, int, list[int]]]:
        """(index, chunk map, its chunks) of the inodes a pass looks at, each read when
        the pass gets to it: no chunks for those without data or, in an idle pass,
        changed within the idle age. The pass awaits between chunks, so by the time
        it gets to one the map may be gone or another file's (the store's methods
        for the recompressor allow for that)."""
        cutoff = time.time_ns() - int(self._idle_age * 1e9) + 1 if idle_only else None
        maps = self.store.maps
        for n, cmap in enumerate(self.tree.chunk_maps(cutoff)):  # type: ignore[attr-defined]
            yield n, cmap, maps.indexes(cmap) if cmap else []

    async def _pass(self, idle_only: bool, threads: int = 1) -> int:
        """Recompress what the current version has not seen, in batches; objects replaced.

        A dictionary is trained (if due) when the pass finds its first chunk to do.
        """
        store = self.store
        trained = False
        replaced = 0
        twins = Twins()
        jobs: list[Recoding] = []
        size = 0
        for n, cmap, indexes in self._files(idle_only):
            if n % SCAN_SLICE == SCAN_SLICE - 1:
                await trio.sleep(0)
            for idx in indexes:
                if not jobs:
                    await self._wait_for_writes()
                    if self._stopping:
                        return replaced
                if not trained and store.needs_recompression_at(cmap, idx):
                    trained = True
                    await self._maybe_train()
                job = store.recompression_source(cmap, idx)
                if job is None:
                    continue
                jobs.append(job)
                size += job.length
                if size >= BATCH_BYTES:
                    replaced += await self._batch(jobs, threads, twins)
                    jobs, size = [], 0
        if jobs:
            replaced += await self._batch(jobs, threads, twins)
        self._codec = None                 # its contexts (and dictionary) go with the pass
        return replaced

    async def _wait_for_writes(self) -> None:
        while self.store.busy and not self._stopping:
            await trio.sleep(BUSY_WAIT)

    async def _codec_for(self, version: Version, threads: int) -> Codec:
        """The recompression codec of ``version``'s setting (kept for the pass). Made on
        a worker thread: digesting a 1 MiB dictionary takes 20 ms at level 6, 0.5 s at 19."""
        codec = self._codec
        if (codec is None or codec.level != version.level or codec.threads != threads
                or codec.dictionary is not version.dictionary):
            codec = self._codec = await trio.to_thread.run_sync(
                Codec, version.level, self.store.pool.huge_class_size, threads,
                version.dictionary)
        return codec

    async def _batch(self, jobs: list[Recoding], threads: int, twins: Twins) -> int:
        """Recompress ``jobs`` on a worker thread; commit what still applies (a setting
        changed meanwhile makes every result stale), sharing objects with ``twins``."""
        store = self.store
        version = store.versions.current
        codec = await self._codec_for(version, threads)
        results = await trio.to_thread.run_sync(codec.recode_many, [j.source for j in jobs])
        replaced = 0
        for job, (kind, payload) in zip(jobs, results):
            replaced += store.commit_recompressed(job, version, kind, payload, twins)
        return replaced

    # -- dictionaries ------------------------------------------------------------------

    async def _maybe_train(self) -> None:
        """Train a dictionary if it is on and there is none, or the data has outgrown it."""
        if not self._dictionary:
            return
        held = self.store.pool.obj_bytes
        if held < DICT_MIN_DATA or held < 2 * self._failed_training_at:
            return
        current = self.store.versions.current.dictionary
        if current is None or dictionary_size(held) >= REGROW * current.size:
            try:
                await self._train()
            except (NotEnoughData, NoRoom) as e:
                log.info("no new dictionary: %s", e)

    async def _train(self) -> None:
        """Train a dictionary from a sample of the mount's chunks and make it current.

        Raises NotEnoughData or NoRoom (then nothing changes, and training is tried
        again only once the data has doubled).
        """
        store = self.store
        held = store.pool.obj_bytes
        sources = await self._sample()
        try:
            dictionary = await trio.to_thread.run_sync(
                _train, sources, dictionary_size(held), abandon_on_cancel=True)
            if not self._dictionary:           # turned off while training
                return
            store.versions.switch(store.versions.current.level, dictionary)
        except DictionaryError as e:
            self._failed_training_at = max(held, 1)
            raise NotEnoughData(f"zstd could not train a dictionary from {len(sources)} "
                                f"chunks ({e})") from None
        except PoolFull:
            self._failed_training_at = max(held, 1)
            raise NoRoom(f"a dictionary of {dictionary.memory} bytes does not fit under "
                         f"mem_limit") from None
        self._failed_training_at = 0
        log.info("trained a dictionary of %d bytes from %d chunks", dictionary.size,
                 len(sources))

    async def _sample(self) -> list[tuple]:
        """Up to SAMPLE_CHUNKS chunks drawn uniformly from every file (reservoir
        sampling), copied out of the arena."""
        picked: list[tuple[int, int]] = []
        seen = 0
        rng = self._rng
        for n, cmap, indexes in self._files(idle_only=False):
            if n % SCAN_SLICE == SCAN_SLICE - 1:
                await trio.sleep(0)
            for idx in indexes:
                seen += 1
                if len(picked) < SAMPLE_CHUNKS:
                    picked.append((cmap, idx))
                else:
                    k = rng.randrange(seen)
                    if k < SAMPLE_CHUNKS:
                        picked[k] = (cmap, idx)
        sources = []
        for n, (cmap, idx) in enumerate(picked):   # each copy reads the entry as it is now
            if n % SCAN_SLICE == SCAN_SLICE - 1:
                await trio.sleep(0)
            job = self.store.training_source(cmap, idx)
            if job is not None:
                sources.append(job.source)
        rng.shuffle(sources)
        return sources
