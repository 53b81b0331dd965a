"""The simulated PBX speaks AMI like Asterisk does, over real TCP (a raw-socket client here,
so these tests do not lean on the listener they are meant to exercise)."""

from __future__ import annotations

import asyncio
import contextlib
import time

import pytest

from pbxsim.server import Script, load_trace
from telephony.ami import AmiCodec, Message, encode, parse_trace
from tests.support.pbx import PBX_SECRET, PBX_USER, TRACES, FaultyPbx

T01 = TRACES / "01-inbound-answered-caller-hangup.ami"


class RawClient:
    """A bare AMI client: send actions, collect everything that comes back."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self.codec = AmiCodec()
        self.inbox: list[Message] = []

    @classmethod
    async def connect(cls, port: int) -> RawClient:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        return cls(reader, writer)

    async def send(self, **headers: str) -> None:
        self.writer.write(encode(headers))
        await self.writer.drain()

    async def until(self, pred, timeout: float = 5.0) -> Message:  # type: ignore[no-untyped-def]
        """The first message (old or new) matching ``pred``."""

        async def _read() -> Message:
            seen = 0
            while True:
                for msg in self.inbox[seen:]:
                    if pred(msg):
                        return msg
                seen = len(self.inbox)
                data = await self.reader.read(65536)
                if not data:
                    raise ConnectionError("closed by the simulator")
                self.inbox.extend(self.codec.feed(data))

        return await asyncio.wait_for(_read(), timeout)

    async def answer(self, action_id: str) -> Message:
        return await self.until(lambda m: m.get("ActionID") == action_id and "Response" in m)

    async def login(self, secret: str = PBX_SECRET) -> Message:
        await self.send(Action="Login", ActionID="L1", Username=PBX_USER, Secret=secret)
        return await self.answer("L1")

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(ConnectionError):
            await self.writer.wait_closed()


async def test_banner_then_login_with_the_right_secret_is_accepted(pbx_sim: FaultyPbx) -> None:
    client = await RawClient.connect(pbx_sim.port)
    answer = await client.login()
    assert client.codec.banner == "Asterisk Call Manager/11.0.0"
    assert answer["Response"] == "Success"
    assert answer["Message"] == "Authentication accepted"
    await client.until(lambda m: m.get("Event") == "FullyBooted")
    await client.close()


async def test_login_with_a_wrong_secret_is_refused(pbx_sim: FaultyPbx) -> None:
    client = await RawClient.connect(pbx_sim.port)
    answer = await client.login(secret="not-it")
    assert answer == {"Response": "Error", "ActionID": "L1", "Message": "Authentication failed"}
    assert pbx_sim.failed_logins == 1
    await client.send(Action="Ping", ActionID="P1")
    assert (await client.answer("P1"))["Message"] == "Authentication Required"
    await client.close()


async def test_ping_answers_pong_with_the_action_id_unless_told_to_be_silent(
    pbx_sim: FaultyPbx,
) -> None:
    client = await RawClient.connect(pbx_sim.port)
    await client.login()
    await client.send(Action="Ping", ActionID="p-1")
    pong = await client.answer("p-1")
    assert pong["Response"] == "Success" and pong["Ping"] == "Pong"
    pbx_sim.silent_actions = {"ping"}
    await client.send(Action="Ping", ActionID="p-2")
    await client.send(Action="Bogus", ActionID="b-1")  # answered: proves p-2 was read
    assert (await client.answer("b-1"))["Response"] == "Error"
    assert not any(m.get("ActionID") == "p-2" for m in client.inbox)
    await client.close()


async def test_logoff_says_goodbye_and_closes(pbx_sim: FaultyPbx) -> None:
    client = await RawClient.connect(pbx_sim.port)
    await client.login()
    await client.send(Action="Logoff", ActionID="bye")
    assert (await client.answer("bye"))["Response"] == "Goodbye"
    assert await asyncio.wait_for(client.reader.read(), 5) == b""


async def test_core_show_channels_lists_the_channels_of_calls_still_up(
    pbx_sim: FaultyPbx,
) -> None:
    events = load_trace(T01)
    answer_at = next(i for i, m in enumerate(events) if m.get("Event") == "BridgeEnter")
    client = await RawClient.connect(pbx_sim.port)
    await client.login()
    await pbx_sim.send(events[: answer_at + 1])

    await client.send(Action="CoreShowChannels", ActionID="c1")
    done = await client.until(lambda m: m.get("Event") == "CoreShowChannelsComplete")
    head = await client.answer("c1")
    listed = [m for m in client.inbox if m.get("Event") == "CoreShowChannel"]
    assert head["EventList"] == "start"
    assert done["ActionID"] == "c1" and done["ListItems"] == "2"
    assert {m["Channel"] for m in listed} == {"PJSIP/trunk-00000000", "PJSIP/101-00000001"}
    assert {m["Linkedid"] for m in listed} == {"1795727781.0"}
    assert all(m["ActionID"] == "c1" for m in listed)

    await pbx_sim.send(events[answer_at + 1 :])
    await client.send(Action="CoreShowChannels", ActionID="c2")
    done = await client.until(
        lambda m: m.get("Event") == "CoreShowChannelsComplete" and m.get("ActionID") == "c2"
    )
    assert done["ListItems"] == "0"
    await client.close()


async def test_channels_played_while_nobody_listens_still_count(pbx_sim: FaultyPbx) -> None:
    events = load_trace(T01)
    first_hangup = next(i for i, m in enumerate(events) if m.get("Event") == "Hangup")
    await pbx_sim.send(events[:first_hangup])
    assert pbx_sim.messages_sent == 0 and pbx_sim.events_played == first_hangup
    assert len(pbx_sim.channels()) == 2


async def test_one_trace_played_twice_gives_two_distinct_calls(pbx_sim: FaultyPbx) -> None:
    first = pbx_sim.prepare_trace(T01)
    second = pbx_sim.prepare_trace(T01)

    def linkedids(script: Script) -> set[str]:
        return {m["Linkedid"] for m in script.messages if "Linkedid" in m}

    def channels(script: Script) -> set[str]:
        return {m["Channel"] for m in script.messages if m.get("Event") == "Newchannel"}

    assert len(linkedids(first)) == len(linkedids(second)) == 1
    assert linkedids(first).isdisjoint(linkedids(second))
    assert channels(first).isdisjoint(channels(second))
    # moved to now, keeping the recorded spacing
    t0 = float(first.messages[0]["Timestamp"])
    assert abs(t0 - time.time()) < 5
    assert first.times[-1] == pytest.approx(second.times[-1])


async def test_every_originate_is_answered_queued_and_recorded(pbx_sim: FaultyPbx) -> None:
    pbx_sim.click_to_call = None
    client = await RawClient.connect(pbx_sim.port)
    await client.login()
    client.writer.write(
        b"Action: Originate\r\nActionID: o1\r\nChannel: PJSIP/105\r\nContext: from-internal\r\n"
        b"Exten: 79990001122\r\nPriority: 1\r\nAsync: true\r\n"
        b"Variable: A=1\r\nVariable: B=2\r\n\r\n"
    )
    answer = await client.answer("o1")
    assert answer["Response"] == "Success"
    assert answer["Message"] == "Originate successfully queued"
    (seen,) = pbx_sim.originates
    assert seen["Channel"] == "PJSIP/105" and seen["Exten"] == "79990001122"
    assert seen["Variable"].split("\n") == ["A=1", "B=2"]
    await client.close()


async def test_originate_plays_a_click_to_call_for_the_requested_extension_and_number(
    pbx_sim: FaultyPbx,
) -> None:
    client = await RawClient.connect(pbx_sim.port)
    await client.login()
    await client.send(
        Action="Originate",
        ActionID="o7",
        Channel="PJSIP/105",
        Context="from-internal",
        Exten="79990001122",
        Priority="1",
        Async="true",
    )
    done = await client.until(lambda m: m.get("Event") == "OriginateResponse")
    assert done["ActionID"] == "o7" and done["Response"] == "Success"
    await client.until(lambda m: m.get("Event") == "Hangup" and "trunk" in m.get("Channel", ""))
    new = [m for m in client.inbox if m.get("Event") == "Newchannel"]
    assert new[0]["Channel"].startswith("PJSIP/105-") and new[0]["CallerIDNum"] == "105"
    assert any(m.get("Exten") == "79990001122" for m in client.inbox)
    assert not any("79031112233" in v for m in client.inbox for v in m.values())
    await client.close()


async def test_drop_clients_cuts_the_connection(pbx_sim: FaultyPbx) -> None:
    client = await RawClient.connect(pbx_sim.port)
    await client.login()
    assert pbx_sim.clients == 1
    assert await pbx_sim.drop_clients() == 1
    with pytest.raises(ConnectionError):
        await client.until(lambda m: False)
    assert pbx_sim.clients == 0


async def test_injected_bytes_reach_the_client_verbatim(pbx_sim: FaultyPbx) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", pbx_sim.port)
    writer.write(encode({"Action": "Login", "Username": PBX_USER, "Secret": PBX_SECRET}))
    await asyncio.wait_for(reader.readuntil(b"Fully Booted\r\n\r\n"), 5)
    await pbx_sim.inject(b"\x00\xffjunk")
    assert await asyncio.wait_for(reader.readexactly(6), 5) == b"\x00\xffjunk"
    writer.close()


async def test_refused_connections_are_closed_at_once(pbx_sim: FaultyPbx) -> None:
    pbx_sim.refuse_connections = True
    reader, writer = await asyncio.open_connection("127.0.0.1", pbx_sim.port)
    data = b"not read"
    with contextlib.suppress(ConnectionError):
        data = await asyncio.wait_for(reader.read(100), 5)
    assert data in (b"", b"not read")  # EOF or reset: no banner either way
    assert pbx_sim.connections == 1 and pbx_sim.clients == 0
    writer.close()


async def test_playback_keeps_the_recorded_pace_divided_by_speed(pbx_sim: FaultyPbx) -> None:
    script = pbx_sim.prepare_trace(T01)
    span = script.times[-1] - script.times[0]
    assert span > 5  # the recording lasts ~7 s
    t0 = time.perf_counter()
    await pbx_sim.play(script, speed=span / 0.4)  # ~0.4 s
    elapsed = time.perf_counter() - t0
    assert 0.35 <= elapsed < 3


async def test_every_connected_client_gets_the_whole_stream(pbx_sim: FaultyPbx) -> None:
    events = load_trace(T01)
    a, b = await RawClient.connect(pbx_sim.port), await RawClient.connect(pbx_sim.port)
    await a.login()
    await b.login()
    await pbx_sim.send(events)
    for client in (a, b):
        await client.until(lambda m: m.get("Event") == "Cdr")
        got = [m for m in client.inbox if m.get("Event") not in ("FullyBooted", None)]
        assert got == events
    assert pbx_sim.messages_sent == 2 * len(events)
    await a.close()
    await b.close()


def test_load_trace_leaves_out_the_recorders_own_session() -> None:
    raw = parse_trace(T01.read_bytes())
    events = load_trace(T01)
    assert any("Response" in m for m in raw)
    assert all("Event" in m for m in events)
    assert not {"FullyBooted", "SuccessfulAuth"} & {m["Event"] for m in events}
    assert len(events) == sum(
        1 for m in raw if m.get("Event") not in (None, "FullyBooted", "SuccessfulAuth")
    )


async def test_raw_stream_is_sent_verbatim_and_answers_never_land_inside_a_message(
    pbx_sim: FaultyPbx,
) -> None:
    events = load_trace(T01)
    body = b"".join(encode(m) for m in events) * 40  # ~1.5 MB, many write batches
    client = await RawClient.connect(pbx_sim.port)
    await client.login()
    await client.until(lambda m: m.get("Event") == "FullyBooted")

    async def pings() -> None:
        for k in range(20):
            await client.send(Action="Ping", ActionID=f"p{k}")
            await asyncio.sleep(0)

    pinger = asyncio.create_task(pings())
    sent = await pbx_sim.stream_raw(b"Asterisk Call Manager/11.0.0\r\n" + body)
    await pinger
    await client.send(Action="Ping", ActionID="last")
    await client.answer("last")

    assert sent == 40 * len(events) == pbx_sim.messages_sent
    got = [m for m in client.inbox if m.get("Event") not in (None, "FullyBooted")]
    assert got == events * 40
    assert sum(1 for m in client.inbox if m.get("Ping") == "Pong") == 21
    assert all("Event" in m or "Response" in m for m in client.inbox)
    assert client.codec.skipped == 0
    await client.close()
