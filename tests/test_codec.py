"""Unit tests of chunk encoding: fill detection, zstd, the raw fallback."""

import os

import pytest

from zsfs.codec import Codec, Encoding, fill_bytes, fill_word


@pytest.mark.parametrize("chunk, word", [
    (bytes(16384), 0),
    (b"\xab" * 4096, int.from_bytes(b"\xab" * 8, "little")),
    (b"12345678" * 512, int.from_bytes(b"12345678", "little")),
    (b"abcdefgh", int.from_bytes(b"abcdefgh", "little")),
])
def test_fill_word_finds_repeated_words(chunk, word):
    assert fill_word(chunk) == word
    assert fill_word(memoryview(chunk)) == word
    assert fill_bytes(word, len(chunk)) == chunk


@pytest.mark.parametrize("chunk", [
    b"",
    bytes(4095),                       # not a whole number of words
    bytes(4095) + b"\x01",             # differs in the last byte only
    b"\x01" + bytes(4095),             # differs in the first byte only
    (b"abcdefghi" * 456)[:4096],       # a 9-byte period is not an 8-byte fill
    b"12345678" * 511 + b"12345679",
])
def test_fill_word_rejects_everything_else(chunk):
    assert fill_word(chunk) is None


def test_fill_bytes_of_any_length():
    word = int.from_bytes(b"ABCDEFGH", "little")
    assert fill_bytes(word, 0) == b""
    assert fill_bytes(word, 3) == b"ABC"
    assert fill_bytes(word, 11) == b"ABCDEFGHABC"


def test_encode_picks_the_cheapest_form():
    codec = Codec(level=1, raw_threshold=15000)
    kind, word = codec.encode(bytes(16384))
    assert (kind, word) == (Encoding.FILL, 0)

    text = b"the quick brown fox jumps over the lazy dog\n" * 372
    kind, payload = codec.encode(text)
    assert kind == Encoding.ZSTD and len(payload) < len(text) // 10
    assert codec.decompress(payload) == text
    assert codec.decompress(memoryview(payload)) == text

    noise = os.urandom(16384)
    kind, payload = codec.encode(noise)
    assert kind == Encoding.RAW and bytes(payload) == noise


def test_raw_when_compression_does_not_reach_the_threshold():
    half_noise = os.urandom(8192) + bytes(8192)      # compresses to about 8 KiB
    assert Codec(1, raw_threshold=4096).encode(half_noise)[0] == Encoding.RAW
    assert Codec(1, raw_threshold=15000).encode(half_noise)[0] == Encoding.ZSTD


def test_small_incompressible_chunks_are_raw():
    tiny = b"xq"                                     # zstd's frame is bigger than this
    kind, payload = Codec(1, raw_threshold=15000).encode(tiny)
    assert kind == Encoding.RAW and bytes(payload) == tiny


def test_levels_are_honoured():
    data = b"".join(b"%d,%d\n" % (i, i * i) for i in range(4000))
    fast = Codec(-5, 1 << 20).encode(data)[1]
    strong = Codec(19, 1 << 20).encode(data)[1]
    assert len(strong) < len(fast)


def lines(seed: int) -> bytes:
    """15,000 compressible bytes, different for each seed."""
    return b"".join(b"%d:%d " % (seed, j) for j in range(3000))[:15000]


def test_decompress_into_reads_consecutive_frames_as_one_stream():
    codec = Codec(level=1, raw_threshold=15000)
    parts = [lines(i) for i in range(4)]
    frames = b"".join(codec.encode(p)[1] for p in parts)
    whole = b"".join(parts)
    for skip, length in [(0, len(whole)), (0, 1), (7, 20000), (14999, 2), (30001, 29999)]:
        out = bytearray(length)
        codec.decompress_into(memoryview(out), frames, skip=skip)
        assert out == whole[skip:skip + length]


def test_decompress_joined_decodes_consecutive_frames_in_one_call():
    codec = Codec(level=1, raw_threshold=15000)
    parts = [lines(i) for i in range(4)]
    frames = [codec.encode(p)[1] for p in parts]
    sizes = [len(f) for f in frames]
    assert codec.decompress_joined(b"".join(frames), sizes) == b"".join(parts)
    with pytest.raises(ValueError, match="add up"):
        codec.decompress_joined(b"".join(frames), sizes[:3])


@pytest.mark.parametrize("skip, length", [(0, 60001), (60000, 1), (60001, 0)])
def test_decompress_into_refuses_to_read_past_the_frames(skip, length):
    codec = Codec(level=1, raw_threshold=15000)
    frames = b"".join(codec.encode(lines(i))[1] for i in range(4))
    with pytest.raises(ValueError, match="end before"):
        codec.decompress_into(memoryview(bytearray(length)), frames, skip=skip)
