"""DecisionRecords: every deny, sampled allows, a byte budget, a bounded shipping queue that counts drops."""

from __future__ import annotations

from typing import Any

import orjson

from tiergate.models import Decision
from tiergate.sidecar.decisions.records import PENDING_OVERHEAD, DecisionRecords, Pending


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


def _pending(decision: Any, input_raw: bytes, allow: bool = False) -> Pending:
    return Pending(decision, allow, "2026-12-01T00:00:00Z", 42, 3, input_raw)


def test_a_pending_record_keeps_references_and_renders_on_read_and_on_shipping() -> None:
    decision = Decision(
        allow=False,
        reason="payment_overdue",
        tier="free",
        paid_tier="pro",
        tenant="t_1",
        feature="sso",
        decision_id="d-1",
        policy_revision="rev",
        data_as_of="2026-12-01T00:00:00Z",
    )
    input_raw = b'{"tenant":"t_1","feature":"sso"}'
    records = DecisionRecords(1 << 20)
    first, second = _pending(decision, input_raw), _pending(orjson.dumps(decision.body()), input_raw)
    records.keep_pending("d-1", first)
    records.keep_pending("d-2", second)
    assert first.input_raw is second.input_raw is input_raw  # shared, not copied
    expected = {
        "decision_id": "d-1",
        "at": "2026-12-01T00:00:00Z",
        "decision": decision.body(),
        "policy_revision": "rev",
        "replica": {"position": 42, "data_as_of": "2026-12-01T00:00:00Z"},
        "account_version": 3,
        "input": {"tenant": "t_1", "feature": "sso"},
    }
    assert records.get("d-1") == expected
    assert records.get("d-2") == {**expected, "decision_id": "d-2"}  # from the rendered bytes: the same
    shipped = [orjson.loads(raw) for raw in records.take()]
    assert shipped == [expected, {**expected, "decision_id": "d-2"}]


def test_pending_records_count_their_input_within_the_byte_budget() -> None:
    input_raw = b'{"pad":"' + b"x" * 1000 + b'"}'
    size = _pending(b"{}", input_raw).size
    assert size == PENDING_OVERHEAD + len(input_raw)
    records = DecisionRecords(size * 2, ship_queue=1)
    decision = b'{"policy_revision":"r","data_as_of":null}'
    for n in range(3):
        records.keep_pending(f"d-{n}", _pending(decision, input_raw))
    assert [records.get(f"d-{n}") is not None for n in range(3)] == [False, True, True]
    assert records.bytes == size * 2
    assert records.waiting == 1 and records.dropped == 2  # the queue's bound holds for pending ones too
    records.keep_pending("allowed", _pending(decision, input_raw, allow=True))
    assert records.waiting == 1  # an allow is never shipped
