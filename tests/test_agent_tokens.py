"""Who may open what over HTTP: the agent pages, click-to-call and the report, guarded by
``agent_routes.Tokens`` and served the way the service shell serves them (no PBX and no
Redis here: past the token check, click-to-call and the figures answer 503)."""

from __future__ import annotations

import pytest

from telefum.config import Settings
from tests.support.agents import ADMIN_TOKEN, AGENT_TOKENS, AgentBridge, agent_settings

PAGES = ("/agent/101", "/agent/101/state", "/report", "/report.json")


async def test_a_request_without_a_token_is_refused_with_a_bearer_challenge() -> None:
    async with AgentBridge(agent_settings()) as bridge:
        for path in ("/agent/101", "/report"):
            status, body, headers = await bridge.get(path)
            assert status == 401 and "token" in body, path
            assert headers["WWW-Authenticate"].startswith("Bearer"), path


async def test_a_token_opens_a_page_from_the_authorization_header_as_from_the_query() -> None:
    token = AGENT_TOKENS["101"]
    async with AgentBridge(agent_settings()) as bridge:
        status, _, _ = await bridge.get("/agent/101", headers={"Authorization": f"Bearer {token}"})
        assert status == 200
        status, _, _ = await bridge.get("/agent/101", params={"token": token})
        assert status == 200
        status, _, _ = await bridge.get("/agent/101", headers={"Authorization": "Bearer wrong"})
        assert status == 401


async def test_the_admin_token_opens_every_extensions_page_and_the_report() -> None:
    admin = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    async with AgentBridge(agent_settings()) as bridge:
        for path in ("/agent/101", "/agent/103", "/agent/555", "/report"):
            status, _, _ = await bridge.get(path, headers=admin)
            assert status == 200, path
        status, answer, _ = await bridge.post(
            "/originate", json={"extension": "103", "number": "+74951234567"}, headers=admin
        )
        assert status == 503 and "no PBX link" in answer["error"]  # let through to dial


@pytest.mark.parametrize(
    "how",
    [{"params": {"token": ""}}, {"headers": {"Authorization": "Bearer "}}, {}],
    ids=["empty query token", "empty bearer", "none"],
)
async def test_with_no_token_configured_an_empty_token_opens_nothing(how: dict) -> None:
    async with AgentBridge(Settings()) as bridge:  # [http] token and agent tokens unset
        for path in PAGES:
            status, _, _ = await bridge.get(path, **how)
            assert status == 401, path
        status, _, _ = await bridge.post(
            "/originate", data={"extension": "101", "number": "+74951234567", "token": ""}
        )
        assert status == 401


async def test_an_extension_without_a_token_of_its_own_opens_only_to_the_admin() -> None:
    async with AgentBridge(agent_settings()) as bridge:
        for token in ("", AGENT_TOKENS["101"]):
            status, _, _ = await bridge.get("/agent/104", params={"token": token})
            assert status == 401, token
        status, _, _ = await bridge.get("/agent/104", params={"token": ADMIN_TOKEN})
        assert status == 200
