"""Hypothesis state machines for the tree's packed bookkeeping.

``DirectoryMachine`` drives a Directory against a dict model: adds, removes (which
prune the packed entries once most of them are stale), renames in place (the
cookie stays) and listings resumed from any cookie, which must return exactly the
live entries above it, in the order they were added. ``CollidingDirectoryMachine``
does the same with names whose hashes collide.

``TreeMachine`` drives a Tree through creates, hard links, unlinks, renames,
lookups counted and forgotten, opens and closes, writes and truncates, against a
model of names and inode attributes: numbers of freed inodes come back, the
table's tail is cut once it is at most half used, and its free list (which may
hold numbers cut off) is rebuilt often (a low slack). Every step checks that no
live inode shares a number, that each name reaches the inode the model says, with
its attributes and data, that the table's columns and counters add up, and that
the free list holds every free number below the end once.
"""

from __future__ import annotations

import stat

import pytest
import trio
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from zsfs.chunkstore import ChunkStore
from zsfs.directory import FIRST_COOKIE, Directory
from zsfs import directory as directory_module
from zsfs import slots
from zsfs.inodes import FREE
from zsfs.tree import ROOT_INODE, Tree
from zsfs.zsmalloc import Pool

NAMES = st.sampled_from([b"n%d" % i for i in range(40)])
FILE = stat.S_IFREG | 0o644
DIR = stat.S_IFDIR | 0o755


class DirectoryMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.directory = Directory(1)
        self.model: dict[bytes, tuple[int, int]] = {}   # name -> (ino, cookie)
        self.next_cookie = FIRST_COOKIE
        self.next_ino = 2

    @rule(name=NAMES, many=st.integers(1, 150))
    def add(self, name, many):
        for i in range(many if name not in self.model else 0):
            n = name + b".%d" % i if i else name
            if n in self.model:
                continue
            self.directory.add(n, self.next_ino)
            self.model[n] = (self.next_ino, self.next_cookie)
            self.next_ino += 1
            self.next_cookie += 1

    @rule(data=st.data())
    @precondition(lambda self: self.model)
    def remove_some(self, data):
        names = sorted(self.model)
        for name in data.draw(st.lists(st.sampled_from(names), unique=True, max_size=80)):
            assert self.directory.remove(name) == self.model.pop(name)[0]

    @rule(name=NAMES)
    def remove_missing(self, name):
        if name not in self.model:
            with pytest.raises(KeyError):
                self.directory.remove(name)

    @rule(data=st.data(), ino=st.integers(2, 1 << 39))
    @precondition(lambda self: self.model)
    def replace(self, data, ino):
        name = data.draw(st.sampled_from(sorted(self.model)))
        self.directory.replace(name, ino)
        self.model[name] = (ino, self.model[name][1])

    @rule(data=st.data())
    def list_from(self, data):
        after = data.draw(st.integers(0, self.next_cookie + 1))
        got = list(self.directory.entries_after(after))
        want = sorted(((n, ino, c) for n, (ino, c) in self.model.items() if c > after),
                      key=lambda e: e[2])
        assert got == want

    @invariant()
    def agrees(self):
        d = self.directory
        assert len(d) == len(self.model)
        for name, (ino, _) in self.model.items():
            assert name in d and d.get(name) == ino
        cookies, inos = d._rows[0::4], d._rows[1::4]
        stale = len(cookies) - len(self.model)
        assert stale <= len(self.model) + 64 + 1      # pruned once mostly stale
        assert list(cookies) == sorted(cookies)
        assert 2 * d._used <= len(d._index)           # the index at most half full
        assert sorted(p for p in d._index if p >= 0) == [p for p in range(len(inos)) if inos[p]]


class CollidingDirectoryMachine(DirectoryMachine):
    """The same with a name hash of 32 values, so that lookups walk long probe runs
    past other names, equal hashes and removed entries' slots."""

    def __init__(self) -> None:
        super().__init__()
        directory_module.hash = lambda name: hash(name) % 32 - 16

    def teardown(self) -> None:
        del directory_module.hash


class TreeMachine(RuleBasedStateMachine):
    """The model: named directories (ino -> {name: ino}), and per inode its type, link
    count, kernel lookups, opens and data."""

    def __init__(self) -> None:
        super().__init__()
        self.slack, slots._FREE_LIST_SLACK = slots._FREE_LIST_SLACK, 4  # rebuild it often
        pool = Pool(max_object_size=4096, arena_capacity=64 << 20)
        self.tree = Tree(ChunkStore(pool, 4096, level=1))
        self.dirs: dict[int, dict[bytes, int]] = {ROOT_INODE: {}}
        self.kind: dict[int, int] = {ROOT_INODE: DIR}
        self.links: dict[int, int] = {ROOT_INODE: 2}
        self.lookups: dict[int, int] = {ROOT_INODE: 1}
        self.opens: dict[int, int] = {ROOT_INODE: 0}
        self.data: dict[int, bytes] = {}

    def teardown(self) -> None:
        slots._FREE_LIST_SLACK = self.slack

    def run(self, fn, *args):
        return trio.run(fn, *args)

    def _live(self, ino: int) -> bool:
        return self.links[ino] > 0 or self.lookups[ino] > 0 or self.opens[ino] > 0

    def _maybe_gone(self, ino: int) -> None:
        if not self._live(ino):
            for table in (self.kind, self.links, self.lookups, self.opens):
                del table[ino]
            self.data.pop(ino, None)
            self.dirs.pop(ino, None)

    def _pick_dir(self, data) -> int:
        return data.draw(st.sampled_from(sorted(self.dirs)))

    def _names(self):
        return [(d, n) for d, entries in self.dirs.items() for n in entries]

    @rule(data=st.data(), name=NAMES, is_dir=st.booleans(), many=st.integers(1, 25))
    def create(self, data, name, is_dir, many):
        parent = self._pick_dir(data)
        for i in range(1 if is_dir else many):
            self._create(parent, name + b".%d" % i if i else name, is_dir)

    def _create(self, parent: int, name: bytes, is_dir: bool) -> None:
        if name in self.dirs[parent] or len(self.kind) > 200:
            return
        ino = self.tree.remember(self.tree.create(parent, name, DIR if is_dir else FILE, 0, 0))
        assert ino not in self.kind, "a live inode's number was handed out again"
        self.dirs[parent][name] = ino
        self.kind[ino] = DIR if is_dir else FILE
        self.links[ino] = 2 if is_dir else 1
        self.lookups[ino], self.opens[ino] = 1, 0
        if is_dir:
            self.dirs[ino] = {}
            self.links[parent] += 1
        else:
            self.data[ino] = b""

    @rule(data=st.data(), name=NAMES)
    @precondition(lambda self: any(self.links[i] for i in self.data))
    def link(self, data, name):
        ino = data.draw(st.sampled_from(sorted(i for i in self.data if self.links[i])))
        parent = self._pick_dir(data)
        if name in self.dirs[parent]:
            return
        self.tree.link(ino, parent, name)
        self.dirs[parent][name] = ino
        self.links[ino] += 1

    @rule(data=st.data())
    @precondition(lambda self: self._names())
    def remove(self, data):
        parent, name = data.draw(st.sampled_from(sorted(self._names())))
        ino = self.dirs[parent][name]
        if self.kind[ino] == DIR:
            if self.dirs[ino]:
                return
            self.tree.rmdir(parent, name)
            self.links[ino] = 0
            self.links[parent] -= 1
            del self.dirs[ino]                 # the kernel allows nothing in it any more
        else:
            self.tree.unlink(parent, name)
            self.links[ino] -= 1
        del self.dirs[parent][name]
        self._maybe_gone(ino)

    @rule(data=st.data(), name=NAMES)
    @precondition(lambda self: self._names())
    def rename_file(self, data, name):
        parent, old = data.draw(st.sampled_from(sorted(self._names())))
        ino = self.dirs[parent][old]
        new_parent = self._pick_dir(data)
        target = self.dirs[new_parent].get(name)
        if self.kind[ino] == DIR or (target is not None and self.kind[target] == DIR):
            return
        self.tree.rename(parent, old, new_parent, name)
        if target == ino:
            return
        del self.dirs[parent][old]
        self.dirs[new_parent][name] = ino
        if target is not None:
            self.links[target] -= 1
            self._maybe_gone(target)

    @rule(data=st.data())
    def remove_all_files_of_a_directory(self, data):
        """rm of every file of a directory, then the kernel forgets them: frees in bulk."""
        parent = self._pick_dir(data)
        for name, ino in sorted(self.dirs[parent].items()):
            if self.kind[ino] == DIR:
                continue
            self.tree.unlink(parent, name)
            del self.dirs[parent][name]
            self.links[ino] -= 1
            if self.lookups[ino]:
                self.tree.forget(ino, self.lookups[ino])
                self.lookups[ino] = 0
            self._maybe_gone(ino)

    @rule(data=st.data(), n=st.integers(1, 3))
    def forget(self, data, n):
        ino = data.draw(st.sampled_from(sorted(self.kind)))
        if ino == ROOT_INODE:
            return
        n = min(n, self.lookups[ino])
        self.tree.forget(ino, n)
        self.lookups[ino] -= n
        self._maybe_gone(ino)

    @rule(data=st.data())
    @precondition(lambda self: self.data)
    def open_close(self, data):
        ino = data.draw(st.sampled_from(sorted(self.data)))
        if self.opens[ino] and data.draw(st.booleans()):
            self.tree.close(ino)
            self.opens[ino] -= 1
            self._maybe_gone(ino)
        else:
            self.tree.open(ino)
            self.opens[ino] += 1

    @rule(data=st.data(), offset=st.integers(0, 9000), length=st.integers(0, 5000),
          byte=st.integers(0, 255))
    @precondition(lambda self: self.data)
    def write_or_truncate(self, data, offset, length, byte):
        ino = data.draw(st.sampled_from(sorted(self.data)))
        old = self.data[ino]
        if data.draw(st.booleans()):
            chunk = bytes([byte]) * length
            assert self.run(self.tree.write, ino, offset, chunk) == length
            if length:
                grown = old.ljust(offset, b"\0")
                self.data[ino] = grown[:offset] + chunk + grown[offset + length:]
        else:
            self.run(self.tree.set_size, ino, offset)
            self.data[ino] = old[:offset].ljust(offset, b"\0")

    @invariant()
    def tree_agrees(self):
        tree, t = self.tree, self.tree.table
        assert tree.inode_count == len(self.kind) == sum(
            1 for ino in range(1, len(t)) if t.mode[ino] != FREE)
        for parent, entries in self.dirs.items():
            listed = {name: ino for name, ino, _ in tree.list_dir(parent, 2)}
            assert listed == entries
        for ino, kind in self.kind.items():
            s = tree.stat(ino)
            assert stat.S_IFMT(s.mode) == stat.S_IFMT(kind)
            assert (s.nlink, t.lookups[ino], t.opens[ino]) == (
                self.links[ino], self.lookups[ino], self.opens[ino])
            if ino in self.data:
                assert s.size == len(self.data[ino])
                assert self.run(tree.read, ino, 0, s.size + 10) == self.data[ino]
        for ino in range(1, len(t)):
            if ino not in self.kind:
                assert t.mode[ino] == FREE and t.node[ino] is None and ino not in t.xattrs
                assert t.data[ino] == 0
        reusable = [ino for ino in t._free if ino < len(t)]
        assert sorted(reusable) == sorted(set(range(1, len(t))) - set(self.kind))
        assert t.mode[-1] != FREE or 2 * tree.inode_count > len(t)
        maps = [t.data[ino] for ino in self.kind if t.data[ino]]
        assert len(set(maps)) == len(maps) == tree.store.maps.count
        if not self.data:                                 # every file gone: nothing left
            assert tree.store.chunks == 0 and tree.store.pool.pages_used == 0


_SETTINGS = settings(max_examples=60, stateful_step_count=60, deadline=None,
                     suppress_health_check=[HealthCheck.too_slow])
TestDirectory = DirectoryMachine.TestCase
TestDirectory.settings = _SETTINGS
TestCollidingDirectory = CollidingDirectoryMachine.TestCase
TestCollidingDirectory.settings = settings(_SETTINGS, max_examples=10)
TestTree = TreeMachine.TestCase
TestTree.settings = _SETTINGS
