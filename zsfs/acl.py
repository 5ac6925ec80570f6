"""POSIX access control lists, as tmpfs keeps them (fs/posix_acl.c's rules).

With FUSE_POSIX_ACL negotiated (pyfuse3's ``enable_acl``) the kernel evaluates
ACLs in its permission checks, caches them, checks who may set one (the owner or
CAP_FOWNER), refuses ACLs on symlinks and default ACLs on non-directories, and
validates and canonicalises every ACL it passes on. What it leaves to the
filesystem, and what this module computes for the tree:

* storing ``system.posix_acl_access`` and ``system.posix_acl_default`` (as xattrs);
* setting an access ACL updates the file mode (``posix_acl_update_mode``), and an
  ACL the mode alone expresses is not stored at all;
* chmod rewrites the ACL's owner, group-class and other entries (``posix_acl_chmod``);
* on create, a parent's default ACL replaces the umask: the new inode's access ACL
  is the default ACL masked by the requested mode, and a new directory inherits
  the default ACL too (``posix_acl_create``); without one the umask applies.

The xattr value is the kernel's ``posix_acl_xattr`` format: a little-endian u32
version (2), then per entry u16 tag, u16 permissions (rwx bits), u32 id.
"""

from __future__ import annotations

import errno
import struct
from typing import NamedTuple

ACCESS = b"system.posix_acl_access"
DEFAULT = b"system.posix_acl_default"
NAMES = (ACCESS, DEFAULT)
VERSION = 2

USER_OBJ, USER, GROUP_OBJ, GROUP, MASK, OTHER = 0x01, 0x02, 0x04, 0x08, 0x10, 0x20
UNDEFINED_ID = 0xFFFFFFFF
_HEADER = struct.Struct("<I")
_ENTRY = struct.Struct("<HHI")
# the order posix_acl_valid() requires: owner, named users, owning group, named
# groups, mask, other
_ORDER = {USER_OBJ: 0, USER: 1, GROUP_OBJ: 2, GROUP: 3, MASK: 4, OTHER: 5}


class Entry(NamedTuple):
    tag: int
    perm: int
    id: int


def _invalid(why: str) -> OSError:
    return OSError(errno.EINVAL, f"invalid ACL: {why}")


def parse(value: bytes) -> list[Entry]:
    """The entries of an ACL xattr; EINVAL unless it is one the kernel would accept."""
    if len(value) < _HEADER.size or (len(value) - _HEADER.size) % _ENTRY.size:
        raise _invalid("size")
    if _HEADER.unpack_from(value)[0] != VERSION:
        raise _invalid("version")
    entries = [Entry(*e) for e in _ENTRY.iter_unpack(value[_HEADER.size:])]
    _validate(entries)
    return entries


def _validate(entries: list[Entry]) -> None:
    seen: dict[int, int] = {}
    last = (-1, -1)
    for e in entries:
        if e.tag not in _ORDER or e.perm & ~0o7:
            raise _invalid("entry")
        key = (_ORDER[e.tag], e.id if e.tag in (USER, GROUP) else -1)
        if key <= last:
            raise _invalid("order")
        last = key
        seen[e.tag] = seen.get(e.tag, 0) + 1
    if not all(seen.get(t) == 1 for t in (USER_OBJ, GROUP_OBJ, OTHER)):
        raise _invalid("missing base entry")
    if (seen.get(USER) or seen.get(GROUP)) and not seen.get(MASK):
        raise _invalid("named entries without a mask")


def build(entries: list[Entry]) -> bytes:
    return _HEADER.pack(VERSION) + b"".join(
        _ENTRY.pack(e.tag, e.perm, e.id if e.tag in (USER, GROUP) else UNDEFINED_ID)
        for e in entries)


def equiv_mode(entries: list[Entry], mode: int) -> tuple[int, bool]:
    """(mode with its rwx bits from the ACL, whether the ACL says more than a mode can):
    the kernel's posix_acl_equiv_mode()."""
    bits, extended = 0, False
    for e in entries:
        if e.tag == USER_OBJ:
            bits |= e.perm << 6
        elif e.tag == GROUP_OBJ:
            bits |= e.perm << 3
        elif e.tag == OTHER:
            bits |= e.perm
        elif e.tag == MASK:
            bits = (bits & ~0o070) | e.perm << 3
            extended = True
        else:
            extended = True
    return (mode & ~0o777) | bits, extended


def create_masq(entries: list[Entry], mode: int) -> tuple[list[Entry], int, bool]:
    """A parent's default ACL applied to a new inode of *mode*: (its access ACL, its
    mode, whether the ACL must be stored): the kernel's posix_acl_create_masq()."""
    out = list(entries)
    rwx = mode & 0o777
    extended = False
    group_at = mask_at = None
    for i, e in enumerate(out):
        if e.tag == USER_OBJ:
            out[i] = e._replace(perm=e.perm & (rwx >> 6))
            rwx &= out[i].perm << 6 | ~0o700
        elif e.tag == OTHER:
            out[i] = e._replace(perm=e.perm & rwx & 0o7)
            rwx &= out[i].perm | ~0o007
        elif e.tag == GROUP_OBJ:
            group_at = i
        elif e.tag == MASK:
            mask_at = i
            extended = True
        else:
            extended = True
    at = mask_at if mask_at is not None else group_at
    assert at is not None, "validated ACLs have a group entry"
    out[at] = out[at]._replace(perm=out[at].perm & (rwx >> 3) & 0o7)
    rwx &= out[at].perm << 3 | ~0o070
    return out, (mode & ~0o777) | (rwx & 0o777), extended


def chmod(entries: list[Entry], mode: int) -> list[Entry]:
    """The ACL after chmod to *mode*: the kernel's posix_acl_chmod_masq()."""
    has_mask = any(e.tag == MASK for e in entries)
    out = []
    for e in entries:
        if e.tag == USER_OBJ:
            e = e._replace(perm=mode >> 6 & 0o7)
        elif e.tag == OTHER:
            e = e._replace(perm=mode & 0o7)
        elif e.tag == MASK or (e.tag == GROUP_OBJ and not has_mask):
            e = e._replace(perm=mode >> 3 & 0o7)
        out.append(e)
    return out
