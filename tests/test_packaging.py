"""What a non-editable install gets: the wheel built from this checkout ships the recorded
traces (one copy, in pbxsim/traces) and the pages, and reads them from inside the wheel."""

from __future__ import annotations

import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest

from tests.support.pbx import TRACES

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The wheel of a copy of the checkout (the build writes into its source tree)."""
    src = tmp_path_factory.mktemp("src")
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    for pattern in project["tool"]["setuptools"]["packages"]["find"]["include"]:
        package = pattern.rstrip("*")
        shutil.copytree(ROOT / package, src / package, ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    shutil.copytree(ROOT / "docs", src / "docs")  # data-files: the units' Documentation=
    dist = tmp_path_factory.mktemp("dist")
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "--quiet",
            "--wheel-dir",
            str(dist),
            str(src),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    (built,) = dist.glob("*.whl")
    return built


def test_the_wheel_ships_every_trace_with_its_manifest_and_asterisk_config(wheel: Path) -> None:
    names = set(zipfile.ZipFile(wheel).namelist())
    traces = {
        "pbxsim/traces/" + p.relative_to(TRACES).as_posix()
        for p in TRACES.rglob("*")
        if p.is_file()
    }
    assert {"pbxsim/traces/manifest.json", "pbxsim/traces/etc/manager.conf"} <= traces
    assert traces <= names
    assert not any(n.startswith(("tests/", "telephony/templates")) for n in names)
    static = {"telefum/static/" + p.name for p in (ROOT / "telefum" / "static").iterdir()}
    assert static <= names


def test_the_simulator_plays_its_traces_from_inside_the_installed_wheel(wheel: Path) -> None:
    # The wheel first on the path: every project module and data file comes from the zip.
    script = (
        "import sys, pbxsim, telephony\n"
        "from pbxsim import synth\n"
        "from pbxsim.server import PbxSimulator\n"
        "assert pbxsim.__file__.startswith(sys.argv[1]), pbxsim.__file__\n"
        "assert telephony.__file__.startswith(sys.argv[1]), telephony.__file__\n"
        "calls = synth.plan(20, 5.0, seed=3)\n"
        "messages = sum(1 for _ in synth.stream(calls))\n"
        "trace = PbxSimulator().click_to_call\n"
        "print(len(synth.load_templates()), len(calls), messages > 20 * 20,\n"
        "      trace.is_file() and trace.read_bytes().startswith(b'Asterisk Call Manager'))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script, str(wheel)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=wheel.parent,
        env={"PYTHONPATH": str(wheel), "PATH": "/usr/bin:/bin"},
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["9", "20", "True", "True"]
