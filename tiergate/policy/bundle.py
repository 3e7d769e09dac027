"""Reading a policy bundle from disk: the Rego modules of a directory plus the plans catalog."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from tiergate.catalog import parse_catalog
from tiergate.errors import CatalogError, PolicyError
from tiergate.policy.engine import PolicyBundle

REVISION_LENGTH = 12


def load_bundle(policies_dir: Path, plans_path: Path) -> PolicyBundle:
    """Every `*.rego` under `policies_dir` but the `*_test.rego` ones, and `plans_path` as `data.plans`.

    Module names are paths relative to `policies_dir` (`entitlements.rego`, `extra/x.rego`).
    Hidden entries are skipped and symlinks followed, so a Kubernetes ConfigMap mount (files
    symlinked into a `..data` directory) is read once, through its visible names.
    Raises PolicyError (no module, unreadable or non-UTF-8 file) or CatalogError.
    """
    files = policy_files(policies_dir)
    modules = {name: _read_module(path) for name, path in files}
    catalog_text = _read_catalog(plans_path)
    # parse the text we hashed (not load_catalog's own read): revision and content cannot disagree
    catalog = parse_catalog(catalog_text, str(plans_path))
    return PolicyBundle(
        modules=modules,
        catalog=catalog,
        revision=bundle_revision(modules, catalog_text),
        sources=(*(str(path) for _, path in files), str(plans_path)),
    )


def policy_files(policies_dir: Path) -> list[tuple[str, Path]]:
    """(module name, path) of each policy module, sorted by name."""
    if not policies_dir.is_dir():
        raise PolicyError(f"policy directory {policies_dir} does not exist or is not a directory")
    found: list[tuple[str, Path]] = []
    seen_dirs: set[str] = set()
    for root, dirs, names in os.walk(policies_dir, followlinks=True):
        real = os.path.realpath(root)
        if real in seen_dirs:  # a symlink loop: following links must not walk forever
            dirs.clear()
            continue
        seen_dirs.add(real)
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        for name in names:
            if _is_module(name):
                path = Path(root, name)
                found.append((path.relative_to(policies_dir).as_posix(), path))
    if not found:
        raise PolicyError(f"no Rego module (*.rego, not *_test.rego) in {policies_dir}")
    return sorted(found)


def bundle_revision(modules: dict[str, str], catalog_text: str) -> str:
    """A short content hash; length prefixes keep `("ab", "c")` and `("a", "bc")` apart."""
    digest = hashlib.sha256()
    for part in (*(p for item in sorted(modules.items()) for p in item), catalog_text):
        data = part.encode()
        digest.update(len(data).to_bytes(8, "big"))
        digest.update(data)
    return digest.hexdigest()[:REVISION_LENGTH]


def _is_module(name: str) -> bool:
    return name.endswith(".rego") and not name.endswith("_test.rego") and not name.startswith(".")


def _read_module(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise PolicyError(f"policy module {path} is not UTF-8 text: {exc.reason}") from exc
    except OSError as exc:
        raise PolicyError(f"cannot read policy module {path}: {exc.strerror}") from exc


def _read_catalog(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) else f"not UTF-8 ({exc.reason})"
        message = f"cannot read catalog {path}: {reason}"
        raise CatalogError(message, [("", message)]) from exc
