"""The dedup window forgets after its time and holds at most its size."""

from __future__ import annotations

from tiergate.sidecar.ingress.replays import ReplayWindow


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_a_key_is_remembered_for_the_window_only() -> None:
    clock = Clock()
    window = ReplayWindow(60, 10, clock)
    window.remember("k", "t", "GET", "/a")
    clock.now += 59
    assert window.counted("k", "t", "GET", "/a")
    clock.now += 2
    assert not window.counted("k", "t", "GET", "/a")
    assert len(window) == 0


def test_a_key_matches_only_the_same_tenant_and_request() -> None:
    window = ReplayWindow(60, 10, Clock())
    window.remember("k", "t", "GET", "/a")
    assert not window.counted("k", "u", "GET", "/a")
    assert not window.counted("k", "t", "POST", "/a")
    assert not window.counted("k", "t", "GET", "/b")


def test_the_window_holds_at_most_its_size_oldest_out_first() -> None:
    window = ReplayWindow(60, 3, Clock())
    for key in "abcd":
        window.remember(key, "t", "GET", "/")
    assert len(window) == 3
    assert not window.counted("a", "t", "GET", "/")
    assert all(window.counted(key, "t", "GET", "/") for key in "bcd")
