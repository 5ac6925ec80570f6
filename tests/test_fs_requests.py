"""``MOUNT/.zsfs/requests``: FUSE requests per opcode and the handlers' time, on a real mount."""

from __future__ import annotations

import errno
import os

import pytest

from zsfs.requests import RequestStats


def requests(mnt) -> dict[str, tuple[int, int, float]]:
    with open(mnt / ".zsfs" / "requests") as f:
        head, *rows = f.read().splitlines()
    assert head.split() == ["opcode", "count", "total_us", "mean_us"]
    table = {}
    for row in rows:
        opcode, count, total, mean = row.split()
        table[opcode] = (int(count), int(total), float(mean))
    return table


def clear(mnt) -> None:
    with open(mnt / ".zsfs" / "requests", "w") as f:
        f.write("0\n")


def test_creates_and_writes_are_counted_per_opcode(mnt):
    clear(mnt)
    for i in range(20):
        with open(mnt / f"f{i}", "wb") as f:
            f.write(b"x" * 100)
    table = requests(mnt)
    assert table["create"][0] == 20
    # clearing took a write and a release of the control file (its open was cleared)
    assert table["write"][0] == 20 + 1 and table["release"][0] == 20 + 1
    for opcode, (count, total, mean) in table.items():
        assert count > 0 and total >= 0
        assert mean == pytest.approx(total / count, abs=0.6), opcode


def test_reading_the_file_is_counted_and_clearing_resets(mnt):
    (mnt / "a").write_bytes(b"data")
    first = requests(mnt)
    assert sum(count for count, _, _ in first.values()) > 0
    clear(mnt)
    after = requests(mnt)
    # what remains is the requests of clearing and reading the file itself
    assert "create" not in after and "write" in after and after["write"][0] == 1


@pytest.mark.parametrize("value", [b"1\n", b"0 0\n", b" 0\n", b"reset\n"])
def test_a_bad_write_is_einval_and_keeps_the_counters(mnt, value):
    (mnt / "a").write_bytes(b"data")
    fd = os.open(mnt / ".zsfs" / "requests", os.O_WRONLY)
    try:
        with pytest.raises(OSError) as e:
            os.write(fd, value)
        assert e.value.errno == errno.EINVAL
    finally:
        os.close(fd)
    assert requests(mnt)["create"][0] == 1


def test_render_orders_by_count():
    stats = RequestStats()
    for opcode, n in [("lookup", 3), ("write", 5), ("getattr", 3)]:
        for _ in range(n):
            stats.add(opcode, 0)
    rows = stats.render().splitlines()
    assert rows[0] == "opcode count total_us mean_us"
    assert [r.split()[0] for r in rows[1:]] == ["write", "getattr", "lookup"]
    stats.clear()
    assert stats.render() == "opcode count total_us mean_us\n"
