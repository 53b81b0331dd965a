"""``POST /originate`` over real HTTP, to a real AMI listener logged in to the simulated PBX.

What the PBX received (``pbx_sim.originates``) is the proof: nothing for 401/403/429, one
Originate with the agent's channel and the number for an allowed call.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from pbxsim.server import PbxSimulator
from tests.support.agents import ADMIN_TOKEN, AGENT_TOKENS, AgentBridge, agent_settings

T101 = {"Authorization": f"Bearer {AGENT_TOKENS['101']}"}


@pytest.fixture
async def bridge(pbx_sim: PbxSimulator) -> AsyncIterator[AgentBridge]:
    pbx_sim.click_to_call = None  # the PBX side of the call is not what these pin
    async with AgentBridge(agent_settings(rate_limit=2), pbx=pbx_sim) as b:
        yield b


def sent(pbx: PbxSimulator) -> list[dict[str, str]]:
    return [{k.lower(): v for k, v in o.items()} for o in pbx.originates]


async def test_without_a_valid_token_nothing_is_originated(
    bridge: AgentBridge, pbx_sim: PbxSimulator
) -> None:
    body = {"extension": "101", "number": "+79161234567"}
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "Basic eA=="}):
        status, answer, _ = await bridge.post("/originate", json=body, headers=headers)
        assert status == 401, answer
        assert "token" in answer["error"]
    status, _, _ = await bridge.post("/originate", data={**body, "token": "nope"})
    assert status == 401
    status, _, _ = await bridge.post("/originate?token=", json=body)
    assert status == 401
    await bridge.barrier()
    assert pbx_sim.originates == []


async def test_an_agent_token_dials_only_from_its_own_extension(
    bridge: AgentBridge, pbx_sim: PbxSimulator
) -> None:
    status, answer, _ = await bridge.post(
        "/originate", json={"extension": "102", "number": "+79161234567"}, headers=T101
    )
    assert status == 403 and "102" in answer["error"]
    await bridge.barrier()
    assert pbx_sim.originates == []


@pytest.mark.parametrize(
    "number, reason",
    [
        ("88091234567", "premium"),
        ("+375291234567", "international"),
        ("101", "not an outside phone number"),
    ],
)
async def test_a_number_not_allowed_is_403_with_the_reason(
    bridge: AgentBridge, pbx_sim: PbxSimulator, number: str, reason: str
) -> None:
    status, answer, _ = await bridge.post(
        "/originate", json={"extension": "101", "number": number}, headers=T101
    )
    assert status == 403 and reason in answer["error"]
    await bridge.barrier()
    assert pbx_sim.originates == []


async def test_an_allowed_call_sends_one_originate_ringing_the_agent_first(
    bridge: AgentBridge, pbx_sim: PbxSimulator
) -> None:
    status, answer, _ = await bridge.post(
        "/originate", json={"extension": "101", "number": "telf:8 (916) 123-45-67"}, headers=T101
    )
    assert status == 202, answer
    assert (answer["extension"], answer["number"]) == ("101", "+79161234567")
    (o,) = sent(pbx_sim)
    assert o["channel"] == "PJSIP/101"
    assert o["exten"] == "79161234567"
    assert o["context"] == "from-internal"
    assert o["callerid"] == "79161234567"
    assert o["async"] == "true" and o["priority"] == "1"


async def test_form_posts_work_and_the_extension_defaults_to_the_tokens_own(
    bridge: AgentBridge, pbx_sim: PbxSimulator
) -> None:
    status, answer, _ = await bridge.post(
        "/originate", data={"number": "+74951234567", "token": AGENT_TOKENS["102"]}
    )
    assert status == 202, answer
    assert [o["channel"] for o in sent(pbx_sim)] == ["PJSIP/102"]


async def test_the_admin_token_may_dial_from_any_extension(
    bridge: AgentBridge, pbx_sim: PbxSimulator
) -> None:
    status, answer, _ = await bridge.post(
        "/originate",
        json={"extension": "103", "number": "+74951234567"},
        headers={"Authorization": f"Bearer {ADMIN_TOKEN}"},
    )
    assert status == 202, answer
    status, answer, _ = await bridge.post(
        "/originate",
        json={"number": "+74951234567"},
        headers={"Authorization": f"Bearer {ADMIN_TOKEN}"},
    )
    assert status == 400 and "extension" in answer["error"]
    assert [o["channel"] for o in sent(pbx_sim)] == ["PJSIP/103"]


async def test_the_rate_limit_answers_429_with_retry_after(
    bridge: AgentBridge, pbx_sim: PbxSimulator
) -> None:
    body = {"extension": "101", "number": "+79161234567"}
    for _ in range(2):
        status, _, _ = await bridge.post("/originate", json=body, headers=T101)
        assert status == 202
    status, answer, headers = await bridge.post("/originate", json=body, headers=T101)
    assert status == 429
    assert 1 <= int(headers["Retry-After"]) <= 60 and answer["retry_after_s"] >= 1
    # another extension is not held back by 101's calls
    status, _, _ = await bridge.post(
        "/originate",
        json={"extension": "102", "number": "+79161234567"},
        headers={"Authorization": f"Bearer {AGENT_TOKENS['102']}"},
    )
    assert status == 202
    await bridge.barrier()
    assert [o["channel"] for o in sent(pbx_sim)] == ["PJSIP/101", "PJSIP/101", "PJSIP/102"]


async def test_a_pbx_that_refuses_the_originate_gives_502(pbx_sim: PbxSimulator) -> None:
    pbx_sim.click_to_call = None
    # an empty channel: the PBX answers "Response: Error" as Asterisk does
    async with AgentBridge(agent_settings(channel=""), pbx=pbx_sim) as b:
        status, answer, _ = await b.post(
            "/originate", json={"extension": "101", "number": "+79161234567"}, headers=T101
        )
    assert status == 502 and "refused" in answer["error"]


async def test_a_malformed_body_is_a_400_after_the_token_check_never_a_500(
    bridge: AgentBridge, pbx_sim: PbxSimulator
) -> None:
    json_type = {"Content-Type": "application/json"}
    deep = "[" * 100_000 + "]" * 100_000  # the JSON decoder runs out of recursion
    for headers, status_wanted in (
        ({}, 401),
        ({"Authorization": "Bearer wrong"}, 401),
        (T101, 400),
    ):
        status, answer, _ = await bridge.post(
            "/originate", data=deep, headers={**json_type, **headers}
        )
        assert status == status_wanted, answer
    for body, why in (
        ("[1, 2]", "must be a JSON object"),
        ("{not json", "not valid JSON"),
        ('{"extension": {"$gt": ""}, "number": "+79161234567"}', "'extension' must be a string"),
        ('{"extension": "101", "number": ["+79161234567"]}', "'number' must be a string"),
    ):
        status, answer, _ = await bridge.post(
            "/originate", data=body, headers={**json_type, **T101}
        )
        assert (status, why in answer["error"]) == (400, True), answer
    # a token in the body is still read, and the body's shape checked after it
    status, answer, _ = await bridge.post(
        "/originate", json={"token": AGENT_TOKENS["101"], "extension": 101, "number": [1]}
    )
    assert status == 400 and "'number'" in answer["error"]
    await bridge.barrier()
    assert pbx_sim.originates == []


async def test_an_extension_or_number_in_other_digits_dials_nothing(
    bridge: AgentBridge, pbx_sim: PbxSimulator
) -> None:
    admin = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    for body, why in (
        ({"extension": "\u0661\u0660\u0661", "number": "+79161234567"}, "not an extension"),
        (
            {
                "extension": "101",
                "number": "\u0668\u0669\u0661\u0666\u0661\u0662\u0663\u0664\u0665\u0666\u0667",
            },
            "not an outside phone number",
        ),
    ):
        status, answer, _ = await bridge.post("/originate", json=body, headers=admin)
        assert status == 403 and why in answer["error"], answer
    status, _, _ = await bridge.get(f"/agent/%D9%A1%D9%A0%D9%A1?token={ADMIN_TOKEN}")
    assert status == 404
    await bridge.barrier()
    assert pbx_sim.originates == []


async def test_a_body_that_never_arrives_is_a_408_not_a_held_connection(
    bridge: AgentBridge, pbx_sim: PbxSimulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("telefum.agent_routes.BODY_TIMEOUT_S", 0.5)
    host, port = bridge.url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(
        b"POST /originate HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        + f"Authorization: Bearer {AGENT_TOKENS['101']}\r\n".encode()
        + b"Content-Length: 100\r\n\r\n"
        + b'{"extension": "1'
    )
    await writer.drain()
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
    body = await reader.readexactly(length)
    writer.close()
    assert head.startswith(b"HTTP/1.1 408") and b"did not arrive" in body
    await bridge.barrier()
    assert pbx_sim.originates == []
