"""DecisionRecords: every deny, sampled allows, a byte budget, a bounded shipping queue that counts drops."""

from __future__ import annotations

from typing import Any

from tiergate.sidecar.decisions.records import DecisionRecords


def record(n: int, allow: bool = False, pad: int = 0) -> dict[str, Any]:
    return {"decision_id": f"d-{n}", "decision": {"allow": allow}, "input": {"pad": "x" * pad}}


def test_every_deny_and_a_sampled_share_of_allows() -> None:
    never = DecisionRecords(1000, allow_sample=0.5, sample=lambda: 0.9)
    always = DecisionRecords(1000, allow_sample=0.5, sample=lambda: 0.1)
    assert never.wants(False) and not never.wants(True)
    assert always.wants(True)
    assert not DecisionRecords(0).wants(False)  # 0 bytes: recording is off


def test_the_oldest_go_first_within_the_byte_budget() -> None:
    size = len(b'{"decision_id":"d-0","decision":{"allow":true},"input":{"pad":""}}')
    records = DecisionRecords(size * 3, ship_queue=0)
    for n in range(5):
        records.keep(f"d-{n}", record(n, allow=True))
    assert [records.get(f"d-{n}") is not None for n in range(5)] == [False, False, True, True, True]
    assert records.bytes <= size * 3
    records.keep("huge", record(9, pad=size * 4))  # larger than the whole budget: not kept
    assert records.get("huge") is None and records.get("d-4") is not None


def test_the_shipping_queue_is_bounded_and_counts_what_it_drops() -> None:
    dropped: list[int] = []
    records = DecisionRecords(1 << 20, ship_queue=3, on_drop=dropped.append)
    for n in range(5):
        records.keep(f"d-{n}", record(n))
    records.keep("allowed", record(99, allow=True))  # allows are never shipped
    assert records.waiting == 3 and sum(dropped) == 2
    batch = records.take(2)
    assert [b'"d-2"' in raw for raw in batch] == [True, False]
    records.keep("d-5", record(5))
    records.give_back(batch)  # a failed shipment goes back in front, within the bound
    assert records.waiting == 3 and sum(dropped) == 3
    records.drop(records.take(1))
    assert records.dropped == 4 and records.waiting == 2


def test_a_cached_deny_reuses_the_input_that_produced_the_same_answer() -> None:
    records = DecisionRecords(1 << 20)
    key = ("t_1", "sso", 1)
    raw = records.remember(key, b"answer-a", {"now": "2026-12-01T00:00:00Z"}, 3)
    assert records.recall(key, b"answer-a") == (raw, 3)
    assert records.recall(key, b"answer-b") is None  # another answer: another input
    assert records.recall(("t_1", "sso", 2), b"answer-a") is None
    records.forget("t_1")  # the tenant's data changed
    assert records.recall(key, b"answer-a") is None
    records.remember(key, b"answer-a", {}, None)
    records.forget(None)
    assert records.recall(key, b"answer-a") is None


def test_a_kept_record_splices_its_input() -> None:
    records = DecisionRecords(1 << 20)
    records.keep("d-1", {"decision_id": "d-1", "decision": {"allow": False}}, b'{"tenant":"t"}')
    assert records.get("d-1") == {
        "decision_id": "d-1",
        "decision": {"allow": False},
        "input": {"tenant": "t"},
    }
