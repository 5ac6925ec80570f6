"""Unit tests of the inode tree, driven directly (the mount tests cover it through FUSE)."""

import errno
import random
import stat

import pytest

from zsfs.chunkstore import ChunkStore
from zsfs.tree import RENAME_EXCHANGE, RENAME_NOREPLACE, ROOT_INODE, Tree
from zsfs.zsmalloc import Pool

FILE = stat.S_IFREG | 0o644
DIR = stat.S_IFDIR | 0o755


def make_tree(**kwargs) -> Tree:
    store = ChunkStore(Pool(max_object_size=16384, arena_capacity=1 << 28), 16384, level=1)
    return Tree(store, **kwargs)


def errno_of(fn, *args) -> int:
    with pytest.raises(OSError) as e:
        fn(*args)
    return e.value.errno


def names(tree: Tree, ino: int, after: int = 0) -> list[bytes]:
    return [name for name, _, _ in tree.list_dir(ino, after)]


def test_names_and_their_errors():
    tree = make_tree()
    f = tree.create(ROOT_INODE, b"f", FILE, 0, 0)
    d = tree.create(ROOT_INODE, b"d", DIR, 0, 0)
    assert tree.lookup(ROOT_INODE, b"f") == f
    assert tree.lookup(d, b"..") == ROOT_INODE and tree.lookup(d, b".") == d
    assert errno_of(tree.create, ROOT_INODE, b"f", FILE, 0, 0) == errno.EEXIST
    assert errno_of(tree.create, ROOT_INODE, b"x" * 256, FILE, 0, 0) == errno.ENAMETOOLONG
    assert errno_of(tree.lookup, ROOT_INODE, b"x" * 256) == errno.ENAMETOOLONG
    assert errno_of(tree.lookup, ROOT_INODE, b"missing") == errno.ENOENT
    assert errno_of(tree.lookup, f, b"x") == errno.ENOTDIR
    assert errno_of(tree.unlink, ROOT_INODE, b"d") == errno.EISDIR
    assert errno_of(tree.rmdir, ROOT_INODE, b"f") == errno.ENOTDIR
    assert errno_of(tree.link, d, ROOT_INODE, b"d2") == errno.EPERM
    tree.create(d, b"inner", FILE, 0, 0)
    assert errno_of(tree.rmdir, ROOT_INODE, b"d") == errno.ENOTEMPTY
    assert tree.stat(tree.create(ROOT_INODE, b"y" * 255, FILE, 0, 0)).nlink == 1
    for missing in (0, -1, 12345):
        assert errno_of(tree.stat, missing) == errno.ENOENT
        assert errno_of(tree.lookup, missing, b"x") == errno.ENOENT
        assert errno_of(tree.create, missing, b"x", FILE, 0, 0) == errno.ENOENT
        assert errno_of(tree.get_xattr, missing, b"user.x") == errno.ENOENT


def nlink(tree: Tree, ino: int) -> int:
    return tree.stat(ino).nlink


def test_link_counts():
    tree = make_tree()
    a = tree.create(ROOT_INODE, b"a", DIR, 0, 0)
    tree.create(a, b"b", DIR, 0, 0)
    assert (nlink(tree, ROOT_INODE), nlink(tree, a)) == (3, 3)
    f = tree.create(a, b"f", FILE, 0, 0)
    tree.link(f, ROOT_INODE, b"f2")
    assert nlink(tree, f) == 2
    tree.unlink(a, b"f")
    assert nlink(tree, f) == 1 and tree.lookup(ROOT_INODE, b"f2") == f
    tree.rename(a, b"b", ROOT_INODE, b"b")
    assert (nlink(tree, ROOT_INODE), nlink(tree, a)) == (4, 2)


def test_setgid_directories_pass_on_their_group():
    tree = make_tree()
    shared = tree.create(ROOT_INODE, b"shared", DIR | stat.S_ISGID, 0, 50)
    f = tree.stat(tree.create(shared, b"f", FILE, 1000, 1000))
    sub = tree.stat(tree.create(shared, b"sub", DIR, 1000, 1000))
    assert f.gid == 50 and sub.gid == 50 and sub.mode & stat.S_ISGID and not f.mode & stat.S_ISGID


def test_readdir_cookies_survive_creates_and_deletes():
    tree = make_tree()
    for i in range(100):
        tree.create(ROOT_INODE, b"f%03d" % i, FILE, 0, 0)
    listing = list(tree.list_dir(ROOT_INODE, 0))
    assert [n for n, _, _ in listing[:2]] == [b".", b".."]
    cookie_after_50 = listing[2 + 50][2]
    for i in range(0, 50):                       # delete what was already listed
        tree.unlink(ROOT_INODE, b"f%03d" % i)
    tree.unlink(ROOT_INODE, b"f075")             # and one not yet listed
    tree.create(ROOT_INODE, b"new", FILE, 0, 0)  # a new entry comes after the old ones
    rest = names(tree, ROOT_INODE, cookie_after_50)
    expected = [b"f%03d" % i for i in range(51, 100) if i != 75] + [b"new"]
    assert rest == expected


def test_rename_rules():
    tree = make_tree()
    d1 = tree.create(ROOT_INODE, b"d1", DIR, 0, 0)
    d2 = tree.create(ROOT_INODE, b"d2", DIR, 0, 0)
    tree.create(d2, b"x", FILE, 0, 0)
    f = tree.create(ROOT_INODE, b"f", FILE, 0, 0)
    g = tree.create(ROOT_INODE, b"g", FILE, 0, 0)
    assert errno_of(tree.rename, ROOT_INODE, b"d1", ROOT_INODE, b"d2") == errno.ENOTEMPTY
    assert errno_of(tree.rename, ROOT_INODE, b"f", ROOT_INODE, b"d1") == errno.EISDIR
    assert errno_of(tree.rename, ROOT_INODE, b"d1", ROOT_INODE, b"f") == errno.ENOTDIR
    assert errno_of(tree.rename, ROOT_INODE, b"d2", d2, b"in") == errno.EINVAL
    assert errno_of(tree.rename, ROOT_INODE, b"f", ROOT_INODE, b"g", RENAME_NOREPLACE) == errno.EEXIST
    assert errno_of(tree.rename, ROOT_INODE, b"f", ROOT_INODE, b"zz", RENAME_EXCHANGE) == errno.ENOENT
    assert errno_of(tree.rename, ROOT_INODE, b"f", ROOT_INODE, b"g",
                    RENAME_NOREPLACE | RENAME_EXCHANGE) == errno.EINVAL
    tree.rename(ROOT_INODE, b"f", ROOT_INODE, b"d1", RENAME_EXCHANGE)
    assert tree.lookup(ROOT_INODE, b"d1") == f and tree.lookup(ROOT_INODE, b"f") == d1
    tree.rename(ROOT_INODE, b"g", ROOT_INODE, b"d1")      # replaces f, which had one name
    assert tree.lookup(ROOT_INODE, b"d1") == g and f not in tree.table
    tree.rename(ROOT_INODE, b"d1", ROOT_INODE, b"d1")     # same entry: nothing happens
    assert tree.lookup(ROOT_INODE, b"d1") == g


async def test_unlinked_open_files_live_until_closed_and_forgotten():
    tree = make_tree()
    f = tree.remember(tree.create(ROOT_INODE, b"f", FILE, 0, 0))
    tree.open(f)
    assert await tree.write(f, 0, b"data" * 10000) == 40000
    tree.unlink(ROOT_INODE, b"f")
    assert nlink(tree, f) == 0 and await tree.read(f, 0, 4) == b"data"
    tree.close(f)
    assert f in tree.table                       # the kernel still knows it
    tree.forget(f, 1)
    assert f not in tree.table and tree.store.pool.pages_used == 0


def test_nr_inodes_limit():
    tree = make_tree(nr_inodes=3)
    tree.create(ROOT_INODE, b"a", FILE, 0, 0)
    tree.create(ROOT_INODE, b"b", FILE, 0, 0)
    assert errno_of(tree.create, ROOT_INODE, b"c", FILE, 0, 0) == errno.ENOSPC
    tree.unlink(ROOT_INODE, b"a")
    tree.create(ROOT_INODE, b"c", FILE, 0, 0)


def test_xattrs():
    tree = make_tree()
    f = tree.create(ROOT_INODE, b"f", FILE, 0, 0)
    tree.set_xattr(f, b"user.a", b"1")
    assert tree.get_xattr(f, b"user.a") == b"1" and tree.list_xattrs(f) == [b"user.a"]
    assert errno_of(tree.get_xattr, f, b"user.b") == errno.ENODATA
    assert errno_of(tree.remove_xattr, f, b"user.b") == errno.ENODATA
    assert errno_of(tree.set_xattr, f, b"foo.bar", b"") == errno.EOPNOTSUPP
    assert errno_of(tree.set_xattr, f, b"user." + b"n" * 251, b"") == errno.ERANGE
    assert errno_of(tree.set_xattr, f, b"user.big", bytes(65537)) == errno.E2BIG
    tree.set_xattr(f, b"user.big", bytes(65536))
    tree.remove_xattr(f, b"user.a")
    assert tree.list_xattrs(f) == [b"user.big"]


def test_readdir_resumes_after_stale_cookies_are_pruned():
    tree = make_tree()
    for i in range(1000):
        tree.create(ROOT_INODE, b"n%04d" % i, FILE, 0, 0)
    listing = list(tree.list_dir(ROOT_INODE, 0))
    resume_at = listing[2 + 500][2]            # the cookie of n0500
    for i in range(1000):
        if i % 10:                             # delete nine in ten, on both sides
            tree.unlink(ROOT_INODE, b"n%04d" % i)
    assert len(tree.table.node[ROOT_INODE]._rows) < 4 * 300   # stale cookies were pruned
    assert names(tree, ROOT_INODE, resume_at) == [b"n%04d" % i for i in range(510, 1000, 10)]
    assert names(tree, ROOT_INODE)[2:] == [b"n%04d" % i for i in range(0, 1000, 10)]


def test_inode_numbers_are_reused_and_the_table_shrinks_back():
    tree = make_tree()
    inos = [tree.create(ROOT_INODE, b"f%05d" % i, FILE, 0, 0) for i in range(5000)]
    assert inos == list(range(2, 5002))            # dense: slot numbers
    full = tree.table.memory()
    tree.unlink(ROOT_INODE, b"f00100")
    assert tree.create(ROOT_INODE, b"again", FILE, 0, 0) == inos[100]   # a freed number
    for i in range(5000):
        if i != 100:
            tree.unlink(ROOT_INODE, b"f%05d" % i)
    tree.unlink(ROOT_INODE, b"again")
    assert tree.inode_count == 1 and len(tree.table) == 2
    assert tree.table.memory() < full / 2
    f = tree.create(ROOT_INODE, b"new", FILE, 0, 0)
    assert tree.stat(f).nlink == 1 and tree.lookup(ROOT_INODE, b"new") == f


@pytest.mark.parametrize("order", ["created", "reversed", "shuffled"])
def test_the_table_shrinks_to_nothing_whatever_order_files_go_in(order):
    """As ``rm -rf`` frees them: the entries of a directory in some order, then the
    directory."""
    tree = make_tree()
    d = tree.create(ROOT_INODE, b"d", DIR, 0, 0)
    names = [b"f%05d" % i for i in range(6000)]
    for name in names:
        tree.create(d, name, FILE, 0, 0)
    if order == "reversed":
        names.reverse()
    elif order == "shuffled":
        random.Random(7).shuffle(names)
    for name in names:
        tree.unlink(d, name)
    assert len(tree.table) == 3                     # slot 0, the root and d
    tree.rmdir(ROOT_INODE, b"d")
    assert tree.inode_count == 1 and len(tree.table) == 2
    assert len(tree.table._free) <= 1024
    assert tree.create(ROOT_INODE, b"new", FILE, 0, 0) == 2


def test_a_reused_number_starts_clean():
    tree = make_tree(acl=True)
    f = tree.create(ROOT_INODE, b"f", FILE, 5, 6)
    tree.set_xattr(f, b"user.a", b"1")
    tree.set_attributes(f, atime_ns=1, mtime_ns=2)
    tree.unlink(ROOT_INODE, b"f")
    g = tree.create(ROOT_INODE, b"g", stat.S_IFLNK | 0o777, 0, 0, target=b"t")
    assert g == f
    s = tree.stat(g)
    assert (s.uid, s.gid, s.size, s.stored_bytes, s.nlink) == (0, 0, 1, 0, 1)
    assert s.atime_ns == s.mtime_ns == s.ctime_ns > 2
    assert tree.list_xattrs(g) == [] and tree.readlink(g) == b"t"
    assert tree.extra_bytes == tree._extra_bytes(g)


async def test_an_empty_file_has_no_chunk_map_until_it_gets_data():
    tree = make_tree()
    f = tree.create(ROOT_INODE, b"f", FILE, 0, 0)
    assert tree.table.data[f] == 0
    await tree.set_size(f, 100000)                  # a hole needs no map either
    assert tree.table.data[f] == 0 and await tree.read(f, 99990, 100) == bytes(10)
    await tree.set_size(f, 0)
    assert await tree.write(f, 5, b"x") == 1
    assert tree.table.data[f] != 0 and await tree.read(f, 0, 10) == bytes(5) + b"x"
    assert errno_of(tree.readlink, f) == errno.EINVAL
    d = tree.create(ROOT_INODE, b"d", DIR, 0, 0)
    with pytest.raises(OSError) as e:
        await tree.set_size(d, 0)
    assert e.value.errno == errno.EISDIR


def test_devices_keep_their_number():
    tree = make_tree()
    dev = tree.create(ROOT_INODE, b"null", stat.S_IFCHR | 0o666, 0, 0, rdev=0x103)
    fifo = tree.create(ROOT_INODE, b"fifo", stat.S_IFIFO | 0o666, 0, 0)
    assert (tree.stat(dev).rdev, tree.stat(fifo).rdev) == (0x103, 0)
    assert tree.stats().special == 2


def test_timestamps_beyond_64_bit_nanoseconds_are_clamped():
    tree = make_tree()
    f = tree.create(ROOT_INODE, b"f", FILE, 0, 0)
    tree.set_attributes(f, atime_ns=-(1 << 70), mtime_ns=1 << 70)
    s = tree.stat(f)
    assert (s.atime_ns, s.mtime_ns) == (-(1 << 63), (1 << 63) - 1)
    tree.set_attributes(f, atime_ns=-5, mtime_ns=5 * 10**18)
    assert tree.stat(f)[8:10] == (-5, 5 * 10**18)


def test_hard_links_in_one_directory_are_listed_once_per_name():
    tree = make_tree()
    f = tree.create(ROOT_INODE, b"a", FILE, 0, 0)
    tree.link(f, ROOT_INODE, b"b")
    listing = [(name, ino) for name, ino, _ in tree.list_dir(ROOT_INODE, 2)]
    assert listing == [(b"a", f), (b"b", f)]
    tree.rename(ROOT_INODE, b"a", ROOT_INODE, b"b")     # same inode: nothing happens
    assert names(tree, ROOT_INODE, 2) == [b"a", b"b"]


def test_exchange_keeps_each_names_cookie():
    tree = make_tree()
    a = tree.create(ROOT_INODE, b"a", DIR, 0, 0)
    b = tree.create(ROOT_INODE, b"b", FILE, 0, 0)
    before = list(tree.list_dir(ROOT_INODE, 2))
    tree.rename(ROOT_INODE, b"a", ROOT_INODE, b"b", RENAME_EXCHANGE)
    assert list(tree.list_dir(ROOT_INODE, 2)) == [(n, {a: b, b: a}[i], c) for n, i, c in before]


def test_chunk_maps_walk_skips_what_has_no_data_or_changed_lately():
    import time
    tree = make_tree()
    empty = tree.create(ROOT_INODE, b"empty", FILE, 0, 0)
    old = tree.create(ROOT_INODE, b"old", FILE, 0, 0)
    new = tree.create(ROOT_INODE, b"new", FILE, 0, 0)
    for ino in (old, new):
        tree._chunk_map(ino)
    tree.set_attributes(old, mtime_ns=1, ctime_ns=1)
    cutoff = time.time_ns() - 10**9
    maps = list(tree.chunk_maps(cutoff))
    assert len(maps) == len(tree.table) - 1
    assert [m != 0 for m in maps][empty - 1:new] == [False, True, False]
    assert [m for m in tree.chunk_maps() if m] == [tree.table.data[old], tree.table.data[new]]


def test_metadata_bytes_follow_what_python_allocates():
    import tracemalloc
    tree = make_tree()
    d = tree.create(ROOT_INODE, b"d", DIR, 0, 0)
    tree.create(d, b"warm", FILE, 0, 0)
    before_meta = tree.metadata_bytes()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for i in range(20000):
            tree.create(d, b"file-%06d.txt" % i, FILE, 1000, 1000)
        traced = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    counted = tree.metadata_bytes() - before_meta
    assert 0.8 < counted / traced < 1.25, (counted, traced)


def test_directory_prunes_and_gives_back_its_dict():
    from zsfs.directory import Directory
    directory = Directory(1)
    for i in range(10000):
        directory.add(b"n%05d" % i, i + 2)
    big = directory.memory()
    for i in range(9990):
        assert directory.remove(b"n%05d" % i) == i + 2
    assert directory.memory() < big / 20
    assert [n for n, _, _ in directory.entries_after(0)] == [b"n%05d" % i for i in range(9990, 10000)]
    with pytest.raises(KeyError):
        directory.remove(b"n00001")
