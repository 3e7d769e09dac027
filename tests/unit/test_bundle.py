"""load_bundle: which files make a bundle, its revision, and the errors for a bad directory."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest

from tiergate.errors import CatalogError, PolicyError
from tiergate.policy.bundle import bundle_revision, load_bundle

PLANS = "default_tier: free\ntiers:\n  free: {rank: 0, features: {sso: false}}\n"
MODULE = "package tiergate.entitlements\n\ndecision := {}\n"


@pytest.fixture
def plans(tmp_path: Path) -> Path:
    path = tmp_path / "plans.yaml"
    path.write_text(PLANS)
    return path


def make_policies(root: Path, files: dict[str, str]) -> Path:
    for name, source in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(source)
    return root


def test_reads_modules_sorted_and_the_catalog(tmp_path: Path, plans: Path) -> None:
    policies = make_policies(tmp_path / "p", {"z.rego": MODULE, "a.rego": MODULE, "sub/b.rego": MODULE})

    bundle = load_bundle(policies, plans)

    assert list(bundle.modules) == ["a.rego", "sub/b.rego", "z.rego"]
    assert bundle.plans["default_tier"] == "free"
    assert bundle.sources[-1] == str(plans) and len(bundle.sources) == 4


@pytest.mark.parametrize(
    "skipped", ["entitlements_test.rego", ".hidden.rego", ".git/x.rego", "notes.md", "rego.bak"]
)
def test_test_hidden_and_other_files_are_not_modules(tmp_path: Path, plans: Path, skipped: str) -> None:
    policies = make_policies(tmp_path / "p", {"entitlements.rego": MODULE, skipped: MODULE})

    assert list(load_bundle(policies, plans).modules) == ["entitlements.rego"]


def test_configmap_mount_is_read_once_through_its_symlinks(tmp_path: Path, plans: Path) -> None:
    mount = make_policies(tmp_path / "mount", {"..2026_11_24/entitlements.rego": MODULE})
    (mount / "..data").symlink_to("..2026_11_24")
    (mount / "entitlements.rego").symlink_to("..data/entitlements.rego")

    bundle = load_bundle(mount, plans)

    assert bundle.modules == {"entitlements.rego": MODULE}


def test_a_symlink_loop_does_not_walk_forever(tmp_path: Path, plans: Path) -> None:
    policies = make_policies(tmp_path / "p", {"a.rego": MODULE})
    (policies / "loop").symlink_to(policies)

    assert "a.rego" in load_bundle(policies, plans).modules


@pytest.mark.parametrize(
    ("change", "same"),
    [
        (lambda p, c: None, True),
        (lambda p, c: (p / "a.rego").write_text(MODULE + "\n"), False),
        (lambda p, c: (p / "b.rego").write_text(MODULE), False),
        (lambda p, c: c.write_text(PLANS + "\n"), False),
        (lambda p, c: (p / "a_test.rego").write_text(MODULE), True),
    ],
    ids=["nothing", "module edited", "module added", "catalog edited", "test added"],
)
def test_revision_follows_content(
    tmp_path: Path, plans: Path, change: Callable[[Path, Path], object], same: bool
) -> None:
    policies = make_policies(tmp_path / "p", {"a.rego": MODULE})
    before = load_bundle(policies, plans).revision

    change(policies, plans)

    assert (load_bundle(policies, plans).revision == before) is same


def test_revision_separates_names_from_sources() -> None:
    assert bundle_revision({"ab": "c"}, "") != bundle_revision({"a": "bc"}, "")


def test_missing_directory_is_a_policy_error(tmp_path: Path, plans: Path) -> None:
    with pytest.raises(PolicyError, match="does not exist"):
        load_bundle(tmp_path / "nope", plans)


def test_directory_without_modules_is_a_policy_error(tmp_path: Path, plans: Path) -> None:
    policies = make_policies(tmp_path / "p", {"only_test.rego": MODULE})

    with pytest.raises(PolicyError, match="no Rego module"):
        load_bundle(policies, plans)


def test_unreadable_module_is_a_policy_error_naming_it(tmp_path: Path, plans: Path) -> None:
    policies = make_policies(tmp_path / "p", {"a.rego": MODULE})
    (policies / "gone.rego").symlink_to(tmp_path / "nowhere.rego")
    (policies / "latin1.rego").write_bytes(b"package x\n# caf\xe9\n")

    with pytest.raises(PolicyError, match=r"gone\.rego|latin1\.rego"):
        load_bundle(policies, plans)


@pytest.mark.parametrize("catalog", ["missing", "invalid"])
def test_bad_catalog_is_a_catalog_error_naming_the_file(tmp_path: Path, catalog: str) -> None:
    policies = make_policies(tmp_path / "p", {"a.rego": MODULE})
    plans = tmp_path / "plans.yaml"
    if catalog == "invalid":
        plans.write_text("default_tier: nope\ntiers: {}\n")

    with pytest.raises(CatalogError, match=r"plans\.yaml"):
        load_bundle(policies, plans)


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads files whatever their mode")
def test_permission_denied_is_a_policy_error(tmp_path: Path, plans: Path) -> None:
    policies = make_policies(tmp_path / "p", {"a.rego": MODULE})
    (policies / "a.rego").chmod(0)

    with pytest.raises(PolicyError, match="cannot read policy module"):
        load_bundle(policies, plans)
