"""Staged chunks and the background batches that compress them.

A write keeps each chunk's new content uncompressed (*staged*) and answers; this
module decides when staged contents are compressed and hands each result back to
the chunk store, which decides whether it still applies. It knows nothing of
chunk maps or the pool.

The rules the chunk store and this queue rely on:

* Every live staged chunk is either **queued** (waiting for a batch) or **in
  flight** (in a batch that a worker thread is compressing), never both.
* A queued chunk belongs to the trio thread: the store may replace or cut its
  content in place, and it keeps its place in the queue.
* An in-flight chunk's content is read by a worker thread and is never changed.
  A write to that chunk stages a *new* ``Staged`` that supersedes it; the store
  discards the old one, and its result is dropped when the batch ends. (No
  version numbers: a result either belongs to a live ``Staged`` or to none.)
* Batches take queued chunks oldest first, and a chunk leaves the store (stored,
  superseded or freed) no later than the end of the first batch that takes it.
  So waiting for the chunks live at some moment (``ChunkStore.flush``) costs at most
  the batches queued before that moment, whatever writers do afterwards.
* Everything but the compression itself runs on the trio thread, and only
  ``await`` points let other tasks in: between them a change is atomic.
"""

from __future__ import annotations

import logging
from typing import Callable

import trio

from .codec import Buffer, Codec, Encoding, Payload

log = logging.getLogger(__name__)

BATCH_BYTES = 1 << 20          # staged bytes compressed in one call
GATHER_SECONDS = 0.010         # how long a small batch waits for more (random writes, small files)
RETRY_SECONDS = 1.0            # how long a compressor rests after an unexpected failure


class Staged:
    """A chunk's accepted content, waiting to be compressed into the pool.

    ``old`` is the entry the chunk had before it was staged, whose object is freed
    only when the new one is stored; ``pages`` is the pool reservation that
    guarantees that it can be. ``slot`` names it in the store's chunk map entry.
    """

    __slots__ = ("cmap", "index", "slot", "content", "old", "pages")

    def __init__(self, cmap: object, index: int, slot: int, content: Buffer,
                 old: int | None, pages: int) -> None:
        self.cmap = cmap
        self.index = index
        self.slot = slot
        self.content = content
        self.old = old
        self.pages = pages


Commit = Callable[[Staged, Encoding, Payload], None]


class CompressionQueue:
    """Queued staged chunks and the batches compressing them, one codec per batch.

    Args:
        codecs: one per batch that may run at once (each serves one thread).
        commit: called on the trio thread with each result of a batch, for the
            chunks not discarded meanwhile.
    """

    def __init__(self, codecs: list[Codec], commit: Commit) -> None:
        self._idle_codecs = codecs
        self._codecs = len(codecs)
        self._commit = commit
        self._queued: dict[Staged, None] = {}        # oldest first
        self._in_flight: set[Staged] = set()          # in a running batch
        self._work = trio.Event()                     # set when something is queued
        self._batch_end = trio.Event()                # set (and replaced) when a batch ends

    def __len__(self) -> int:
        return len(self._queued)

    def add(self, staged: Staged) -> None:
        """Queue ``staged`` for compression (a no-op for a chunk already queued)."""
        self._queued[staged] = None
        self._work.set()

    def is_queued(self, staged: Staged) -> bool:
        return staged in self._queued

    def discard(self, staged: Staged) -> None:
        """Forget a chunk the store has freed or superseded: a result for it is dropped."""
        self._queued.pop(staged, None)
        self._in_flight.discard(staged)

    @property
    def batches(self) -> int:
        """Batches being compressed: each holds one of the codecs."""
        return self._codecs - len(self._idle_codecs)

    async def run(self) -> None:
        """Compress queued chunks in the background, forever (tasks of the daemon)."""
        async with trio.open_nursery() as nursery:
            for _ in range(self._codecs):
                nursery.start_soon(self._compressor)

    async def _compressor(self) -> None:
        while True:
            while not self._queued:
                if self._work.is_set():
                    self._work = trio.Event()
                await self._work.wait()
            if not self._batch_is_full():
                await trio.sleep(GATHER_SECONDS)
            try:
                await self.step()
            except Exception:
                # The batch went back to the queue; its data stays readable, staged.
                log.exception("background compression failed; retrying in %.0f s",
                              RETRY_SECONDS)
                await trio.sleep(RETRY_SECONDS)

    def _batch_is_full(self) -> bool:
        size = 0
        for staged in self._queued:
            size += len(staged.content)
            if size >= BATCH_BYTES:
                return True
        return False

    async def step(self, live: int = 0) -> None:
        """Compress a batch if a codec is free, else wait for a running batch to end.

        ``live`` is how many staged chunks the store holds: when there are some but
        none is queued or in flight, a promise above is broken, and since callers
        loop on this step it raises rather than spin the event loop.
        """
        if not (self._queued and self._idle_codecs):
            if self.batches:
                await self._batch_end.wait()
            elif live:
                raise RuntimeError(f"{live} staged chunks are neither queued "
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
        for staged in self._queued:
            batch.append(staged)
            size += len(staged.content)
            if size >= BATCH_BYTES:
                break
        for staged in batch:
            del self._queued[staged]
        self._in_flight.update(batch)
        try:
            encoded = await trio.to_thread.run_sync(codec.encode_many,
                                                    [s.content for s in batch])
        except BaseException:
            # Back at the front of the queue, in order: a failure must not reorder.
            again = [s for s in batch if s in self._in_flight]
            self._in_flight.difference_update(batch)
            self._queued = dict.fromkeys([*again, *self._queued])
            raise
        for staged, (kind, payload) in zip(batch, encoded):
            if staged in self._in_flight:
                self._in_flight.remove(staged)
                self._commit(staged, kind, payload)
