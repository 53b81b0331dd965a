"""``telefum config check`` as admins run it: a process, stdout/stderr, exit status."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

GOOD = """
[ami]
host = "pbx.local"
username = "telefum"
secret = "ami-secret-value"

[crm]
url = "https://crm.example.com/rest"
login = "bridge"
password = "crm-secret-value"
"""


def check(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("TELEFUM_")}
    return subprocess.run(
        [sys.executable, "-m", "telefum.cli", "config", "check", *args],
        capture_output=True,
        text=True,
        timeout=30,
        cwd=ROOT,
        env={**clean, **(env or {})},
    )


def test_good_config_prints_the_effective_settings_with_secrets_masked(tmp_path: Path) -> None:
    path = tmp_path / "settings.toml"
    path.write_text(GOOD)
    done = check("--config", str(path), env={"TELEFUM_HTTP__TOKEN": "tok-value-123"})
    assert done.returncode == 0, done.stderr
    assert 'host = "pbx.local"' in done.stdout
    assert "TELEFUM_HTTP__TOKEN" in done.stdout  # says what the environment changed
    for secret in ("ami-secret-value", "crm-secret-value", "tok-value-123"):
        assert secret not in done.stdout + done.stderr
    assert done.stdout.count('"**********"') == 3  # pydantic's SecretStr, as it shows itself


def test_the_shipped_settings_toml_passes() -> None:
    done = check("--config", "settings.toml")
    assert done.returncode == 0, done.stderr


BAD = {
    "missing key": (GOOD.replace('secret = "ami-secret-value"\n', ""), "ami.secret", "missing"),
    "wrong type": (GOOD + 'timeout_s = "ten"\n', "crm.timeout_s", "expected a number"),
    "unknown key": (GOOD + 'pasword = "x"\n', "crm.pasword", 'did you mean "password"'),
    "unknown section": (GOOD + '[reddis]\nurl = ""\n', "reddis", 'did you mean "redis"'),
    "bad enum": (GOOD + 'phone_format = "intl"\n', "crm.phone_format", '"national"'),
    "invalid toml": (GOOD + "[http\n", "invalid TOML", f"(at line {GOOD.count(chr(10)) + 1},"),
    "url fragment": (GOOD.replace("/rest", "/rest#x"), "crm.url", "#fragment"),
    "empty host": (GOOD.replace('"pbx.local"', '""'), "ami.host", "non-empty"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_config_gives_one_line_naming_file_and_key_and_exit_2(
    tmp_path: Path, case: str
) -> None:
    text, key, expected = BAD[case]
    path = tmp_path / "settings.toml"
    path.write_text(text)
    done = check("--config", str(path))
    assert done.returncode == 2
    assert done.stdout == ""
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert str(path) in lines[0] and key in lines[0] and expected in lines[0]
    assert "Traceback" not in done.stderr


@pytest.mark.parametrize("kind", ["missing", "directory"])
def test_unreadable_file_gives_one_line_and_exit_2(tmp_path: Path, kind: str) -> None:
    path = tmp_path / "nope.toml"
    if kind == "directory":
        path.mkdir()
    done = check("--config", str(path))
    assert done.returncode == 2
    assert done.stderr.count("\n") == 1
    assert str(path) in done.stderr and "cannot read the file" in done.stderr


def test_bad_env_override_fails_the_same_way(tmp_path: Path) -> None:
    path = tmp_path / "settings.toml"
    path.write_text(GOOD)
    done = check("--config", str(path), env={"TELEFUM_AMI__PORT": "50x"})
    assert done.returncode == 2
    assert "ami.port (from TELEFUM_AMI__PORT): expected an integer" in done.stderr


def test_bad_env_section_names_the_variable(tmp_path: Path) -> None:
    path = tmp_path / "settings.toml"
    path.write_text(GOOD)
    done = check("--config", str(path), env={"TELEFUM_REDDIS__URL": "redis://r:6379/0"})
    assert done.returncode == 2
    assert "reddis (from TELEFUM_REDDIS__URL): unknown section" in done.stderr


@pytest.mark.parametrize("listen", ["0.0.0.0:8088", "[::]:8088"])
@pytest.mark.parametrize("quiet", [[], ["--quiet"], ["-q"]])
def test_listening_on_all_interfaces_is_warned_about_even_when_quiet(
    tmp_path: Path, listen: str, quiet: list[str]
) -> None:
    """The systemd unit runs `config check --quiet` before it starts: the journal shows it."""
    path = tmp_path / "settings.toml"
    path.write_text(GOOD + f'[http]\nlisten = "{listen}"\n')
    done = check("--config", str(path), *quiet)
    assert done.returncode == 0, done.stderr
    assert "reachable from the network" in done.stderr
    assert (done.stdout == "") == bool(quiet)


def test_a_variable_that_reaches_no_key_is_warned_about(tmp_path: Path) -> None:
    path = tmp_path / "settings.toml"
    path.write_text(GOOD)
    done = check("--config", str(path), "-q", env={"TELEFUM_AMI_SECRET": "s3cret-value"})
    assert done.returncode == 0, done.stderr
    assert 'TELEFUM_AMI_SECRET is not a setting (did you mean "TELEFUM_AMI__SECRET"?)' in (
        done.stderr
    )
    assert "s3cret-value" not in done.stderr


def test_the_shipped_placeholder_secrets_are_warned_about_and_pass() -> None:
    done = check("--config", "settings.toml", "--quiet")
    assert done.returncode == 0, done.stderr
    assert done.stdout == ""
    assert done.stderr.count('"change-me"') == 3  # [ami] secret, [crm] and agent 101 password


def test_a_good_config_with_long_secrets_gives_no_warning(tmp_path: Path) -> None:
    path = tmp_path / "settings.toml"
    path.write_text(GOOD)
    done = check("--config", str(path), "--quiet")
    assert (done.returncode, done.stdout, done.stderr) == (0, "", "")
