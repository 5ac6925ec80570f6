"""Test-only launcher: the zsfs command with a bug planted in one request handler.

Reading the xattr ``user.zsfs-test-bug`` raises RuntimeError deep in the tree, the way
a real bug would; everything else behaves normally. Used by test_fs_fault.py.
"""

import sys

import zsfs.tree
from zsfs.cli import main

BUG_XATTR = b"user.zsfs-test-bug"
_get_xattr = zsfs.tree.Tree.get_xattr


def _buggy_get_xattr(self, inode, name):
    if name == BUG_XATTR:
        raise RuntimeError("planted handler bug")
    return _get_xattr(self, inode, name)


zsfs.tree.Tree.get_xattr = _buggy_get_xattr
sys.exit(main())
