"""A hypothesis state machine drives a Pool against a dict model (handle -> bytes).

Rules: malloc (random sizes and the edges: 1, the 32-byte class, the huge
watermark, the maximum), write, free, full compaction, a few slices of a
compaction that stays in progress while other rules run, and changes of the
memory limit (0, below current use, at it, above it). After every step every live
object must read back exactly and the statistics must add up.
"""

from __future__ import annotations

import random

import pytest
from hypothesis import HealthCheck, Phase, settings
from hypothesis import strategies as st
from hypothesis.stateful import (RuleBasedStateMachine, initialize, invariant, precondition,
                                 rule)

from zsfs.arena import PAGE_SIZE
from zsfs.zsmalloc import InvalidHandle, Pool, PoolFull

from test_zsmalloc import check_groups

#: zspage chains are at most this long for objects up to 16 KiB, and at most four
#: objects' worth of pages above that.
def max_chain(max_object_size: int) -> int:
    return max(16, 4 * (max_object_size // PAGE_SIZE))


def data_for(seed: int, size: int) -> bytes:
    if seed % 3 == 0:                       # compressible-looking bytes
        return (seed.to_bytes(8, "little") * (size // 8 + 1))[:size]
    return random.Random(seed).randbytes(size)


class PoolMachine(RuleBasedStateMachine):
    MAX = 4096

    def __init__(self) -> None:
        super().__init__()
        self.pool = Pool(max_object_size=self.MAX, arena_capacity=256 << 20)
        self.model: dict[int, bytes] = {}
        self.freed: list[int] = []          # handles freed and not handed out again
        self.steps = None                   # a compaction in progress
        hcs = self.pool.huge_class_size
        self.edges = sorted({1, 27, 28, 29, 32, 100, 1356, hcs - 1, hcs, self.MAX - 1, self.MAX})

    # -- rules ------------------------------------------------------------------

    @initialize(data=st.data())
    def choose_palette(self, data):
        # A few sizes used most of the time, so that classes fill, zspages fill up and
        # empty again, and compaction has partly used zspages to work on.
        self.palette = data.draw(st.lists(
            st.one_of(st.integers(1, self.MAX), st.sampled_from(self.edges)),
            min_size=1, max_size=3), label="palette")

    @rule(data=st.data(), seed=st.integers(0, 2**32))
    def malloc(self, data, seed):
        size = data.draw(st.one_of(st.integers(1, self.MAX), st.sampled_from(self.edges)),
                         label="size")
        self.do_malloc(size, seed)

    @rule(data=st.data(), seed=st.integers(0, 2**32), count=st.integers(1, 24))
    def malloc_palette(self, data, seed, count):
        for i in range(count):
            self.do_malloc(data.draw(st.sampled_from(self.palette), label="size"), seed + i)

    def do_malloc(self, size: int, seed: int) -> None:
        before = self.pool.stats()
        try:
            h = self.pool.malloc(size)
        except PoolFull:
            # Only a new zspage can be refused, and only by the limit.
            assert before.mem_limit
            assert before.mem_used + max_chain(self.MAX) * PAGE_SIZE > before.mem_limit
            assert self.pool.stats() == before
            return
        after = self.pool.stats()
        if after.pages_used > before.pages_used and after.mem_limit:
            assert after.mem_used <= after.mem_limit
        assert isinstance(h, int) and h > 0
        assert h not in self.model
        self.check_placement(before, after)
        if h in self.freed:
            self.freed.remove(h)
        payload = data_for(seed, size)
        self.pool.write(h, payload)
        self.model[h] = payload

    @staticmethod
    def check_placement(before, after):
        """The new object went to the fullest zspage with room, or to a new zspage
        only when its class had no room at all (as far as the buckets show it)."""
        rows_before = {c.index: c for c in before.classes}
        changed = [c for c in after.classes
                   if c.obj_used != getattr(rows_before.get(c.index), "obj_used", 0)]
        assert len(changed) == 1
        row = changed[0]
        old = rows_before.get(row.index)
        old_fullness = old.fullness if old else (0,) * 11
        with_room = [b for b in range(10) if old_fullness[b]]
        if row.pages_used > (old.pages_used if old else 0):
            assert not with_room, f"new zspage although zspages had room: {old_fullness}"
            return
        assert with_room
        left = [b for b in range(11) if row.fullness[b] < old_fullness[b]]
        if left:                       # the receiving zspage changed bucket: which one?
            assert left == [max(with_room)], (
                f"object went to a zspage in bucket {left}, the fullest with room is "
                f"in bucket {max(with_room)}: {old_fullness} -> {row.fullness}")

    @precondition(lambda self: self.model)
    @rule(data=st.data(), seed=st.integers(0, 2**32))
    def write(self, data, seed):
        h = data.draw(st.sampled_from(sorted(self.model)), label="handle")
        payload = data_for(seed, len(self.model[h]))
        self.pool.write(h, payload)
        self.model[h] = payload

    @precondition(lambda self: self.model)
    @rule(data=st.data())
    def free(self, data):
        h = data.draw(st.sampled_from(sorted(self.model)), label="handle")
        self.pool.free(h)
        del self.model[h]
        self.freed.append(h)

    @precondition(lambda self: self.model)
    @rule(data=st.data(), count=st.integers(1, 12))
    def free_some(self, data, count):
        for _ in range(min(count, len(self.model))):
            h = data.draw(st.sampled_from(sorted(self.model)), label="handle")
            self.pool.free(h)
            del self.model[h]
            self.freed.append(h)

    @precondition(lambda self: self.freed)
    @rule(data=st.data())
    def use_freed_handle(self, data):
        h = data.draw(st.sampled_from(self.freed), label="freed handle")
        before = self.pool.stats()
        for op in (self.pool.free, self.pool.read, self.pool.size):
            with pytest.raises(InvalidHandle):
                op(h)
        with pytest.raises(InvalidHandle):
            self.pool.write(h, b"x")
        assert self.pool.stats() == before

    @precondition(lambda self: self.model)
    @rule(data=st.data())
    def write_wrong_length(self, data):
        h = data.draw(st.sampled_from(sorted(self.model)), label="handle")
        n = len(self.model[h])
        with pytest.raises(ValueError):
            self.pool.write(h, b"\xee" * (n + data.draw(st.sampled_from([-1, 1]))))

    @rule(size=st.sampled_from([0, -1, -4096]) | st.integers(MAX + 1, 1 << 20))
    def malloc_bad_size(self, size):
        if 0 < size <= self.MAX:
            return
        before = self.pool.stats()
        with pytest.raises(ValueError):
            self.pool.malloc(size)
        assert self.pool.stats() == before

    @rule()
    def compact(self):
        before = self.pool.stats()
        freed = self.pool.compact()
        after = self.pool.stats()
        assert freed >= before.freeable
        assert after.pages_used == before.pages_used - freed
        assert after.pages_compacted == before.pages_compacted + freed
        assert after.freeable == 0
        assert self.pool.arena.pages_used == after.pages_used
        self.steps = None           # a full compaction supersedes one in progress

    @rule(budget=st.integers(1, 40), slices=st.integers(1, 4))
    def compact_slices(self, budget, slices):
        if self.steps is None:
            self.steps = self.pool.compact_steps(budget=budget)
        for _ in range(slices):
            before = self.pool.stats()
            try:
                freed = next(self.steps)
            except StopIteration:
                self.steps = None
                break
            after = self.pool.stats()
            assert after.pages_used == before.pages_used - freed
            assert after.pages_compacted == before.pages_compacted + freed

    @rule(choice=st.sampled_from(["zero", "below", "at", "above"]), pages=st.integers(0, 64))
    def set_limit(self, choice, pages):
        used = self.pool.stats().mem_used
        limit = {
            "zero": 0,
            "below": max(1, used - pages * PAGE_SIZE),
            "at": used,
            "above": used + pages * PAGE_SIZE,
        }[choice]
        self.pool.mem_limit = limit
        assert self.pool.stats().mem_limit == limit

    # -- invariants ----------------------------------------------------------------

    @invariant()
    def objects_intact(self):
        for h, payload in self.model.items():
            assert self.pool.size(h) == len(payload)
            assert bytes(self.pool.read(h)) == payload, f"object {h} corrupted"

    @invariant()
    def zspage_lists_hold_every_zspage(self):
        check_groups(self.pool)

    @invariant()
    def stats_add_up(self):
        pool = self.pool
        s = pool.stats()
        assert s.objects == len(self.model) == sum(c.obj_used for c in s.classes)
        assert s.obj_bytes == sum(len(v) for v in self.model.values())
        assert s.pages_used == sum(c.pages_used for c in s.classes) == pool.arena.pages_used
        assert s.mem_used == s.pages_used * PAGE_SIZE
        assert s.mem_used <= s.mem_used_max
        assert s.frag_ratio == pytest.approx(s.obj_bytes / s.mem_used if s.mem_used else 1.0)
        assert s.freeable == sum(c.freeable for c in s.classes)
        for c in s.classes:
            zspages = c.pages_used // c.pages_per_zspage
            assert zspages * c.pages_per_zspage == c.pages_used and zspages > 0
            assert len(c.fullness) == 11 and sum(c.fullness) == zspages
            objs = c.obj_allocated // zspages
            assert objs * zspages == c.obj_allocated
            assert objs == c.pages_per_zspage * PAGE_SIZE // c.size
            assert 0 < c.obj_used <= c.obj_allocated
            assert c.freeable == (c.obj_allocated - c.obj_used) // objs * c.pages_per_zspage
            # A full zspage counts in the last bucket; as many full ones as possible.
            assert c.fullness[10] <= c.obj_used // objs


class BigPoolMachine(PoolMachine):
    MAX = 65536


class MidPoolMachine(PoolMachine):
    MAX = 16384


# No shrinking: shrinking these long programs of data draws can take minutes, and an
# unshrunk failure still prints every step (and its seed) and is replayed from the
# example database on the next run. Add Phase.shrink locally when debugging.
_settings = settings(max_examples=60, stateful_step_count=50, deadline=None,
                     phases=[Phase.explicit, Phase.reuse, Phase.generate],
                     suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

TestPool4K = PoolMachine.TestCase
TestPool4K.settings = _settings
TestPool64K = BigPoolMachine.TestCase
TestPool64K.settings = settings(_settings, max_examples=30)
TestPool16K = MidPoolMachine.TestCase
TestPool16K.settings = settings(_settings, max_examples=20)
