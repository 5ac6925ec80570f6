"""Unit and model-based tests of the packed chunk maps (chunkmaps.py, slots.py)."""

from array import array

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from zsfs import slots
from zsfs.chunkmaps import ChunkMaps

WIDE = 1 << 70                 # an entry too wide for the column (a fill word's)


def test_chunk_zero_lives_in_the_column_and_the_rest_in_an_array():
    maps = ChunkMaps()
    m = maps.new()
    assert (maps.get(m, 0), maps.chunks(m), maps.indexes(m), maps.stored[m]) == (None, 0, [], 0)
    maps.set(m, 0, 50)
    maps.set(m, 0, 51)
    assert (maps.get(m, 0), maps.get(m, 1), maps.chunks(m), maps._more) == (51, None, 1, {})
    maps.set(m, 7, 70)
    assert sorted(maps.indexes(m)) == [0, 7] and sorted(maps.entries(m)) == [51, 70]
    assert maps.pop(m, 7) == 70
    assert (maps.get(m, 0), maps.chunks(m), maps._more) == (51, 1, {})     # back in the column
    with pytest.raises(KeyError):
        maps.pop(m, 7)
    maps.set(m, 5, 55)                          # a lone chunk other than 0 stays in the array
    assert maps.pop(m, 0) == 51 and maps._more == {m: array("Q", [0, 0, 0, 0, 0, 55])}
    assert maps.get(m, 0) is None and maps.indexes(m) == [5] and maps.chunks(m) == 1
    assert maps.pop(m, 5) == 55 and maps.chunks(m) == 0 and maps._more == {}


def test_an_array_holds_a_file_written_in_order_and_a_dict_a_sparse_one():
    maps = ChunkMaps()
    dense, sparse = maps.new(), maps.new()
    for index in range(300):
        maps.set(dense, index, index + 1)
    maps.set(sparse, 0, 1)
    maps.set(sparse, 10_000, 2)                 # an array would be 80 KB of holes
    assert type(maps._more[dense]) is array and len(maps._more[dense]) == 300
    assert maps._more[sparse] == {0: 1, 10_000: 2}
    assert maps.memory() - ChunkMaps().memory() < 300 * 8 + 1024
    for index in range(299, 0, -1):             # truncated from the end: the array shrinks
        assert maps.pop(dense, index) == index + 1
        assert len(maps._more.get(dense, ())) in (index, 0)
    assert maps._more == {sparse: {0: 1, 10_000: 2}} and maps.get(dense, 0) == 1


def test_a_wide_entry_goes_to_a_dict_even_for_chunk_zero():
    maps = ChunkMaps()
    m = maps.new()
    maps.set(m, 0, WIDE)
    assert maps.get(m, 0) == WIDE and maps.entries(m) == [WIDE] and m in maps._more
    maps.set(m, 1, 9)
    assert maps.pop(m, 1) == 9 and maps.get(m, 0) == WIDE    # stays: it does not fit
    maps.set(m, 0, 3)
    maps.set(m, 2, 4)
    assert maps.pop(m, 2) == 4 and maps._more == {} and maps.get(m, 0) == 3


def test_numbers_are_reused_and_the_columns_shrink_when_maps_go():
    maps = ChunkMaps()
    numbers = [maps.new() for _ in range(5000)]
    assert numbers == list(range(1, 5001)) and maps.count == 5000
    for m in numbers[::-1]:
        maps.set(m, 0, m)
        maps.stored[m] = 4096
    for m in numbers:
        maps.pop(m, 0)
        maps.free(m)
    assert maps.count == 0 and len(maps) == 1 and maps.memory() < 2048
    assert maps.new() == 1 and maps.stored[1] == 0 and maps.get(1, 0) is None


def test_lookup_allows_for_a_map_gone_meanwhile():
    maps = ChunkMaps()
    a, b = maps.new(), maps.new()
    maps.set(b, 0, 8)
    maps.free(a)
    assert maps.lookup(a, 0) is None and maps.lookup(b, 0) == 8
    maps.pop(b, 0)
    maps.free(b)                                # the columns are cut: b is past the end
    assert maps.lookup(b, 0) is None


class ChunkMapsMachine(RuleBasedStateMachine):
    """The model: map number -> {chunk index: entry} and stored bytes."""

    def __init__(self) -> None:
        super().__init__()
        self.slack, slots._FREE_LIST_SLACK = slots._FREE_LIST_SLACK, 2
        self.maps = ChunkMaps()
        self.model: dict[int, dict[int, int]] = {}
        self.stored: dict[int, int] = {}

    def teardown(self) -> None:
        slots._FREE_LIST_SLACK = self.slack

    @rule()
    def new(self) -> None:
        m = self.maps.new()
        assert m not in self.model
        self.model[m], self.stored[m] = {}, 0

    @precondition(lambda self: self.model)
    @rule(pick=st.integers(0), index=st.sampled_from([0, 0, 1, 2, 70, 1000]),
          entry=st.one_of(st.integers(1, (1 << 64) - 1), st.just(WIDE)),
          stored=st.integers(0, 1 << 40))
    def set(self, pick: int, index: int, entry: int, stored: int) -> None:
        m = sorted(self.model)[pick % len(self.model)]
        self.maps.set(m, index, entry)
        self.maps.stored[m] = stored
        self.model[m][index], self.stored[m] = entry, stored

    @precondition(lambda self: any(self.model.values()))
    @rule(pick=st.integers(0), which=st.integers(0))
    def pop(self, pick: int, which: int) -> None:
        full = sorted(m for m, chunks in self.model.items() if chunks)
        m = full[pick % len(full)]
        index = sorted(self.model[m])[which % len(self.model[m])]
        assert self.maps.pop(m, index) == self.model[m].pop(index)

    @precondition(lambda self: self.model)
    @rule(pick=st.integers(0))
    def free(self, pick: int) -> None:
        m = sorted(self.model)[pick % len(self.model)]
        for index in list(self.model[m]):
            self.maps.pop(m, index)
        self.maps.free(m)
        del self.model[m], self.stored[m]

    @invariant()
    def matches_the_model(self) -> None:
        maps = self.maps
        assert maps.count == len(self.model)
        for m, chunks in self.model.items():
            assert dict(zip(maps.indexes(m), maps.entries(m))) == chunks
            assert maps.chunks(m) == len(chunks) and maps.stored[m] == self.stored[m]
            for index in (0, 1, 2, 70, 1000):
                assert maps.get(m, index) == maps.lookup(m, index) == chunks.get(index)
        for m in range(1, len(maps)):
            if m not in self.model:
                assert maps.lookup(m, 0) is None and maps.stored[m] == (1 << 64) - 1
        assert set(maps._more) <= set(self.model)
        assert len(maps) == 1 or maps.stored[len(maps) - 1] != (1 << 64) - 1 or (
            2 * maps.count > len(maps))


TestChunkMaps = ChunkMapsMachine.TestCase
TestChunkMaps.settings = settings(max_examples=80, stateful_step_count=60, deadline=None)
