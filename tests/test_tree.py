"""Unit tests of the inode tree, driven directly (the mount tests cover it through FUSE)."""

import errno
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
    return [name for name, _, _ in tree.list_dir(tree.get(ino), after)]


def test_names_and_their_errors():
    tree = make_tree()
    f = tree.create(ROOT_INODE, b"f", FILE, 0, 0)
    d = tree.create(ROOT_INODE, b"d", DIR, 0, 0)
    assert tree.lookup(ROOT_INODE, b"f") is f
    assert tree.lookup(d.ino, b"..") is tree.get(ROOT_INODE)
    assert errno_of(tree.create, ROOT_INODE, b"f", FILE, 0, 0) == errno.EEXIST
    assert errno_of(tree.create, ROOT_INODE, b"x" * 256, FILE, 0, 0) == errno.ENAMETOOLONG
    assert errno_of(tree.lookup, ROOT_INODE, b"x" * 256) == errno.ENAMETOOLONG
    assert errno_of(tree.lookup, ROOT_INODE, b"missing") == errno.ENOENT
    assert errno_of(tree.lookup, f.ino, b"x") == errno.ENOTDIR
    assert errno_of(tree.unlink, ROOT_INODE, b"d") == errno.EISDIR
    assert errno_of(tree.rmdir, ROOT_INODE, b"f") == errno.ENOTDIR
    assert errno_of(tree.link, d.ino, ROOT_INODE, b"d2") == errno.EPERM
    tree.create(d.ino, b"inner", FILE, 0, 0)
    assert errno_of(tree.rmdir, ROOT_INODE, b"d") == errno.ENOTEMPTY
    assert tree.create(ROOT_INODE, b"y" * 255, FILE, 0, 0).nlink == 1


def test_link_counts():
    tree = make_tree()
    root = tree.get(ROOT_INODE)
    a = tree.create(ROOT_INODE, b"a", DIR, 0, 0)
    tree.create(a.ino, b"b", DIR, 0, 0)
    assert (root.nlink, a.nlink) == (3, 3)
    f = tree.create(a.ino, b"f", FILE, 0, 0)
    tree.link(f.ino, ROOT_INODE, b"f2")
    assert f.nlink == 2
    tree.unlink(a.ino, b"f")
    assert f.nlink == 1 and tree.lookup(ROOT_INODE, b"f2") is f
    tree.rename(a.ino, b"b", ROOT_INODE, b"b")
    assert (root.nlink, a.nlink) == (4, 2)


def test_setgid_directories_pass_on_their_group():
    tree = make_tree()
    shared = tree.create(ROOT_INODE, b"shared", DIR | stat.S_ISGID, 0, 50)
    f = tree.create(shared.ino, b"f", FILE, 1000, 1000)
    sub = tree.create(shared.ino, b"sub", DIR, 1000, 1000)
    assert f.gid == 50 and sub.gid == 50 and sub.mode & stat.S_ISGID and not f.mode & stat.S_ISGID


def test_readdir_cookies_survive_creates_and_deletes():
    tree = make_tree()
    for i in range(100):
        tree.create(ROOT_INODE, b"f%03d" % i, FILE, 0, 0)
    listing = list(tree.list_dir(tree.get(ROOT_INODE), 0))
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
    tree.create(d2.ino, b"x", FILE, 0, 0)
    f = tree.create(ROOT_INODE, b"f", FILE, 0, 0)
    g = tree.create(ROOT_INODE, b"g", FILE, 0, 0)
    assert errno_of(tree.rename, ROOT_INODE, b"d1", ROOT_INODE, b"d2") == errno.ENOTEMPTY
    assert errno_of(tree.rename, ROOT_INODE, b"f", ROOT_INODE, b"d1") == errno.EISDIR
    assert errno_of(tree.rename, ROOT_INODE, b"d1", ROOT_INODE, b"f") == errno.ENOTDIR
    assert errno_of(tree.rename, ROOT_INODE, b"d2", d2.ino, b"in") == errno.EINVAL
    assert errno_of(tree.rename, ROOT_INODE, b"f", ROOT_INODE, b"g", RENAME_NOREPLACE) == errno.EEXIST
    assert errno_of(tree.rename, ROOT_INODE, b"f", ROOT_INODE, b"zz", RENAME_EXCHANGE) == errno.ENOENT
    assert errno_of(tree.rename, ROOT_INODE, b"f", ROOT_INODE, b"g",
                    RENAME_NOREPLACE | RENAME_EXCHANGE) == errno.EINVAL
    tree.rename(ROOT_INODE, b"f", ROOT_INODE, b"d1", RENAME_EXCHANGE)
    assert tree.lookup(ROOT_INODE, b"d1") is f and tree.lookup(ROOT_INODE, b"f") is d1
    tree.rename(ROOT_INODE, b"g", ROOT_INODE, b"d1")      # replaces f, which had one name
    assert tree.lookup(ROOT_INODE, b"d1") is g and f.ino not in tree.inodes
    tree.rename(ROOT_INODE, b"d1", ROOT_INODE, b"d1")     # same entry: nothing happens
    assert tree.lookup(ROOT_INODE, b"d1") is g


async def test_unlinked_open_files_live_until_closed_and_forgotten():
    tree = make_tree()
    f = tree.remember(tree.create(ROOT_INODE, b"f", FILE, 0, 0))
    tree.open(f.ino)
    assert await tree.write(f, 0, b"data" * 10000) == 40000
    tree.unlink(ROOT_INODE, b"f")
    assert f.nlink == 0 and await tree.read(f, 0, 4) == b"data"
    tree.close(f)
    assert f.ino in tree.inodes                  # the kernel still knows it
    tree.forget(f.ino, 1)
    assert f.ino not in tree.inodes and tree.store.pool.pages_used == 0


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
    listing = list(tree.list_dir(tree.get(ROOT_INODE), 0))
    resume_at = listing[2 + 500][2]            # the cookie of n0500
    for i in range(1000):
        if i % 10:                             # delete nine in ten, on both sides
            tree.unlink(ROOT_INODE, b"n%04d" % i)
    assert len(tree.get(ROOT_INODE).directory.cookies) < 300   # stale cookies were pruned
    assert names(tree, ROOT_INODE, resume_at) == [b"n%04d" % i for i in range(510, 1000, 10)]
    assert names(tree, ROOT_INODE)[2:] == [b"n%04d" % i for i in range(0, 1000, 10)]
