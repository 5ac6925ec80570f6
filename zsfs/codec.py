"""Chunk encoding: same-filled detection, zstd compression, zstd dictionaries.

A chunk is encoded one of three ways, cheapest first:

* *fill*: every 8-byte word is the same (all zeros included). zram calls these
  ``same_pages`` and stores only the word; so do we.
* *zstd*: a zstd frame with the content size in its header, so decompression
  needs no side information.
* *raw*: the chunk as it is, when compressing does not bring it below the pool's
  huge watermark; reading it back then costs no decompression.

A Codec may compress with a *dictionary* (``Dictionary``: trained by zsfs from a
sample of its own chunks, see recompress.py). Its frames then carry neither the
dictionary's id nor any other mark: whoever stores them must remember which
dictionary they need (the chunk store keeps it in the chunk's entry) and pass it
to ``decompress``. Any Codec decodes frames of any dictionary; it keeps one
decompressor per dictionary it has met, for as long as the dictionary lives.

Several chunks are compressed in one multi-frame call, which releases the GIL and
can spread the frames over native threads inside one C call; several frames are
decompressed as one stream into the reader's buffer (``decompress_into``), or on a
worker thread in one call (``decompress_joined``). zstd
contexts are not thread-safe, so a Codec serves one thread at a time: the trio
thread has its own (reads, stores at the memory limit), each background
compressor another, each large read on a worker thread another, the recompressor
another. A Dictionary is read-only once made and may be shared by codecs on any
threads.
"""

from __future__ import annotations

import weakref
from array import array
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


#: What zstd's digested form of a dictionary for decoding (a ZSTD_DDict: entropy
#: tables beside a reference to the content) adds to the content: about 29 KiB.
DDICT_TABLE_BYTES = 29 << 10
#: The dictionary trainer's parameters (fastCover): fixed, since letting zstd search
#: for them took 70 s for 4,000 chunks of the corpus where these take 1.3 s, for the
#: same compression (2.50 against 2.50 at level 6 with 112 KiB).
TRAIN_SEGMENT = 256
TRAIN_DMER = 8


class DictionaryError(ValueError):
    """zstd could not train a dictionary from the samples (too few or too small)."""


class Dictionary:
    """A zstd dictionary zsfs trained from its own chunks: read-only, shared by codecs.

    ``memory`` is what it costs while it lives: its content and the tables zstd
    digests it into for decoding (compression contexts come and go with the
    recompressor's runs, like every codec's).
    """

    __slots__ = ("zdict", "size", "__weakref__")

    def __init__(self, content: bytes) -> None:
        self.zdict = zstandard.ZstdCompressionDict(content,
                                                   dict_type=zstandard.DICT_TYPE_FULLDICT)
        self.size = len(content)

    @property
    def memory(self) -> int:
        return self.size + DDICT_TABLE_BYTES

    @classmethod
    def train(cls, samples: Sequence[Buffer], size: int) -> Dictionary:
        """A dictionary of at most ``size`` bytes for chunks like ``samples``.

        Raises:
            DictionaryError: the samples are too few or too small to train one.
        """
        try:
            trained = zstandard.train_dictionary(size, [bytes(s) for s in samples],
                                                 k=TRAIN_SEGMENT, d=TRAIN_DMER)
        except zstandard.ZstdError as e:
            raise DictionaryError(str(e)) from None
        return cls(trained.as_bytes())


class Codec:
    """zstd at one level, with per-thread contexts.

    Args:
        level: zstd compression level (negative levels are zstd's fast modes).
        raw_threshold: compressed sizes at or above this are not worth keeping.
        threads: native threads a multi-chunk call spreads its frames over.
        dictionary: compress with it (frames then need it to be decoded).
    """

    def __init__(self, level: int, raw_threshold: int, threads: int = THREADS,
                 dictionary: Dictionary | None = None) -> None:
        self.level = level
        self.raw_threshold = raw_threshold
        self.threads = threads
        self.dictionary = dictionary
        if dictionary is None:
            self._compressor = zstandard.ZstdCompressor(level=level)
        else:
            # Digested once for this level and kept with the codec: given the plain
            # dictionary, every multi-frame call digests it again (corpus, 1 MiB at
            # level 6: 3x the CPU of the compression itself, 6x on two threads).
            digested = zstandard.ZstdCompressionDict(dictionary.zdict.as_bytes(),
                                                     dict_type=zstandard.DICT_TYPE_FULLDICT)
            digested.precompute_compress(level=level)
            self._compressor = zstandard.ZstdCompressor(dict_data=digested,
                                                        write_dict_id=False)
        self._decompressor = zstandard.ZstdDecompressor()
        # A decoder per dictionary met, dropped with the dictionary.
        self._decoders: weakref.WeakKeyDictionary[Dictionary, zstandard.ZstdDecompressor] = (
            weakref.WeakKeyDictionary())

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

    def _decoder(self, dictionary: Dictionary | None) -> zstandard.ZstdDecompressor:
        if dictionary is None:
            return self._decompressor
        decoder = self._decoders.get(dictionary)
        if decoder is None:
            decoder = self._decoders[dictionary] = zstandard.ZstdDecompressor(
                dict_data=dictionary.zdict)
        return decoder

    def decompress(self, payload: Buffer, dictionary: Dictionary | None = None) -> bytes:
        """The content of one frame, made with ``dictionary`` (None: without one)."""
        return self._decoder(dictionary).decompress(payload)

    def decompress_into(self, out: memoryview, frames: Buffer,
                        dictionary: Dictionary | None = None, skip: int = 0) -> None:
        """Fill ``out`` with the content of consecutive ``frames`` (made with ``dictionary``),
        after dropping its first ``skip`` bytes.

        One zstd stream over all the frames, decoded straight into the caller's
        buffer: no object per frame and no copy after. It releases the GIL, so reads
        on two threads decompress on both cores; a multi-frame call spreading the
        same frames over native threads was slower (it starts its threads per call).

        Raises:
            ValueError: the frames hold fewer than ``skip + len(out)`` bytes.
        """
        with self._decoder(dictionary).stream_reader(frames, read_across_frames=True) as reader:
            while skip:
                dropped = len(reader.read(skip))
                if not dropped:
                    raise ValueError("zstd frames end before the bytes asked for")
                skip -= dropped
            pos = 0
            while pos < len(out):
                got = reader.readinto(out[pos:])
                if not got:
                    raise ValueError("zstd frames end before the bytes asked for")
                pos += got

    def decompress_joined(self, frames: Buffer, sizes: Sequence[int],
                          dictionary: Dictionary | None = None) -> bytes:
        """The content of consecutive ``frames`` (``sizes`` are their lengths), end to end,
        decoded in one C call that releases the GIL once.

        ``decompress_into`` streams: zstd's streaming decoder takes and drops the GIL
        once per frame, so on a worker thread, while the event loop ran Python, it
        waited for the GIL 64 times per MiB (with the loop busy half the time, 1 MiB
        of 16 KiB frames took 2.7 ms instead of 1.2; this way 1.2 either way). On the
        thread that holds the loop it is the cheaper of the two: no joined copy.
        """
        segments = array("Q")
        offset = 0
        for size in sizes:
            segments.append(offset)
            segments.append(size)
            offset += size
        if offset != len(frames):
            raise ValueError("frame sizes do not add up to the frames' length")
        decoded = self._decoder(dictionary).multi_decompress_to_buffer(
            zstandard.BufferWithSegments(frames, segments))
        return b"".join([decoded[i] for i in range(len(decoded))])

    def recode_many(self, sources: Sequence[tuple[Buffer, bool, Dictionary | None, int]]
                    ) -> list[tuple[Encoding, Payload]]:
        """Encode chunks held in another form again, with this codec's level and dictionary.

        Each source is (payload, compressed, dictionary, length): a frame (made with
        ``dictionary``) or the raw chunk, of which the first ``length`` bytes are the
        content (the rest is a stale tail left by a truncation, dropped here).
        """
        contents: list[Buffer] = []
        for payload, compressed, dictionary, length in sources:
            content = self.decompress(payload, dictionary) if compressed else payload
            contents.append(memoryview(content)[:length])
        return self.encode_many(contents)
