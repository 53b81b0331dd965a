"""The packages keep apart as docs/architecture.md says: the bridge's own packages never
import the shell or the tools, and the PBX side and the CRM side never import each other."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

# package -> top-level packages of this repository it must never import
FORBIDDEN = {
    "telephony": {"telefum", "pbxsim", "crm_client", "worker", "tests", "bench"},
    "crm_client": {"telefum", "pbxsim", "telephony", "worker", "tests", "bench"},
    "worker": {"telefum", "pbxsim", "tests", "bench"},
    "pbxsim": {"telefum", "crm_client", "worker", "tests", "bench"},
    "telefum": {"tests", "bench"},
}


def imports_of(package: str) -> dict[str, set[str]]:
    """Module path -> every module it imports by absolute name (at any depth)."""
    found: dict[str, set[str]] = {}
    for path in sorted((ROOT / package).rglob("*.py")):
        names: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                names |= {alias.name for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                names.add(node.module)
        found[str(path.relative_to(ROOT))] = names
    return found


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_a_package_imports_none_of_the_packages_it_must_stay_apart_from(package: str) -> None:
    bad = sorted(
        f"{module}: {name}"
        for module, names in imports_of(package).items()
        for name in names
        if name.partition(".")[0] in FORBIDDEN[package]
    )
    assert bad == []


def test_the_simulator_uses_only_the_ami_codec_of_the_bridge() -> None:
    used = {
        name
        for names in imports_of("pbxsim").values()
        for name in names
        if name.partition(".")[0] == "telephony"
    }
    assert used == {"telephony.ami"}
