"""Shadow policies: evaluated beside the live ones, disagreements counted, answers unchanged."""

from __future__ import annotations

import shutil
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest
from aiohttp import web

from tests.integration.sidecar.conftest import ClientFactory, SidecarClient
from tiergate.errors import PolicyError
from tiergate.sidecar.app import create_app
from tiergate.sidecar.settings import SidecarSettings


def stricter_copy(policy_dir: Path, target: Path) -> Path:
    """A candidate with no grace period: past_due is overdue at once."""
    shutil.copytree(policy_dir, target)
    rego = target / "entitlements.rego"
    rego.write_text(
        rego.read_text(encoding="utf-8").replace("grace_days", "grace_days_unused"), encoding="utf-8"
    )
    return target


Shadowed = Callable[[Path, float], Awaitable[SidecarClient]]


@pytest.fixture
def shadowed(aiohttp_client: ClientFactory, settings: SidecarSettings) -> Shadowed:
    """Starts a sidecar with `candidate` as its shadow policies, evaluated for `sample` of the checks."""

    async def start(candidate: Path, sample: float) -> SidecarClient:
        update = {"shadow_policies": candidate, "shadow_sample": sample}
        return await aiohttp_client(create_app(settings.model_copy(update=update)))

    return start


def metric(text: str, name: str) -> dict[str, float]:
    return {
        line.split(" ")[0]: float(line.split(" ")[1])
        for line in text.splitlines()
        if line.startswith(name) and not line.startswith("#")
    }


async def test_disagreements_are_counted_and_answers_unchanged(
    shadowed: Shadowed, policy_dir: Path, tmp_path: Path
) -> None:
    client = await shadowed(stricter_copy(policy_dir, tmp_path / "candidate"), 1.0)
    for tenant, feature in [
        ("pro-grace", "sso"),
        ("pro-active", "sso"),
        ("pro-grace", "reports"),
        ("x", "nope"),
    ]:
        response = await client.get("/v1/check", params={"tenant": tenant, "feature": feature})
        body = await response.json()
        if tenant == "pro-grace":
            assert (body["allow"], body["reason"]) == (True, "ok")  # the live answer, always
    text = await (await client.get("/metrics")).text()
    disagreements = metric(text, "tiergate_shadow_disagreements_total")
    assert disagreements == {
        'tiergate_shadow_disagreements_total{feature="sso",live_reason="ok",shadow_reason="payment_overdue"}': 1.0,
        'tiergate_shadow_disagreements_total{feature="reports",live_reason="ok",shadow_reason="payment_overdue"}': 1.0,
    }
    outcomes = metric(text, "tiergate_shadow_evaluations_total")
    assert outcomes == {
        'tiergate_shadow_evaluations_total{outcome="disagree"}': 2.0,
        'tiergate_shadow_evaluations_total{outcome="agree"}': 2.0,
    }


async def test_sampling_zero_evaluates_nothing(shadowed: Shadowed, policy_dir: Path, tmp_path: Path) -> None:
    client = await shadowed(stricter_copy(policy_dir, tmp_path / "candidate"), 0.0)
    await client.get("/v1/check", params={"tenant": "pro-grace", "feature": "sso"})
    assert metric(await (await client.get("/metrics")).text(), "tiergate_shadow_evaluations_total") == {}


async def test_a_broken_candidate_stops_the_start_naming_it(
    settings: SidecarSettings, tmp_path: Path
) -> None:
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "entitlements.rego").write_text(
        "package tiergate.entitlements\n\ndecision := {", encoding="utf-8"
    )
    app = create_app(settings.model_copy(update={"shadow_policies": broken}))
    runner = web.AppRunner(app)
    with pytest.raises(PolicyError, match="broken"):
        await runner.setup()
    await runner.cleanup()


async def test_a_candidate_answering_nonsense_counts_as_an_error_only(
    shadowed: Shadowed, policy_dir: Path, tmp_path: Path
) -> None:
    shadow = tmp_path / "nonsense"
    shutil.copytree(policy_dir, shadow)
    (shadow / "entitlements.rego").write_text(
        'package tiergate.entitlements\n\ndecision := "nonsense"\n', encoding="utf-8"
    )
    client = await shadowed(shadow, 1.0)
    body = await (await client.get("/v1/check", params={"tenant": "pro-active", "feature": "sso"})).json()
    assert (body["allow"], body["reason"]) == (True, "ok")
    outcomes = metric(await (await client.get("/metrics")).text(), "tiergate_shadow_evaluations_total")
    assert outcomes == {'tiergate_shadow_evaluations_total{outcome="error"}': 1.0}
