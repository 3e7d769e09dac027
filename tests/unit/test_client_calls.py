"""The clients' pure part: answers read from status and body, the fail policy, transaction ids."""

from __future__ import annotations

import pytest

from tiergate.client import calls
from tiergate.client.calls import UNREACHABLE, FailPolicy
from tiergate.errors import SidecarRejectedError, SidecarUnreachableError

POLICY = FailPolicy(features={"dashboards": "fail_open"})


def test_a_400_is_rejected_with_the_sidecars_code_and_field() -> None:
    body = b'{"error": {"code": "bad_request", "message": "quantity: too big", "field": "quantity"}}'
    with pytest.raises(SidecarRejectedError, match="quantity: too big") as caught:
        calls.answer(calls.check(POLICY, "t", "sso"), 400, body, "http://sidecar")
    assert (caught.value.code, caught.value.field, caught.value.status) == ("bad_request", "quantity", 400)


@pytest.mark.parametrize(
    ("status", "body", "message"),
    [
        (
            503,
            b'{"error": {"code": "engine_unavailable", "message": "no engine"}}',
            "answered 503: no engine",
        ),
        (502, b"<html>bad gateway</html>", "answered 502: HTTP 502"),
        (200, b"not json", "not JSON"),
        (200, b'{"decisions": [{"allow": "perhaps"}, {}]}', "not a Decision"),
        (200, b'{"decisions": [{"allow": true}]}', "1 decisions for 2 checks"),
    ],
)
def test_no_usable_answer_is_unreachable(status: int, body: bytes, message: str) -> None:
    call = calls.check_batch(POLICY, [("t", "sso", 1), ("t", "dashboards", 1)])
    with pytest.raises(SidecarUnreachableError, match=message):
        calls.answer(call, status, body, "")
    assert call.unreachable is not None
    assert [(d.allow, d.reason) for d in call.unreachable()] == [(False, UNREACHABLE), (True, UNREACHABLE)]


def test_transaction_ids_are_kept_or_fixed_before_sending() -> None:
    assert calls.with_transaction_id({"transaction_id": "mine", "code": "c"})["transaction_id"] == "mine"
    generated = calls.with_transaction_id({"code": "c"})["transaction_id"]
    assert len(generated) == 32 and generated != calls.with_transaction_id({"code": "c"})["transaction_id"]
    reserve = calls.reserve(POLICY, "t", "api_calls")
    assert reserve.unreachable is not None and reserve.body is not None
    assert reserve.unreachable().transaction_id.encode() in reserve.body


def test_the_fail_policy_is_read_only() -> None:
    with pytest.raises(TypeError):
        POLICY.features["sso"] = "fail_open"  # type: ignore[index]  # the point: it cannot change
