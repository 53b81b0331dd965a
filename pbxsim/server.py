"""A PBX on a socket: an AMI server that speaks enough of the protocol for the bridge.

The demo, ``telefum simulate-pbx``, the tests and the benchmarks run the bridge against this
instead of Asterisk. It answers Login (checking the secret), Logoff, Ping, Originate,
Getvar and CoreShowChannels like Asterisk does (ActionID echoed), and plays AMI events to
every logged-in client: recorded traces (rebased by ``pbxsim.rebase`` so one recording can
be played many times, keeping its relative timing, optionally sped up) or a synthetic mix
from ``pbxsim.synth``.

It keeps the channels of what it has played, so ``CoreShowChannels`` tells the truth about
the calls still up, even for calls played while no client was connected (that is how the
listener's reconciliation is tested). An ``Originate`` is answered "successfully queued",
recorded in ``originates``, then played as a click-to-call (the recorded trace 14 with the
requested extension and number swapped in) with an ``OriginateResponse`` for its ActionID;
``click_to_call=None`` plays nothing.

``inject(b"...")`` writes raw bytes to every client, ``drop_clients()`` cuts every
connection. A PBX that misbehaves (refuses connections, leaves actions unanswered) is a
subclass overriding :meth:`PbxSimulator.accepts_connection` and
:meth:`PbxSimulator.answers`: the tests' one is ``tests/support/pbx.py``.

Sending is built for speed (the benchmarks push well over 100k events/s through it):
messages are encoded once into a :class:`Script` and written in large batches.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import time
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from importlib.resources.abc import Traversable
from pathlib import Path
from typing import Any

from pbxsim import traces_dir
from pbxsim.rebase import id_span, rebase
from telephony.ami import Message, encode, parse_trace

log = logging.getLogger(__name__)

__all__ = ["BANNER", "PbxSimulator", "Script", "load_trace"]

BANNER = b"Asterisk Call Manager/11.0.0\r\n"

# The recorded click-to-call (AMI Originate Channel=PJSIP/101, Exten=79031112233), one of
# the traces that ship with the package (pbxsim/traces, synth's templates too).
CLICK_TO_CALL_TRACE = traces_dir() / "14-outbound-click-to-call-originate.ami"
_TEMPLATE_EXTENSION = "101"
_TEMPLATE_NUMBER = "79031112233"

# Events that belong to the recording session, not to the calls: not replayed.
_SESSION_EVENTS = frozenset({"FullyBooted", "SuccessfulAuth", "FailedACL", "InvalidPassword"})

_BATCH_BYTES = 256 * 1024  # one write per this much, then wait for the socket to drain
_CHUNK_MESSAGES = 8192  # a generated stream is encoded this many messages at a time
_FIRST_AUTO_ID = 10_000  # auto id offsets start here (clear of the recordings' own ids)


@dataclass(slots=True)
class Script:
    """Messages ready to play: when (seconds from the start), what, and its wire bytes."""

    times: list[float] = field(default_factory=list)
    messages: list[Message] = field(default_factory=list)
    wire: list[bytes] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.messages)

    @classmethod
    def from_timed(cls, timed: Iterable[tuple[float, Message]]) -> Script:
        script = cls()
        for t, msg in timed:
            script.times.append(t)
            script.messages.append(msg)
            script.wire.append(encode(msg))
        return script

    @classmethod
    def from_messages(cls, messages: Iterable[Message]) -> Script:
        """Timed by their ``Timestamp`` headers, relative to the first one (a message
        without one goes with the one before it)."""
        return cls.from_timed(_timed_by_timestamp(messages))


def _timed_by_timestamp(messages: Iterable[Message]) -> Iterator[tuple[float, Message]]:
    first: float | None = None
    last = 0.0
    for msg in messages:
        ts = msg.get("Timestamp")
        if ts:
            try:
                t = float(ts)
            except ValueError:
                t = None
            if t is not None:
                if first is None:
                    first = t
                last = max(last, t - first)
        yield last, msg


def load_trace(
    source: str | Path | bytes,
    *,
    time_offset: float = 0.0,
    id_offset: int = 0,
    number_map: dict[str, str] | None = None,
) -> list[Message]:
    """The events of a recorded AMI session, ready to replay: answers to the recorder's own
    actions and its session events (login, FullyBooted) left out; ids and times rebased."""
    data = source if isinstance(source, bytes) else Path(source).read_bytes()
    events = [m for m in parse_trace(data) if "Event" in m and m["Event"] not in _SESSION_EVENTS]
    if time_offset == 0.0 and id_offset == 0 and not number_map:
        return events
    return rebase(events, time_offset=time_offset, id_offset=id_offset, number_map=number_map)


def _first_timestamp(messages: Sequence[Message]) -> float | None:
    for msg in messages:
        ts = msg.get("Timestamp")
        if ts:
            with contextlib.suppress(ValueError):
                return float(ts)
    return None


class _Pace:
    """Keeps playback on the script's clock: message at script time ``t`` goes out at
    ``(t - first) / speed`` seconds after the first one (at once when speed is 0)."""

    __slots__ = ("_base", "_loop", "_speed", "_t0")

    def __init__(self, loop: asyncio.AbstractEventLoop, speed: float) -> None:
        self._loop = loop
        self._speed = speed
        self._t0: float | None = None
        self._base = 0.0

    async def wait_for(self, t: float) -> float:
        """Sleep until script time ``t`` is due; returns the script time now (the horizon
        up to which messages may go out in this batch)."""
        if self._speed <= 0:
            return float("inf")
        loop = self._loop
        if self._t0 is None:
            self._t0, self._base = loop.time(), t
        delay = (t - self._base) / self._speed - (loop.time() - self._t0)
        if delay > 0.0005:
            await asyncio.sleep(delay)
        return (loop.time() - self._t0) * self._speed + self._base


# -- the channels the simulated PBX has up ---------------------------------------------

_CHANNEL_FIELDS = (
    "Channel",
    "ChannelState",
    "ChannelStateDesc",
    "CallerIDNum",
    "CallerIDName",
    "ConnectedLineNum",
    "ConnectedLineName",
    "Language",
    "AccountCode",
    "Context",
    "Exten",
    "Priority",
    "Uniqueid",
    "Linkedid",
)
_CHANNEL_UPDATES = frozenset(
    {
        "Newstate",
        "NewCallerid",
        "NewConnectedLine",
        "Newexten",
        "BridgeEnter",
        "BridgeLeave",
        "Rename",
        "DialBegin",
        "DialState",
        "DialEnd",
        "Hold",
        "Unhold",
        "NewAccountCode",
    }
)


class _ChannelBook:
    """Channels of what has been played, keyed by Uniqueid: what CoreShowChannels lists."""

    __slots__ = ("channels", "variables")

    def __init__(self) -> None:
        self.channels: dict[str, dict[str, str]] = {}
        # per Uniqueid: channel variables set (VarSet), for Getvar
        self.variables: dict[str, dict[str, str]] = {}

    def apply(self, msg: Message, now: float) -> None:
        event = msg.get("Event")
        if event == "Newchannel":
            uid = msg.get("Uniqueid")
            if uid:
                chan = {k: msg.get(k, "") for k in _CHANNEL_FIELDS}
                chan.update(
                    Application="",
                    ApplicationData="",
                    BridgeId="",
                    _created=msg.get("Timestamp") or f"{now:.6f}",
                )
                self.channels[uid] = chan
                # what a SIP channel's CALLERID(dnid) holds: the number dialled to reach it
                self.variables[uid] = {"CALLERID(dnid)": msg.get("Exten", "")}
        elif event == "Hangup":
            self.channels.pop(msg.get("Uniqueid", ""), None)
            self.variables.pop(msg.get("Uniqueid", ""), None)
        elif event == "VarSet":
            variables = self.variables.get(msg.get("Uniqueid", ""))
            name = msg.get("Variable", "").lstrip("_")  # __FROM_DID is inherited FROM_DID
            if variables is not None and name:
                variables[name] = msg.get("Value", "")
        elif event in _CHANNEL_UPDATES:
            self._update(event, msg)

    def _update(self, event: str, msg: Message) -> None:
        # Dial* events describe the caller's channel without a prefix, the callee's with
        # Dest*; both the plain fields and the Dest ones are kept up to date.
        for prefix in ("", "Dest"):
            chan = self.channels.get(msg.get(prefix + "Uniqueid", ""))
            if chan is None:
                continue
            for key in _CHANNEL_FIELDS:
                value = msg.get(prefix + key)
                if value is not None:
                    chan[key] = value
            if prefix:
                continue
            if event == "Newexten":
                chan["Application"] = msg.get("Application", "")
                chan["ApplicationData"] = msg.get("AppData", "")
            elif event == "BridgeEnter":
                chan["BridgeId"] = msg.get("BridgeUniqueid", "")
            elif event == "BridgeLeave":
                chan["BridgeId"] = ""
            elif event == "Rename" and msg.get("Newname"):
                chan["Channel"] = msg["Newname"]

    def getvar(self, channel: str, variable: str) -> str | None:
        """A channel variable's value ("" when unset); None: no such channel."""
        for uid, chan in self.channels.items():
            if chan["Channel"] == channel:
                return self.variables.get(uid, {}).get(variable, "")
        return None

    def snapshot(self, action_id: str | None, now: float) -> list[Message]:
        out: list[Message] = []
        for chan in self.channels.values():
            msg: Message = {"Event": "CoreShowChannel"}
            if action_id is not None:
                msg["ActionID"] = action_id
            for key in _CHANNEL_FIELDS:
                msg[key] = chan[key]
            msg["BridgeId"] = chan["BridgeId"]
            msg["Application"] = chan["Application"]
            msg["ApplicationData"] = chan["ApplicationData"]
            try:
                age = max(0, int(now - float(chan["_created"])))
            except ValueError:
                age = 0
            msg["Duration"] = f"{age // 3600:02d}:{age // 60 % 60:02d}:{age % 60:02d}"
            out.append(msg)
        return out


# -- connections ------------------------------------------------------------------------


class _Client:
    __slots__ = ("authed", "events", "peer", "writer")

    def __init__(self, writer: asyncio.StreamWriter) -> None:
        self.writer = writer
        self.authed = False
        self.events = True
        self.peer = writer.get_extra_info("peername")


def _parse_actions(block: bytes) -> list[dict[str, str]]:
    """The actions in what was read up to a CRLF CRLF, split the way Asterisk's manager
    splits its input: a line ends at CRLF or at a bare LF, an empty line ends an action (so
    a value smuggling LFs in is several headers, or several actions, here as on a real
    PBX). Repeated headers (``Variable``) are joined with newlines."""
    actions: list[dict[str, str]] = []
    action: dict[str, str] = {}
    for line in block.decode("utf-8", "replace").split("\n"):
        line = line.removesuffix("\r")
        if not line:
            if action:
                actions.append(action)
            action = {}
            continue
        key, sep, value = line.partition(":")
        if not sep:
            continue
        key, value = key.strip(), value.strip()
        if key in action:
            action[key] += "\n" + value
        else:
            action[key] = value
    if action:
        actions.append(action)
    return actions


def _lower_keys(action: dict[str, str]) -> dict[str, str]:
    return {k.lower(): v for k, v in action.items()}


class PbxSimulator:
    """An AMI server on ``host:port`` (port 0: the OS picks; read ``.port`` after start)."""

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        username: str = "telefum",
        secret: str = "change-me",
        speed: float = 1.0,
        click_to_call: Traversable | None = CLICK_TO_CALL_TRACE,
    ) -> None:
        self.host = host
        self.port = port
        self.username = username
        self.secret = secret  # may be changed while running (tests: a rejected login)
        self.speed = speed  # default pace of play(): 1 = real time, 0 = as fast as possible
        self.click_to_call = click_to_call  # None: an Originate plays no call

        # what happened (for tests and the CLI's summary)
        self.originates: list[dict[str, str]] = []
        self.actions: Counter[str] = Counter()
        self.logins = 0
        self.failed_logins = 0
        self.connections = 0
        self.messages_sent = 0  # messages written to clients (one per client reached)
        self.events_played = 0  # messages played, whether or not anyone was connected

        self._book = _ChannelBook()
        self._clients: set[_Client] = set()
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._handlers: set[asyncio.Task[None]] = set()
        self._next_id = _FIRST_AUTO_ID
        self.last_synth: dict[str, Any] = {}  # base_time, first_id of the last play_synth
        self._template: list[Message] | None = None
        self._login_waiters: list[tuple[int, asyncio.Future[None]]] = []

    def __repr__(self) -> str:
        return f"<PbxSimulator {self.host}:{self.port} clients={len(self._clients)}>"

    # -- lifecycle -----------------------------------------------------------------------

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, self.host, self.port, limit=1 << 20)
        sock = self._server.sockets[0]
        self.port = int(sock.getsockname()[1])
        log.info("PBX simulator listening on %s:%d", self.host, self.port)

    async def stop(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        if self._server is not None:
            self._server.close()
        await self.drop_clients()
        for task in list(self._handlers):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await asyncio.wait_for(task, 1.0)
        if self._server is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 1.0)
            self._server = None

    async def __aenter__(self) -> PbxSimulator:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    @property
    def clients(self) -> int:
        """Logged-in clients (the ones that get events)."""
        return sum(1 for c in self._clients if c.authed)

    async def wait_for_logins(self, n: int, timeout: float | None = 10.0) -> None:
        """Wait until ``n`` successful logins in all have happened (None: no limit)."""
        if self.logins >= n:
            return
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._login_waiters.append((n, fut))
        await asyncio.wait_for(fut, timeout)

    # -- what a misbehaving PBX overrides ------------------------------------------------

    def accepts_connection(self) -> bool:
        """Whether a new connection is served; False: it is cut at once (AMI down)."""
        return True

    def answers(self, action: str) -> bool:
        """Whether an action (its lower-case name) gets an answer; False: it is left
        unanswered (a hung PBX), an Originate still recorded in ``originates``."""
        return True

    def played(self, messages: Sequence[Message]) -> None:
        """Told of every batch of messages played, whether or not anyone was connected: a
        subclass may do what the PBX does beside AMI (the tests' one writes ``Master.csv``
        from the ``Cdr`` events, as ``cdr_csv`` would)."""

    # -- faults any client may meet ----------------------------------------------------

    async def drop_clients(self) -> int:
        """Cut every connection now (no Logoff, no FIN courtesy: a dead link)."""
        clients = list(self._clients)
        self._clients.clear()
        for client in clients:
            client.writer.transport.abort()
        if clients:
            await asyncio.sleep(0)  # let the handlers see it
        return len(clients)

    async def inject(self, data: bytes) -> None:
        """Write raw bytes (garbage, half a message...) to every logged-in client."""
        targets = [c for c in self._clients if c.authed]
        for client in targets:
            client.writer.write(data)
        await self._drain(targets)

    def channels(self) -> list[Message]:
        """The channels up now, as CoreShowChannel events would list them."""
        return self._book.snapshot(None, time.time())

    # -- playing -------------------------------------------------------------------------

    def next_id_offset(self, messages: Sequence[Message]) -> int:
        """An id offset that keeps these messages' ids apart from everything played."""
        offset = self._next_id
        self._next_id += id_span(messages) + 1
        return offset

    def prepare_trace(
        self,
        source: str | Path | bytes,
        *,
        time_offset: float | None = None,
        id_offset: int | None = None,
        number_map: dict[str, str] | None = None,
    ) -> Script:
        """A recording as a script, rebased: ``time_offset=None`` moves it to now,
        ``id_offset=None`` gives it ids no other play has used; ``0``/``0`` keeps it as
        recorded."""
        events = load_trace(source)
        if time_offset is None:
            first = _first_timestamp(events)
            time_offset = time.time() - first if first is not None else 0.0
        if id_offset is None:
            id_offset = self.next_id_offset(events)
        if time_offset or id_offset or number_map:
            events = rebase(
                events, time_offset=time_offset, id_offset=id_offset, number_map=number_map
            )
        return Script.from_messages(events)

    async def play_trace(
        self,
        source: str | Path | bytes,
        *,
        speed: float | None = None,
        time_offset: float | None = None,
        id_offset: int | None = None,
        number_map: dict[str, str] | None = None,
    ) -> int:
        """Play a recording (see :meth:`prepare_trace`); returns the messages played."""
        script = self.prepare_trace(
            source, time_offset=time_offset, id_offset=id_offset, number_map=number_map
        )
        return await self.play(script, speed=speed)

    async def send(self, messages: Script | Iterable[Message]) -> int:
        """Play messages at once, as fast as the clients take them."""
        if isinstance(messages, Script):
            return await self.play(messages, speed=0)
        return await self.play(((0.0, m) for m in messages), speed=0)

    async def play(
        self, script: Script | Iterable[tuple[float, Message]], *, speed: float | None = None
    ) -> int:
        """Play a script, or a stream of ``(seconds, message)``, keeping its timing divided
        by ``speed`` (0: no waiting). A stream is encoded a chunk at a time, so a million
        generated events never sit in memory at once. Returns the messages played."""
        pace = _Pace(asyncio.get_running_loop(), self.speed if speed is None else speed)
        if isinstance(script, Script):
            return await self._play_script(script, pace)
        played = 0
        timed = iter(script)
        while True:
            chunk = Script.from_timed(itertools.islice(timed, _CHUNK_MESSAGES))
            if not chunk:
                return played
            played += await self._play_script(chunk, pace)

    async def _play_script(self, script: Script, pace: _Pace) -> int:
        times, wire, messages = script.times, script.wire, script.messages
        n = len(messages)
        i = 0
        while i < n:
            horizon = await pace.wait_for(times[i])
            j = i
            size = 0
            while j < n and times[j] <= horizon and size < _BATCH_BYTES:
                size += len(wire[j])
                j += 1
            j = max(j, i + 1)
            await self._emit(messages, wire, i, j)
            i = j
        return n

    async def play_synth(
        self, n_calls: int, rate_per_s: float, seed: int, *, speed: float | None = None
    ) -> int:
        """Generate and play a realistic mix of calls (``pbxsim.synth``), dated from now
        and with ids no other play has used. ``synth.plan`` with the same arguments and
        ``**sim.last_synth`` (base_time, first_id) says what each call must come out as."""
        from pbxsim import synth  # imported here: only --calls needs the templates

        base_time, first_id = time.time(), self._next_id
        calls = synth.plan(n_calls, rate_per_s, seed, base_time=base_time, first_id=first_id)
        spans = {t.name: t.id_high for t in synth.load_templates()}
        self._next_id = 1 + max((c.id_offset + spans[c.template] for c in calls), default=first_id)
        self.last_synth = {"base_time": base_time, "first_id": first_id}
        return await self.play(synth.stream(calls), speed=speed)

    async def stream_raw(self, source: str | Path | bytes) -> int:
        """Send pre-encoded AMI bytes as they are (a file or a buffer): the fastest way to
        push a big stream (benchmarks write a synthetic stream to a file once). Nothing is
        rebased or parsed, so CoreShowChannels does not see these calls. A leading banner
        line is skipped; writes are cut at message ends so answers to actions never land
        inside a message. Returns the number of messages sent."""
        if isinstance(source, bytes):
            data = source
        else:
            data = await asyncio.to_thread(Path(source).read_bytes)
        start = data.index(b"\r\n") + 2 if data.startswith(b"Asterisk Call Manager") else 0
        view = memoryview(data)
        sent = 0
        while start < len(data):
            cut = data.find(b"\r\n\r\n", min(start + _BATCH_BYTES, len(data)) - 3)
            end = len(data) if cut < 0 else cut + 4
            chunk = view[start:end]
            count = data.count(b"\r\n\r\n", start, end)
            start = end
            self.events_played += count
            targets = [c for c in self._clients if c.authed and c.events]
            for client in targets:
                client.writer.write(chunk)
            self.messages_sent += count * len(targets)
            sent += count
            await self._drain(targets)
            await asyncio.sleep(0)
        return sent

    async def _emit(self, messages: list[Message], wire: list[bytes], i: int, j: int) -> None:
        now = time.time()
        apply = self._book.apply
        for k in range(i, j):
            apply(messages[k], now)
        self.played(messages[i:j])
        count = j - i
        self.events_played += count
        targets = [c for c in self._clients if c.authed and c.events]
        if targets:
            chunk = b"".join(wire[i:j])
            for client in targets:
                client.writer.write(chunk)
            self.messages_sent += count * len(targets)
            await self._drain(targets)
        # drain() does not yield while the socket keeps up: let actions (Ping, Originate,
        # CoreShowChannels) in between batches, as Asterisk would answer them mid-stream.
        await asyncio.sleep(0)

    async def _drain(self, targets: Iterable[_Client]) -> None:
        for client in targets:
            try:
                await client.writer.drain()
            except (ConnectionError, RuntimeError):
                self._clients.discard(client)

    # -- the protocol --------------------------------------------------------------------

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        if not self.accepts_connection():
            writer.transport.abort()
            return
        task = asyncio.current_task()
        if task is not None:
            self._handlers.add(task)
        client = _Client(writer)
        self._clients.add(client)
        writer.write(BANNER)
        try:
            while True:
                block = await reader.readuntil(b"\r\n\r\n")
                for action in _parse_actions(block):
                    self._handle(client, action)
                if writer.is_closing():
                    break
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
            pass
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("PBX simulator: client handler failed")
        finally:
            self._clients.discard(client)
            writer.transport.abort()
            if task is not None:
                self._handlers.discard(task)

    def _handle(self, client: _Client, action: dict[str, str]) -> None:
        fields = _lower_keys(action)
        name = fields.get("action", "").lower()
        action_id = fields.get("actionid")
        self.actions[name] += 1
        if name == "login":
            self._login(client, fields, action_id)
        elif name == "logoff":
            self._reply(client, action_id, Response="Goodbye", Message="Thanks for all the fish.")
            client.writer.close()
        elif not client.authed:
            self._reply(client, action_id, Response="Error", Message="Authentication Required")
        elif not self.answers(name):
            if name == "originate":
                self.originates.append(dict(action))
        elif name == "ping":
            self._reply(
                client, action_id, Response="Success", Ping="Pong", Timestamp=f"{time.time():.6f}"
            )
        elif name == "coreshowchannels":
            self._core_show_channels(client, action_id)
        elif name == "originate":
            self._originate(client, action, fields, action_id)
        elif name == "getvar":
            self._getvar(client, fields, action_id)
        else:
            self._reply(
                client,
                action_id,
                Response="Error",
                Message=f"Invalid/unknown command: {action.get('Action', '')}. "
                "Use Action: ListCommands to show available commands.",
            )

    def _reply(self, client: _Client, action_id: str | None, **headers: str) -> None:
        msg: Message = {"Response": headers.pop("Response")}
        if action_id is not None:
            msg["ActionID"] = action_id
        msg.update(headers)
        client.writer.write(encode(msg))

    def _login(self, client: _Client, fields: dict[str, str], action_id: str | None) -> None:
        if fields.get("username") != self.username or fields.get("secret") != self.secret:
            self.failed_logins += 1
            self._reply(client, action_id, Response="Error", Message="Authentication failed")
            return
        client.authed = True
        client.events = fields.get("events", "on").lower() != "off"
        self.logins += 1
        self._reply(client, action_id, Response="Success", Message="Authentication accepted")
        if client.events:
            client.writer.write(
                encode(
                    {
                        "Event": "FullyBooted",
                        "Privilege": "system,all",
                        "Uptime": "1",
                        "LastReload": "1",
                        "Status": "Fully Booted",
                    }
                )
            )
        waiting = []
        for n, fut in self._login_waiters:
            if self.logins >= n:
                if not fut.done():
                    fut.set_result(None)
            else:
                waiting.append((n, fut))
        self._login_waiters = waiting

    def _getvar(self, client: _Client, fields: dict[str, str], action_id: str | None) -> None:
        """As Asterisk answers ``Getvar`` on a channel (privilege call/reporting)."""
        variable = fields.get("variable", "")
        value = self._book.getvar(fields.get("channel", ""), variable)
        if not variable:
            self._reply(client, action_id, Response="Error", Message="No variable specified")
        elif value is None:
            self._reply(client, action_id, Response="Error", Message="No such channel")
        else:
            self._reply(client, action_id, Response="Success", Variable=variable, Value=value)

    def _core_show_channels(self, client: _Client, action_id: str | None) -> None:
        """Response, one CoreShowChannel per channel, Complete: written in one go, so the
        snapshot sits at one point of the event stream, as Asterisk's does."""
        items = self._book.snapshot(action_id, time.time())
        head: Message = {"Response": "Success"}
        tail: Message = {"Event": "CoreShowChannelsComplete"}
        if action_id is not None:
            head["ActionID"] = action_id
            tail["ActionID"] = action_id
        head.update(EventList="start", Message="Channels will follow")
        tail.update(EventList="Complete", ListItems=str(len(items)))
        client.writer.write(b"".join(encode(m) for m in (head, *items, tail)))

    def _originate(
        self,
        client: _Client,
        action: dict[str, str],
        fields: dict[str, str],
        action_id: str | None,
    ) -> None:
        self.originates.append(dict(action))
        if not fields.get("channel"):
            self._reply(client, action_id, Response="Error", Message="Channel not specified")
            return
        self._reply(client, action_id, Response="Success", Message="Originate successfully queued")
        if self.click_to_call is not None:
            task = asyncio.create_task(self._play_click_to_call(fields, action_id))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _play_click_to_call(self, fields: dict[str, str], action_id: str | None) -> None:
        """The recorded click-to-call with the agent's extension and the number swapped in;
        its OriginateResponse carries the Originate's ActionID."""
        template = self._click_to_call_template()
        if not template:
            return
        extension = fields.get("channel", "").rpartition("/")[2] or _TEMPLATE_EXTENSION
        number = fields.get("exten") or _TEMPLATE_NUMBER
        first = _first_timestamp(template) or 0.0
        events = rebase(
            template,
            time_offset=time.time() - first,
            id_offset=self.next_id_offset(template),
            number_map={_TEMPLATE_EXTENSION: extension, _TEMPLATE_NUMBER: number},
        )
        for msg in events:
            if msg.get("Event") == "OriginateResponse":
                if action_id is None:
                    msg.pop("ActionID", None)
                else:
                    msg["ActionID"] = action_id
        await self.play(Script.from_messages(events))

    def _click_to_call_template(self) -> list[Message]:
        if self._template is None:
            trace = self.click_to_call
            if trace is None or not trace.is_file():
                log.warning(
                    "PBX simulator: no click-to-call trace at %s; Originate plays nothing", trace
                )
                self._template = []
            else:
                self._template = load_trace(trace.read_bytes())
        return self._template
