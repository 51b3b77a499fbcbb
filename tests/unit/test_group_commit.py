"""GroupCommit: concurrent submits share sends; each caller gets its own result.

The sends here are controlled with events, so every grouping asserted is the only one
possible (no timing). QueuedMemory's use of it, against a real Valkey and worker, is
in tests/integration/test_crewai.py.
"""

from __future__ import annotations

import threading
import time

import pytest

from memworker.queue.group import GroupCommit


class Sender:
    """Records each send; the first one can be held until released."""

    def __init__(self, hold_first: bool = False, fail_on: int | None = None) -> None:
        self.sends: list[list[str]] = []
        self.release = threading.Event()
        self.entered = threading.Event()
        self.hold_first = hold_first
        self.fail_on = fail_on

    def __call__(self, entries: list[str]) -> list[str]:
        self.sends.append(list(entries))
        if self.hold_first and len(self.sends) == 1:
            self.entered.set()
            assert self.release.wait(10)
        if self.fail_on == len(self.sends):
            raise ConnectionError(f"send {len(self.sends)} failed")
        return [f"sent:{e}" for e in entries]


def _wait_until(pred, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.001)


def _submit_all(group: GroupCommit, sender: Sender, entries: list[str], results: dict,
                errors: dict) -> list[threading.Thread]:  # fmt: skip
    """One thread per entry, each started once the previous entry is queued or sent."""
    def one(entry: str) -> None:
        try:
            results[entry] = group.submit(entry)
        except Exception as exc:  # noqa: BLE001
            errors[entry] = exc

    threads = []
    for entry in entries:
        t = threading.Thread(target=one, args=(entry,))
        t.start()
        threads.append(t)
        _wait_until(
            lambda e=entry: any(s.entry == e for s in group._waiting)
            or any(e in batch for batch in sender.sends)
        )
    return threads


def test_an_uncontended_submit_sends_at_once() -> None:
    sender = Sender()
    group = GroupCommit(sender, limit=8)
    assert group.submit("a") == "sent:a"
    assert group.submit("b") == "sent:b"
    assert sender.sends == [["a"], ["b"]]


def _behind_a_held_send(group: GroupCommit, sender: Sender, entries: list[str]) -> tuple[dict, dict, list]:
    """Submit "first" (its send held), then ``entries`` one by one while it is held;
    release it and wait for every caller. Returns the callers' results and errors, and
    the sends made before the release."""
    results: dict = {}
    errors: dict = {}
    threads = _submit_all(group, sender, ["first"], results, errors)
    assert sender.entered.wait(10)
    threads += _submit_all(group, sender, entries, results, errors)
    held = [list(batch) for batch in sender.sends]
    sender.release.set()
    for t in threads:
        t.join(10)
    return results, errors, held


def test_submits_during_a_send_go_together_in_the_next_one() -> None:
    sender = Sender(hold_first=True)
    group = GroupCommit(sender, limit=64)
    results, errors, held = _behind_a_held_send(group, sender, [f"e{i}" for i in range(10)])
    assert held == [["first"]]  # the others wait for the send in flight
    assert sender.sends == [["first"], [f"e{i}" for i in range(10)]]
    assert results == {e: f"sent:{e}" for e in ["first", *[f"e{i}" for i in range(10)]]}
    assert not errors and group._busy is False and group._waiting == []


def test_a_send_carries_at_most_limit_entries_oldest_first() -> None:
    sender = Sender(hold_first=True)
    group = GroupCommit(sender, limit=3)
    results, errors, _ = _behind_a_held_send(group, sender, [f"e{i}" for i in range(7)])
    assert sender.sends == [["first"], ["e0", "e1", "e2"], ["e3", "e4", "e5"], ["e6"]]
    assert len(results) == 8 and not errors


def test_a_failed_send_fails_its_own_callers_only() -> None:
    sender = Sender(hold_first=True, fail_on=2)
    group = GroupCommit(sender, limit=2)
    results, errors, _ = _behind_a_held_send(group, sender, ["a", "b", "c"])
    assert sender.sends == [["first"], ["a", "b"], ["c"]]
    assert set(errors) == {"a", "b"} and all(isinstance(e, ConnectionError) for e in errors.values())
    assert results == {"first": "sent:first", "c": "sent:c"}
    assert group.submit("after") == "sent:after"  # the group is not left busy


def test_a_send_must_return_one_result_per_entry() -> None:
    group = GroupCommit(lambda entries: [], limit=4)
    with pytest.raises(ValueError, match="0 results for 1 entries"):
        group.submit("x")
    with pytest.raises(ValueError, match="limit"):
        GroupCommit(lambda entries: entries, limit=0)


class _Interrupted:
    """A waiting caller's lock whose wait ends in KeyboardInterrupt (Ctrl-C while it
    waits): at once, or once it is released (the caller was just promoted to lead)."""

    def __init__(self, at_release: bool) -> None:
        self.at_release = at_release
        self.released = threading.Event()

    def acquire(self) -> None:
        if self.at_release:
            assert self.released.wait(10)
        raise KeyboardInterrupt

    def release(self) -> None:
        self.released.set()


@pytest.mark.parametrize("at_release", [False, True], ids=["while-queued", "once-promoted"])
def test_a_caller_interrupted_while_it_waits_does_not_stall_the_group(monkeypatch, at_release) -> None:
    """Ctrl-C in a waiting caller left its slot queued (and, once promoted, the lead
    with nobody to take it): every later submit waited for ever."""
    import memworker.queue.group as group_mod

    sender = Sender(hold_first=True)
    group = GroupCommit(sender, limit=1)  # one entry a send: "b" and "c" go one by one
    results: dict = {}
    errors: dict = {}
    first = _submit_all(group, sender, ["a"], results, errors)
    assert sender.entered.wait(10)
    real = group_mod._held_lock
    interrupted = _Interrupted(at_release)
    monkeypatch.setattr(group_mod, "_held_lock", lambda: interrupted)

    def b() -> None:
        try:
            group.submit("b")
        except KeyboardInterrupt as exc:
            errors["b"] = exc

    tb = threading.Thread(target=b)
    tb.start()
    _wait_until(lambda: any(s.entry == "b" for s in group._waiting) or "b" in errors)
    monkeypatch.setattr(group_mod, "_held_lock", real)
    threads = first + [tb] + _submit_all(group, sender, ["c"], results, errors)
    sender.release.set()
    for t in threads:
        t.join(10)
        assert not t.is_alive(), "a caller still waits: the group stalled"
    assert isinstance(errors.pop("b"), KeyboardInterrupt) and errors == {}
    assert results == {"a": "sent:a", "c": "sent:c"}
    assert sender.sends == [["a"], ["c"]]  # "b" taken back, never sent
    assert group.submit("d") == "sent:d"
