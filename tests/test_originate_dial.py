"""``telefum dial telf:...`` (the desktop's telf: handler) against a running bridge."""

from __future__ import annotations

import asyncio
import configparser
import os
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from pbxsim.server import PbxSimulator
from telefum.cli import main
from tests.support.agents import ADMIN_TOKEN, AGENT_TOKENS, AgentBridge, agent_settings

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
async def bridge(pbx_sim: PbxSimulator) -> AsyncIterator[AgentBridge]:
    pbx_sim.click_to_call = None
    async with AgentBridge(agent_settings(), pbx=pbx_sim) as b:
        yield b


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    for name in (
        "TELEFUM_AGENT_TOKEN",
        "TELEFUM_AGENT_EXTENSION",
        "TELEFUM_BRIDGE_URL",
        "TELEFUM_CONFIG",
    ):
        monkeypatch.delenv(name, raising=False)
    agent_file = tmp_path / "agent.toml"
    monkeypatch.setenv("TELEFUM_AGENT_FILE", str(agent_file))
    return agent_file


async def dial(*args: str) -> int:
    # the command blocks on HTTP: run it beside the event loop that serves the bridge
    return await asyncio.to_thread(main, ["dial", *args])


async def test_the_agent_file_says_who_dials_and_where(
    bridge: AgentBridge,
    pbx_sim: PbxSimulator,
    clean_env: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    clean_env.write_text(
        f'bridge = "{bridge.url}"\nextension = "101"\ntoken = "{AGENT_TOKENS["101"]}"\n'
    )
    clean_env.chmod(0o600)
    assert await dial("telf:+79161234567") == 0
    assert "calling +79161234567" in capsys.readouterr().out
    assert [(o["Channel"], o["Exten"]) for o in pbx_sim.originates] == [
        ("PJSIP/101", "79161234567")
    ]


async def test_environment_wins_over_the_file_and_refusals_exit_1_with_the_reason(
    bridge: AgentBridge,
    pbx_sim: PbxSimulator,
    clean_env: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    clean_env.write_text(f'bridge = "{bridge.url}"\nextension = "101"\ntoken = "stale"\n')
    monkeypatch.setenv("TELEFUM_AGENT_TOKEN", AGENT_TOKENS["102"])
    monkeypatch.setenv("TELEFUM_AGENT_EXTENSION", "102")
    assert await dial("telf:88091234567") == 1
    assert "premium" in capsys.readouterr().err
    assert await dial("--extension", "101", "telf:+79161234567") == 1  # not 102's to use
    assert "extension 101" in capsys.readouterr().err
    assert pbx_sim.originates == []
    assert await dial("tel:+7%20495%20123-45-67") == 0
    assert [o["Channel"] for o in pbx_sim.originates] == ["PJSIP/102"]


async def test_without_a_token_it_says_how_to_set_one_and_dials_nothing(
    bridge: AgentBridge, pbx_sim: PbxSimulator, capsys: pytest.CaptureFixture[str]
) -> None:
    assert await dial("--bridge", bridge.url, "--extension", "101", "telf:+79161234567") == 2
    assert "TELEFUM_AGENT_TOKEN" in capsys.readouterr().err
    assert pbx_sim.originates == []


async def test_the_bridges_own_settings_give_its_address_and_the_agents_token(
    bridge: AgentBridge, pbx_sim: PbxSimulator, tmp_path: Path
) -> None:
    host, port = bridge.url.removeprefix("http://").split(":")
    config = tmp_path / "settings.toml"
    config.write_text(
        f'[http]\nlisten = "{host}:{port}"\n[http.agent_tokens]\n"103" = "{AGENT_TOKENS["103"]}"\n'
    )
    assert await dial("--config", str(config), "--extension", "103", "telf:84951234567") == 0
    assert [o["Channel"] for o in pbx_sim.originates] == ["PJSIP/103"]


def test_an_unreachable_bridge_is_reported(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from tests.conftest import free_port

    monkeypatch.setenv("TELEFUM_AGENT_TOKEN", "t")
    assert main(["dial", "--bridge", f"http://127.0.0.1:{free_port()}", "telf:+79161234567"]) == 1
    assert "did not answer" in capsys.readouterr().err


def test_the_desktop_entry_hands_telf_urls_to_telefum_dial() -> None:
    entry = configparser.ConfigParser(interpolation=None)
    entry.optionxform = str  # type: ignore[assignment,method-assign]
    entry.read(REPO / "deploy" / "telefum-dial.desktop")
    section = entry["Desktop Entry"]
    assert "x-scheme-handler/telf" in section["MimeType"].split(";")
    exec_ = section["Exec"].split()
    assert exec_[:2] == ["telefum", "dial"] and exec_[-1] == "%u"
    assert section["Type"] == "Application" and section["Terminal"] == "false"


# --- the command as the desktop runs it: a process of its own ----------------------------


async def dial_process(
    *args: str, tmp_path: Path, env: dict[str, str] | None = None
) -> tuple[int, str, str]:
    """``telefum dial ARGS`` as a process, with no agent file and no TELEFUM_* of ours."""
    base = {k: v for k, v in os.environ.items() if not k.startswith("TELEFUM_")}
    base["TELEFUM_AGENT_FILE"] = str(tmp_path / "no-agent.toml")
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "telefum.cli",
        "dial",
        *args,
        cwd=REPO,
        env=base | (env or {}),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 30)
    return proc.returncode or 0, out.decode(), err.decode()


def bridge_settings(bridge: AgentBridge, tmp_path: Path, http: str) -> Path:
    host, port = bridge.url.removeprefix("http://").split(":")
    config = tmp_path / "settings.toml"
    config.write_text(f'[http]\nlisten = "{host}:{port}"\n{http}')
    return config


async def test_without_an_extension_it_says_an_extension_is_needed(
    bridge: AgentBridge, pbx_sim: PbxSimulator, tmp_path: Path
) -> None:
    code, _, err = await dial_process(
        "--bridge", bridge.url, "telf:+79161234567", tmp_path=tmp_path
    )
    assert code == 2
    assert "which extension dials?" in err and "--extension" in err, err
    assert "TELEFUM_AGENT_TOKEN" not in err

    # on the bridge's machine: its settings hold tokens, but none says which extension
    tokens = f'token = "{ADMIN_TOKEN}"\n[http.agent_tokens]\n"101" = "{AGENT_TOKENS["101"]}"\n'
    config = bridge_settings(bridge, tmp_path, tokens)
    code, _, err = await dial_process(
        "--config", str(config), "telf:+79161234567", tmp_path=tmp_path
    )
    assert code == 2 and "which extension dials?" in err, err

    # the admin token names no extension either: the bridge's 400 is said the same way
    code, _, err = await dial_process(
        "--bridge",
        bridge.url,
        "telf:+79161234567",
        tmp_path=tmp_path,
        env={"TELEFUM_AGENT_TOKEN": ADMIN_TOKEN},
    )
    assert code == 2 and "which extension dials?" in err, err
    assert pbx_sim.originates == []


async def test_with_config_the_admin_token_dials_for_an_extension_without_a_token_of_its_own(
    bridge: AgentBridge, pbx_sim: PbxSimulator, tmp_path: Path
) -> None:
    config = bridge_settings(bridge, tmp_path, f'token = "{ADMIN_TOKEN}"\n')
    code, out, err = await dial_process(
        "--config", str(config), "-e", "102", "telf:84951234567", tmp_path=tmp_path
    )
    assert code == 0, err
    assert "calling +74951234567" in out
    assert [o["Channel"] for o in pbx_sim.originates] == ["PJSIP/102"]
