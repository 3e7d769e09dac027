"""Signed offline licenses end to end: keys and licenses made by the CLI, real sidecar processes on
loopback. A license decides exactly as the same account imported as JSON; a license that does
not verify stops the start-up naming why, and at run time leaves the last good one serving;
renewals (also by a rotated key) are picked up while checks go on, none failing."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jwt
import pytest

from demo.processes import Process, free_port, tiergate_command
from tiergate.catalog import load_catalog
from tiergate.license import TOKEN_TYPE, LicenseClaims, issue, key_id, load_private_key

ROOT = Path(__file__).parents[3]
PLANS = ROOT / "plans" / "plans.yaml"
FEATURES = sorted(load_catalog(PLANS).features)
TIMEOUT_S = 60


def tiergate(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        tiergate_command(*args), env=env, capture_output=True, text=True, timeout=TIMEOUT_S, check=False
    )


def ok(*args: str, env: dict[str, str] | None = None) -> str:
    result = tiergate(*args, env=env)
    assert result.returncode == 0, result.stderr
    return result.stdout


@pytest.fixture
def keys(tmp_path: Path) -> tuple[Path, Path]:
    """Two key directories made by `tiergate license keygen` (a: the current key, b: the next)."""
    for name in ("a", "b"):
        ok("license", "keygen", "--out", str(tmp_path / name))
    return tmp_path / "a", tmp_path / "b"


def cli_issue(key_dir: Path, out: Path, *extra: str, tier: str = "enterprise", lid: str = "lic_1") -> Path:
    ok(
        "license", "issue", "--key", str(key_dir / "license.key"), "--tenant", "acme", "--tier", tier,
        "--seats", "50", "--not-after", "2099-12-31", "--grace", "14d", "--customer", "Acme GmbH",
        "--license-id", lid, "--out", str(out), *extra,
    )  # fmt: skip
    return out


def env_for(tmp_path: Path, name: str, **settings: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TIERGATE_")}
    env |= {
        "TIERGATE_PLANS": str(PLANS),
        "TIERGATE_POLICIES": str(ROOT / "policies"),
        "TIERGATE_REPLICA_PATH": str(tmp_path / name / "replica.db"),
        "TIERGATE_OUTBOX_SYNC": "normal",
        "TIERGATE_LOG_JSON": "true",
        "TIERGATE_SIDECAR_PORT": str(free_port()),
    }
    return env | {f"TIERGATE_{k.upper()}": v for k, v in settings.items()}


def licensed_env(
    tmp_path: Path, name: str, license: Path, *key_dirs: Path, **settings: str
) -> dict[str, str]:
    keys = ",".join(str(d / "license.pub") for d in key_dirs)
    return env_for(tmp_path, name, license_path=str(license), license_public_keys=keys, **settings)


@contextlib.contextmanager
def sidecar(tmp_path: Path, name: str, env: dict[str, str]) -> Iterator[str]:
    (tmp_path / name).mkdir(exist_ok=True)
    process = Process(name, tiergate_command("sidecar"), env, tmp_path / f"{name}.log", tmp_path)
    url = f"http://127.0.0.1:{env['TIERGATE_SIDECAR_PORT']}"
    process.start()
    try:
        process.wait_http(f"{url}/readyz", lambda status: status == 200, timeout_s=TIMEOUT_S)
        yield url
    finally:
        process.stop()


def call(url: str, body: Any = None) -> Any:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=10) as response:
        text = response.read()
    return text.decode() if url.endswith("/metrics") else json.loads(text)


LINEAGE = {"decision_id", "data_as_of"}


def answers(url: str, tenants: list[str]) -> dict[str, Any]:
    """Every feature of every tenant at several quantities, and the entitlements view, without
    what differs between any two sidecars (decision ids, when their data arrived)."""
    checks = [
        {"tenant": t, "feature": f, "quantity": q} for t in tenants for f in FEATURES for q in (1, 7, 10**6)
    ]
    batch = call(f"{url}/v1/check/batch", {"checks": checks})["decisions"]
    views = {t: call(f"{url}/v1/entitlements/{t}") for t in tenants}
    return {
        "checks": [{k: v for k, v in d.items() if k not in LINEAGE} for d in batch],
        "entitlements": {t: {k: v for k, v in view.items() if k not in LINEAGE} for t, view in views.items()},
    }


def test_a_cli_license_decides_exactly_as_the_same_account_imported_as_json(
    tmp_path: Path, keys: tuple[Path, Path]
) -> None:
    overrides = (
        "--override",
        "audit_log=false",
        "--override",
        "api_calls=5000",
        "--override",
        "reports=true",
    )
    license = cli_issue(keys[0], tmp_path / "acme.jwt", *overrides, tier="pro")
    shown = json.loads(ok("license", "show", str(license), "--public-key", str(keys[0] / "license.pub")))
    assert (shown["tenant"], shown["tier"], shown["seats"], shown["state"]) == ("acme", "pro", 50, "valid")
    document = {
        "accounts": [{"tenant": "acme", "tier": "pro", "status": "active", "quantity": 50}],
        "overrides": [
            {"tenant": "acme", "feature": "api_calls", "value": {"limit": 5000}},
            {"tenant": "acme", "feature": "audit_log", "value": False},
            {"tenant": "acme", "feature": "reports", "value": True},
        ],
    }
    (tmp_path / "acme.json").write_text(json.dumps(document))
    imported_env = env_for(tmp_path, "imported")
    ok("replica", "import", str(tmp_path / "acme.json"), env=imported_env)
    usage = [
        {"transaction_id": f"tx-{i}", "external_customer_id": "acme", "code": "api_calls",
         "timestamp": int(time.time()), "properties": {}}
        for i in range(3)
    ]  # fmt: skip
    licensed = licensed_env(tmp_path, "licensed", license, keys[0])
    with (
        sidecar(tmp_path, "licensed", licensed) as by_license,
        sidecar(tmp_path, "imported", imported_env) as by_json,
    ):
        for url in (by_license, by_json):
            call(f"{url}/v1/usage/batch", {"events": usage})
        tenants = ["acme", "someone-else"]
        from_license, from_json = answers(by_license, tenants), answers(by_json, tenants)
        status = call(f"{by_license}/v1/status")
    assert from_license == from_json
    acme = from_license["entitlements"]["acme"]["features"]
    assert acme["api_calls"]["limit"] == 5000 and acme["api_calls"]["used"] == 3  # counted locally
    assert acme["sso"]["allow"] is True and acme["audit_log"]["allow"] is False
    assert status["mode"] == "license"
    assert {k: status["license"][k] for k in ("id", "tenant", "customer", "tier", "state", "key_id")} == {
        "id": "lic_1",
        "tenant": "acme",
        "customer": "Acme GmbH",
        "tier": "pro",
        "state": "valid",
        "key_id": key_id(load_private_key(keys[0] / "license.key").public_key()),
    }
    assert status["license"]["not_after"] == "2100-01-01T00:00:00Z"
    assert status["license"]["grace_until"] == "2100-01-15T00:00:00Z"
    # the usage counted for the vendor's billing, in Lago's shape
    outbox = tmp_path / "licensed" / "outbox.db"
    exported = [json.loads(line) for line in ok("usage", "export", "--outbox", str(outbox)).splitlines()]
    assert sorted(e["transaction_id"] for e in exported) == ["tx-0", "tx-1", "tx-2"]
    assert {(e["external_customer_id"], e["code"]) for e in exported} == {("acme", "api_calls")}


def flip_a_byte(path: Path) -> None:
    text = path.read_text().strip()
    middle = len(text) // 2 if text[len(text) // 2] != "." else len(text) // 2 + 1
    path.write_text(text[:middle] + ("A" if text[middle] != "A" else "B") + text[middle + 1 :])


def without_tier(key_dir: Path, out: Path) -> None:
    private = load_private_key(key_dir / "license.key")
    payload = {"lid": "l", "sub": "acme", "seats": 1, "iat": int(time.time()), "exp": 4102444800, "grace": 0}
    headers = {"typ": TOKEN_TYPE, "kid": key_id(private.public_key())}
    out.write_text(jwt.encode(payload, private, algorithm="EdDSA", headers=headers))


@pytest.mark.parametrize(
    ("spoil", "reason"),
    [
        (lambda path, keys: flip_a_byte(path), "the signature does not verify against key"),
        (lambda path, keys: cli_issue(keys[1], path), "which is not among the configured public keys"),
        (lambda path, keys: without_tier(keys[0], path), "lacks the claim 'tier' (the tier)"),
        (lambda path, keys: path.write_text("hello"), "not a signed license"),
    ],
    ids=["flipped-byte", "another-key", "missing-claim", "not-a-jws"],
)
def test_a_license_that_does_not_verify_stops_the_start_in_one_line(
    tmp_path: Path, keys: tuple[Path, Path], spoil: Any, reason: str
) -> None:
    license = cli_issue(keys[0], tmp_path / "acme.jwt")
    spoil(license, keys)
    (tmp_path / "s").mkdir()
    result = subprocess.run(
        tiergate_command("sidecar"),
        env=licensed_env(tmp_path, "s", license, keys[0]),
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S,
        check=False,
    )
    assert result.returncode == 1
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and errors[0].startswith(f"error: license {license} refused: "), result.stderr
    assert reason in errors[0]
    assert "Traceback" not in result.stderr
    shown = tiergate("license", "show", str(license), "--public-key", str(keys[0] / "license.pub"))
    assert shown.returncode == 1 and reason in shown.stderr


def issue_dated(key_dir: Path, out: Path, *, ended_days_ago: float, grace_days: float) -> None:
    """A license whose not-after date is `ended_days_ago` days behind this host's clock."""
    now = int(time.time())
    exp = now - int(ended_days_ago * 86400)
    claims = LicenseClaims(
        lid="dated",
        sub="acme",
        tier="pro",
        seats=5,
        iat=exp - 365 * 86400,
        exp=exp,
        grace=int(grace_days * 86400),
    )
    out.write_text(issue(claims, load_private_key(key_dir / "license.key")))


def test_in_grace_checks_allow_and_say_until_when_after_it_they_deny(
    tmp_path: Path, keys: tuple[Path, Path]
) -> None:
    in_grace, expired = tmp_path / "grace.jwt", tmp_path / "expired.jwt"
    issue_dated(keys[0], in_grace, ended_days_ago=2, grace_days=14)
    issue_dated(keys[0], expired, ended_days_ago=20, grace_days=14)
    with sidecar(tmp_path, "grace", licensed_env(tmp_path, "grace", in_grace, keys[0])) as url:
        decision = call(f"{url}/v1/check?tenant=acme&feature=sso")
        status = call(f"{url}/v1/status")["license"]
    assert decision["allow"] is True and decision["reason"] == "ok" and decision["tier"] == "pro"
    assert decision["license_grace_until"] == status["grace_until"]
    assert status["state"] == "grace"
    # the sidecar starts on an expired license (it verifies) and the policy denies every check
    with sidecar(tmp_path, "expired", licensed_env(tmp_path, "expired", expired, keys[0])) as url:
        decisions = [
            call(f"{url}/v1/check?tenant=acme&feature={f}") for f in ("sso", "dashboards", "api_calls")
        ]
        other = call(f"{url}/v1/check?tenant=someone-else&feature=dashboards")
        assert call(f"{url}/v1/status")["license"]["state"] == "expired"
    assert {(d["allow"], d["reason"]) for d in decisions} == {(False, "license_expired")}
    assert other["allow"] is True  # the license is the licensee's: other tenants keep the default tier


def test_renewals_and_a_key_rotation_are_picked_up_while_checks_go_on(
    tmp_path: Path, keys: tuple[Path, Path]
) -> None:
    a, b = keys
    license = tmp_path / "license" / "license.jwt"
    license.parent.mkdir()
    cli_issue(a, license, tier="pro", lid="lic_pro")
    env = licensed_env(tmp_path, "s", license, a, b, license_check_every_s="0.1")
    outcomes: list[tuple[int, bool, str]] = []
    stop = threading.Event()

    def check_in_a_loop(url: str) -> None:
        deadline = time.monotonic() + 120  # bounded even if the test body fails to stop it
        while not stop.is_set() and time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(
                    f"{url}/v1/check?tenant=acme&feature=sso", timeout=10
                ) as response:
                    body = json.loads(response.read())
                outcomes.append((response.status, body["allow"], body["tier"]))
            except Exception as exc:  # every failure is counted, none is expected
                outcomes.append((0, False, repr(exc)))

    def replace(make: Any) -> None:
        """Write the new file beside the old one and rename it over (what a Secret update does)."""
        staged = license.with_suffix(".staged")
        make(staged)
        staged.replace(license)

    def tampered_renewal(path: Path) -> None:
        cli_issue(b, path, tier="pro", lid="lic_bad")
        flip_a_byte(path)

    def wait_for(url: str, predicate: Any) -> dict[str, Any]:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            status = call(f"{url}/v1/status")["license"]
            if predicate(status):
                return dict(status)
            time.sleep(0.05)
        raise AssertionError(f"license status never matched: {status}")

    with sidecar(tmp_path, "s", env) as url:
        checker = threading.Thread(target=check_in_a_loop, args=(url,))
        checker.start()
        try:
            time.sleep(0.5)
            # a renewal signed by the next key (the rotation): pro becomes enterprise
            replace(lambda path: cli_issue(b, path, tier="enterprise", lid="lic_enterprise"))
            renewed = wait_for(url, lambda s: s["id"] == "lic_enterprise")
            time.sleep(0.5)
            assert call(f"{url}/v1/check?tenant=acme&feature=audit_log")["allow"] is True  # enterprise only
            # a tampered renewal is refused: the last good license stays in force, and says so
            replace(tampered_renewal)
            refused = wait_for(url, lambda s: s["last_error"] is not None)
            ready = call(f"{url}/readyz")
            metrics = call(f"{url}/metrics")
            time.sleep(0.5)
        finally:
            stop.set()
            checker.join(timeout=30)
        after = call(f"{url}/v1/check?tenant=acme&feature=audit_log")
    assert renewed["key_id"] == key_id(load_private_key(b / "license.key").public_key())
    assert refused["id"] == "lic_enterprise" and "signature does not verify" in refused["last_error"]
    assert ready["ready"] is True and "lic_enterprise stays in force" in ready["warnings"]["license"]
    assert "tiergate_license_refused 1.0" in metrics and "tiergate_license_refusals_total 1.0" in metrics
    assert after["allow"] is True and after["tier"] == "enterprise"
    failures = [o for o in outcomes if o[0] != 200 or o[1] is not True]
    assert failures == [] and len(outcomes) > 20, (len(outcomes), failures[:5])
    tiers = [tier for _, _, tier in outcomes]
    assert tiers[0] == "pro" and tiers[-1] == "enterprise"
    assert tiers == sorted(tiers, key=["pro", "enterprise"].index)  # never back to the old license
