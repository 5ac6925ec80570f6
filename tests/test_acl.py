"""zsfs.acl against the kernel's fs/posix_acl.c rules, without a mount."""

from __future__ import annotations

import errno

import pytest

from zsfs import acl
from zsfs.acl import GROUP, GROUP_OBJ, MASK, OTHER, USER, USER_OBJ, Entry

U = acl.UNDEFINED_ID


def entries(*spec: tuple[int, int, int]) -> list[Entry]:
    return [Entry(*e) for e in spec]


BASE = entries((USER_OBJ, 6, U), (GROUP_OBJ, 4, U), (OTHER, 4, U))
NAMED = entries((USER_OBJ, 7, U), (USER, 6, 1000), (GROUP_OBJ, 5, U), (GROUP, 7, 50),
                (MASK, 5, U), (OTHER, 1, U))


def test_round_trip_and_ids_of_unnamed_entries():
    assert acl.parse(acl.build(NAMED)) == NAMED
    raw = acl.build(entries((USER_OBJ, 6, 0), (GROUP_OBJ, 4, 7), (OTHER, 4, 9)))
    assert acl.parse(raw) == BASE                    # ids only mean something when named


@pytest.mark.parametrize("value", [
    b"", b"\x02\x00\x00", acl.build(BASE)[:-1],
    acl.build(BASE).replace(b"\x02", b"\x03", 1),                       # version
    acl.build(entries((GROUP_OBJ, 4, U), (USER_OBJ, 6, U), (OTHER, 4, U))),   # order
    acl.build(entries((USER_OBJ, 6, U), (USER, 6, 9), (USER, 6, 9), (GROUP_OBJ, 4, U),
                      (MASK, 6, U), (OTHER, 0, U))),                  # the same user twice
    acl.build(entries((USER_OBJ, 6, U), (USER, 6, 9), (GROUP_OBJ, 4, U), (OTHER, 0, U))),
    acl.build(entries((USER_OBJ, 8, U), (GROUP_OBJ, 4, U), (OTHER, 4, U))),
])
def test_malformed_values_are_einval(value):
    with pytest.raises(OSError) as e:
        acl.parse(value)
    assert e.value.errno == errno.EINVAL


def test_equiv_mode():
    assert acl.equiv_mode(BASE, 0o100000) == (0o100644, False)
    # with a mask, the group bits are the mask's
    assert acl.equiv_mode(NAMED, 0o102000) == (0o102751, True)


def test_create_masq_keeps_the_tighter_of_mode_and_acl():
    out, mode, extended = acl.create_masq(NAMED, 0o100640)
    assert mode == 0o100640 and extended
    assert [e.perm for e in out] == [6, 6, 5, 7, 4, 0]     # named entries untouched
    out, mode, extended = acl.create_masq(BASE, 0o40777)
    assert mode == 0o40644 and not extended and out == BASE


def test_chmod_rewrites_owner_mask_or_group_and_other():
    assert [e.perm for e in acl.chmod(NAMED, 0o540)] == [5, 6, 5, 7, 4, 0]
    assert [e.perm for e in acl.chmod(BASE, 0o701)] == [7, 0, 1]
