"""The lock (requirements/*.txt) agrees with pyproject.toml and clients/python/pyproject.toml: every
requirement pinned inside its specifier, every pin explained, every pin hashed (docs/adr/0025)."""

from __future__ import annotations

from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from tests.lockfile import REQUIREMENTS, ROOT, Pin, project, read_lock, requirements

SERVER = ROOT / "pyproject.toml"
CLIENT = ROOT / "clients" / "python" / "pyproject.toml"
OURS = {"tiergate", "tiergate-client"}

# lock file -> the requirements it must satisfy (the lock's roots), as `make lock` compiles it
LOCKS: dict[str, list[Requirement]] = {
    "runtime.txt": requirements(SERVER, "otel") + requirements(CLIENT),
    "dev.txt": requirements(SERVER, "dev") + requirements(CLIENT, "aio", "fastapi"),
    "client.txt": requirements(CLIENT),
    "client-gates.txt": requirements(CLIENT, "aio", "fastapi"),
}


def third_party(roots: list[Requirement]) -> list[Requirement]:
    return [r for r in roots if canonicalize_name(r.name) not in OURS]


@pytest.mark.parametrize("lock", sorted(LOCKS))
def test_every_requirement_is_pinned_inside_its_specifier(lock: str) -> None:
    pins = read_lock(REQUIREMENTS / lock)
    for requirement in third_party(LOCKS[lock]):
        pin = pins.get(canonicalize_name(requirement.name))
        assert pin is not None, f"{requirement} is not in requirements/{lock}: run make lock"
        assert requirement.specifier.contains(pin.version, prereleases=True), (
            f"requirements/{lock} pins {pin.name}=={pin.version}, outside {requirement}: run make lock"
        )


@pytest.mark.parametrize("lock", sorted(LOCKS))
def test_every_pin_is_explained_by_a_requirement(lock: str) -> None:
    """Each pin is a root or required by another pin: walking up its `via` reaches a root."""
    pins = read_lock(REQUIREMENTS / lock)
    roots: set[str] = {canonicalize_name(r.name) for r in third_party(LOCKS[lock])}
    for pin in pins.values():
        assert pin.via, f"requirements/{lock}: {pin.name} says nothing of what requires it"
        assert explained(pin, pins, roots, set()), f"requirements/{lock}: nothing here requires {pin.name}"


def explained(pin: Pin, pins: dict[str, Pin], roots: set[str], seen: set[str]) -> bool:
    if pin.name in roots:
        return True
    seen.add(pin.name)
    parents = {canonicalize_name(v.split(" ")[0]) for v in pin.via}
    if parents & OURS:
        return False  # only a root may be required by our own projects directly
    return any(p in pins and p not in seen and explained(pins[p], pins, roots, seen) for p in parents)


@pytest.mark.parametrize("lock", sorted(LOCKS))
def test_every_pin_is_hashed_and_nothing_of_ours_is_locked(lock: str) -> None:
    pins = read_lock(REQUIREMENTS / lock)
    assert not OURS & set(pins)
    assert all(pin.hashes for pin in pins.values())


def test_the_dev_lock_holds_the_runtime_lock_at_the_same_versions() -> None:
    runtime, dev = read_lock(REQUIREMENTS / "runtime.txt"), read_lock(REQUIREMENTS / "dev.txt")
    assert {n: p.version for n, p in runtime.items()} == {n: dev[n].version for n in runtime}


def test_the_engine_has_a_hash_for_every_published_file() -> None:
    """x86_64 and aarch64 manylinux_2_34, macOS arm64 and x86_64, Windows and the sdist, as of 0.13.0."""
    engine = read_lock(REQUIREMENTS / "runtime.txt")["gordon-to-regorus"]
    assert engine.version == "0.13.0" and len(engine.hashes) == 6
    assert "a548d0b8564a79c248873f675b943eafdf9a117fcae35a8237878c7bcbaacdff" in engine.hashes  # aarch64
    assert "32806ebac3e6341b71fc4e9b9c72f6fd3d3c8193e8becd6b8394d6a6f73b5b6f" in engine.hashes  # macOS arm64


def test_the_engine_requirement_file_matches_the_lock() -> None:
    """requirements/engine.txt (the engine alone, hash-checked) holds the lock's pin and hashes."""
    engine = read_lock(REQUIREMENTS / "engine.txt")["gordon-to-regorus"]
    locked = read_lock(REQUIREMENTS / "runtime.txt")["gordon-to-regorus"]
    assert (engine.version, engine.hashes) == (locked.version, locked.hashes)


def test_the_server_requires_the_client_at_its_own_version() -> None:
    version = project(SERVER)["version"]
    assert project(CLIENT)["version"] == version
    assert f"tiergate-client=={version}" in [str(r) for r in requirements(SERVER)]


def test_a_broken_lock_is_caught(tmp_path: Path) -> None:
    """The checks above can fail: a pin moved outside its specifier is seen."""
    lock = (REQUIREMENTS / "runtime.txt").read_text(encoding="utf-8")
    broken = tmp_path / "runtime.txt"
    broken.write_text(lock.replace("stripe==16.1.0", "stripe==15.0.0"), encoding="utf-8")
    stripe = read_lock(broken)["stripe"]
    (requirement,) = [r for r in requirements(SERVER) if r.name == "stripe"]
    assert not requirement.specifier.contains(stripe.version)
