"""heap.py: one malloc arena for every thread (the real-mount check is in
test_fs_control.py), unless the environment says otherwise."""

from zsfs import heap


def test_one_arena_unless_the_environment_sets_the_number(monkeypatch):
    monkeypatch.delenv("MALLOC_ARENA_MAX", raising=False)
    assert heap.share_one_arena() is True
    calls = []
    monkeypatch.setattr(heap, "_mallopt", lambda *args: calls.append(args) or 1)
    monkeypatch.setenv("MALLOC_ARENA_MAX", "4")
    assert heap.share_one_arena() is False and calls == []
    monkeypatch.delenv("MALLOC_ARENA_MAX")
    assert heap.share_one_arena() is True and calls == [(-8, 1)]
