"""The AMI link: login, keep-alive watchdog, reconnect with backoff, reconciliation, actions.

Built on panoramisk 1.4 (tests/test_library_contracts.py pins what is relied on):

- used as it is: ``panoramisk.actions.Action`` (ActionID generation, wire encoding, the
  rules for when a multi-message answer such as ``EventList: start`` ... ``*Complete`` is
  done), ``panoramisk.message.Message`` (the answer handed back to callers, with
  ``.success``), and ``panoramisk.ami_protocol.AMIProtocol``: the transport, the table of
  actions waiting for an answer, ``send``, and ``handle_message``, which matches each
  answer to its action;
- replaced in ``_AmiProtocol``: ``data_received`` (panoramisk decodes each network read on
  its own, ``decode(encoding, 'ignore')``, which silently drops a UTF-8 character split
  across two reads: a Cyrillic caller name loses letters; we split whole messages with
  ``telephony.ami.AmiCodec`` first, decode only whole messages, and only the events the
  tracker reads) and ``connection_lost`` (panoramisk's hands unanswered actions to its
  ``Manager`` for re-sending after the next login, so an ``Originate`` could ring twice;
  here an action left unanswered by a disconnect fails with :class:`AmiActionLost`);
- not used: ``Manager``. Its ping never looks at the reply (a dead peer looks connected:
  we add a watchdog), its ``dispatch`` runs callbacks inside ``data_received`` so one
  exception drops the link (ours are guarded), ``register_event`` appends a handler on every
  call so registering on reconnect doubles events (we have no registry: one tracker and one
  ``on_update``, wired once in the constructor), its reconnect waits a fixed whole number of
  seconds with no connect timeout, and a rejected login retries forever at that interval
  without a word (we log it, expose ``login_error`` and back off).

Reconnecting (``telephony.backoff``): a refused or dropped link is retried every
``reconnect_min`` to twice that (0.5-1 s) for its first ``reconnect_fast_for`` seconds
(10 s), so a PBX that restarts is back within a second of listening again; after that the
delays double, from 2-4 times ``reconnect_min`` (1-2 s) up to ``reconnect_max`` (``[ami]
reconnect_max_s``), each drawn at random within a third of its centre so that several
bridges do not reconnect in step. A rejected login skips the fast phase: a wrong secret is
not fixed in seconds, and a PBX's fail2ban counts failed logins.

Every (re)connect sends ``CoreShowChannels`` and hands the snapshot to
``tracker.reconcile(snapshot, now)`` the moment its ``CoreShowChannelsComplete`` is read,
inside the same read: events before it in the stream reach the tracker before the snapshot,
events after it come after, as they happened on the PBX (Asterisk writes the whole list in
one go, between two events).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import inspect
import logging
import re
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from panoramisk.actions import Action
from panoramisk.ami_protocol import AMIProtocol
from panoramisk.message import Message as PanoramiskMessage

from telephony.ami import AmiCodec, Message
from telephony.backoff import Backoff
from telephony.pbxclock import SKEW_WARN_S
from telephony.records import CallStarted, Update, log_tags
from telephony.supervise import Supervisor

__all__ = [
    "AmiActionLost",
    "AmiActionTimeout",
    "AmiError",
    "AmiListener",
    "AmiLoginRejected",
    "AmiNotConnected",
    "Session",
    "Tracker",
]

log = logging.getLogger(__name__)


class Tracker(Protocol):
    """What the listener needs of the call tracker (``telephony.tracker.CallTracker``)."""

    def handle(self, msg: Message, arrived: float) -> Iterable[Update]: ...

    def expire(self, now: float) -> Iterable[Update]: ...

    def reconcile(
        self, snapshot: list[Message], now: float, since: float | None = None
    ) -> Iterable[Update]: ...

    @property
    def clock_offset(self) -> float | None:
        """Seconds this host's clock is ahead of the PBX's (None: no Timestamps)."""


@dataclass(frozen=True, slots=True)
class Session:
    """A session established (logged in, reconciled): what ``on_session`` is told.

    ``gap``: (when the link was last known up, when this session began), wall clock, for
    every session after this listener's first: what the event stream missed, and what a
    backfill from the PBX's CDR reads (``telephony.backfill``)."""

    number: int  # 1 for the first session of this listener
    connected_at: float
    gap: tuple[float, float] | None


OnUpdate = Callable[[Update], Awaitable[Any] | None]
OnSession = Callable[[Session], None]


class AmiError(Exception):
    """Something went wrong on the AMI link."""


class AmiNotConnected(AmiError):
    """No live, logged-in link: the action was not sent."""


class AmiActionLost(AmiError):
    """The link dropped before the PBX answered. The action is never re-sent (an
    ``Originate`` must not ring twice); the caller decides whether to try again."""


class AmiActionTimeout(AmiError):
    """The PBX did not answer the action in time."""


class AmiLoginRejected(AmiError):
    """The PBX refused our username/secret."""


class _LinkDead(AmiError):
    """The ping watchdog gave up on a silent peer."""


def _channels_of(action: _Action) -> list[Message]:
    return [m for m in action.raw if m.get("Event") == "CoreShowChannel"]


def _did_variables(tracker: Tracker) -> tuple[list[str], str]:
    """Where a live inbound channel keeps its DID: the tracker's ``[calls] did_variables``
    (as stored: ``__FROM_DID`` is set, ``FROM_DID`` read), then ``CALLERID(dnid)``; and the
    variable name under which the tracker takes a recovered DID."""
    configured = list(getattr(tracker, "did_variables", None) or ("FROM_DID",))
    asked = list(dict.fromkeys(v.lstrip("_") for v in configured))
    return [*asked, "CALLERID(dnid)"], configured[0]


def _adopted_without_did(updates: Iterable[Update], snapshot: list[Message]) -> list[Message]:
    """The first channel of each inbound call the tracker just adopted without a DID."""
    by_uid = {m.get("Uniqueid"): m for m in snapshot}
    out = []
    for u in updates:
        if isinstance(u, CallStarted) and u.direction == "in" and u.did is None:
            chan = by_uid.get(u.call_id)  # a call's id is its first channel's Uniqueid
            if chan is not None and chan.get("Channel"):
                out.append(chan)
    return out


class _Reply(PanoramiskMessage):
    """panoramisk's Message for one message of an answer, keeping the plain dict it was
    made from (the tracker takes plain dicts, not panoramisk's case-insensitive ones)."""

    def __init__(self, plain: Message) -> None:
        super().__init__(plain)
        self.plain = plain


class _Action(Action):
    """panoramisk's Action, told of each message of its answer by panoramisk's
    ``handle_message``: it keeps them as plain dicts (``raw``), calls ``on_done`` the moment
    the answer is complete (in stream order, before the next message of the same read is
    handled), and turns a malformed answer into a failed action instead of an exception
    that would skip the rest of the read."""

    def __init__(
        self, *args: Any, on_done: Callable[[_Action], None] | None = None, **kwargs: Any
    ) -> None:
        super().__init__(*args, **kwargs)
        self.raw: list[Message] = []
        self.on_done = on_done

    def add_message(self, message: PanoramiskMessage) -> bool | None:
        """True when the answer is complete (panoramisk then forgets the action)."""
        if isinstance(message, _Reply):
            self.raw.append(message.plain)
        try:
            finished: bool | None = super().add_message(message)
        except Exception as exc:
            log.warning("AMI: malformed answer to %s: %r", self.get("Action"), exc)
            if not self.future.done():
                self.future.set_exception(AmiError(f"malformed answer: {exc!r}"))
            finished = True
        if finished and self.on_done is not None:
            try:
                self.on_done(self)
            except Exception:
                log.exception("AMI: handling the answer to %s failed", self.get("Action"))
        return finished

    def __repr__(self) -> str:  # panoramisk logs a failed send with %r: never the secret
        shown = {k: ("***" if k.lower() == "secret" else v) for k, v in self.items()}
        return f"<Action {shown}>"


# Asterisk ends a header line at CRLF and at a bare LF, and an action at an empty line:
# a value carrying either could add headers or a whole action. No other control character
# belongs in a header either.
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def check_action(fields: Mapping[str, Any]) -> None:
    """Refuse an action any of whose header names or values holds a control character
    (ValueError naming the headers). Applied to every action the listener sends."""
    bad = [str(k) for k, v in fields.items() if _has_control(k) or _has_control(v)]
    if bad:
        raise ValueError(
            "AMI header values may not contain CR/LF or other control characters: "
            + ", ".join(repr(b) for b in bad)
        )


def _has_control(value: object) -> bool:
    values = value if isinstance(value, list | tuple) else (value,)  # repeated headers
    return any(_CONTROL.search(str(v)) for v in values)


class _AmiProtocol(AMIProtocol):
    """One TCP connection on panoramisk's protocol: its transport, its table of actions
    waiting for an answer (``responses``), ``send`` and ``handle_message`` are used as they
    are. Two methods are replaced (tests/test_library_contracts.py pins why):

    - ``data_received``: panoramisk decodes each network read on its own, which drops a
      UTF-8 character split across two reads, and builds a case-insensitive Message of
      every event; here whole messages are split first (``telephony.ami.AmiCodec``, which
      decodes only the events the tracker reads) and events go straight to the listener;
      answers go to panoramisk's ``handle_message``.
    - ``connection_lost``: panoramisk's hands unanswered actions to its ``Manager`` to be
      re-sent after the next login (an ``Originate`` could ring twice); here they fail
      with :class:`AmiActionLost`.

    Created per connection, holding a reference to its listener; it registers nothing
    anywhere, so a reconnect cannot double a handler."""

    def __init__(self, listener: AmiListener) -> None:
        self._listener = listener
        # Decode only the events the tracker reads (CallTracker.events, .variables): most
        # of a busy stream (VarSet, Newexten...) it would ignore after a full decode.
        tracker = listener.tracker
        self.codec = AmiCodec(getattr(tracker, "events", None), getattr(tracker, "variables", None))
        self.lost: asyncio.Future[BaseException | None] = asyncio.get_running_loop().create_future()
        self.dead: str | None = None  # set when the watchdog gave up on the peer

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)  # transport, closed, responses table
        self.log = log
        self.encoding = "utf-8"  # panoramisk's send encodes actions with it

    def data_received(self, data: bytes) -> None:
        arrived = time.time()
        listener = self._listener
        listener.bytes_received += len(data)
        listener.last_data_at = arrived
        on_event = listener._on_event
        codec = self.codec
        passed = codec.passed_over
        try:
            for msg in codec.feed(data):
                if "Event" in msg and "ActionID" not in msg:
                    on_event(msg, arrived)  # the hot path: guarded inside
                elif msg.get("ActionID") in self.responses:
                    self.handle_message(_Reply(msg))  # part of an answer: panoramisk's
                elif "Event" in msg:
                    on_event(msg, arrived)
                elif "Response" in msg:
                    log.debug("AMI: answer to no pending action (ActionID %r)", msg.get("ActionID"))
                else:
                    listener._on_malformed(msg, arrived)
        except Exception:  # last line of defence: never let asyncio drop the link
            log.exception("AMI: unexpected error while reading; input skipped")
        if codec.passed_over != passed:  # events the tracker does not read still count
            listener.events_received += codec.passed_over - passed
            listener.last_event_at = arrived

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        pending = {id(a): a for a in self.responses.values()}
        self.responses.clear()
        for action in pending.values():
            fut = action.future
            if not fut.done():
                fut.set_exception(
                    AmiActionLost(f"link lost before the PBX answered {action.get('Action')!s}")
                )
                fut.exception()  # mark retrieved: a Ping nobody awaits must not warn
        if not self.lost.done():
            self.lost.set_result(exc)


class AmiListener:
    """Keeps one AMI link alive and feeds every event to the tracker.

    State for health and metrics (read them, don't write): ``connected``, ``last_event_at``,
    ``events_received``, ``bytes_received``, ``reconnects``, ``login_error``, ``malformed``,
    ``handler_errors``, ``last_error``, ``sessions``, ``banner``, ``last_data_at``.

    ``on_session`` (optional) is told of every session established (:class:`Session`), after
    the tracker has reconciled it: a backfill reads what the gap before it hid.

    ``on_update`` gets every tracker update; it should be quick (e.g. put on a queue). If it
    returns an awaitable, that runs as a task. Its exceptions are logged, never fatal.
    """

    def __init__(
        self,
        host: str,
        port: int,
        username: str,
        secret: str,
        tracker: Tracker,
        on_update: OnUpdate,
        *,
        ping_interval: float = 10.0,
        ping_timeout: float = 5.0,
        reconnect_max: float = 60.0,
        pbx: str = "default",
        reconnect_min: float = 0.5,
        reconnect_fast_for: float = 10.0,
        connect_timeout: float = 10.0,
        action_timeout: float = 10.0,
        expire_interval: float = 1.0,
        on_session: OnSession | None = None,
        supervisor: Supervisor | None = None,
    ) -> None:
        self.host = host
        self.supervisor = supervisor or Supervisor()  # the service's, so /health sees ours
        self.port = port
        self.username = username
        self._secret = secret
        self.tracker = tracker
        self._on_update = on_update
        self.on_session = on_session
        self.ping_interval = ping_interval
        self.ping_timeout = ping_timeout
        self.reconnect_max = reconnect_max
        self.reconnect_min = min(reconnect_min, reconnect_max)
        # uniform within [2/3, 4/3] of each centre: fast [min, 2 min], then [2 min, 4 min],
        # [4 min, 8 min]... capped at max; a rejected login goes straight to the latter
        slow_first = min(3 * self.reconnect_min, reconnect_max)
        self._reconnect = Backoff(
            slow_first,
            reconnect_max,
            jitter=1 / 3,
            fast_s=1.5 * self.reconnect_min,
            fast_for_s=reconnect_fast_for,
        )
        self._relogin = Backoff(slow_first, reconnect_max, jitter=1 / 3)
        self.connect_timeout = connect_timeout
        self.action_timeout = action_timeout
        self.expire_interval = expire_interval
        self.pbx = pbx
        self.log = logging.LoggerAdapter(log, {"pbx": pbx})

        # state for /health and /metrics
        self.connected = False
        self.last_event_at: float | None = None
        self.events_received = 0
        self.bytes_received = 0
        self.reconnects = 0  # successful logins after the first one
        self.sessions = 0  # successful logins (reconciled sessions) in all
        self.login_error: str | None = None
        self.handler_errors = 0  # exceptions in the tracker or in on_update
        self.last_error: str | None = None  # why the link was last lost / not made
        self.banner: str | None = None
        self.last_data_at: float | None = None  # wall clock of the last bytes read
        self._malformed = 0
        self._lost_since: float | None = None  # the link's last sign of life before a loss
        self.clock_warned = False  # the PBX's clock was found off ours (logged once)

        self._proto: _AmiProtocol | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._callbacks: set[asyncio.Future[Any]] = set()
        self._session_change: asyncio.Condition | None = None
        self._stopping = False

    def __repr__(self) -> str:  # never shows the secret
        return f"<AmiListener {self.pbx} {self.username}@{self.host}:{self.port}>"

    @property
    def malformed(self) -> int:
        """Malformed lines/blocks and messages that were neither event nor answer."""
        proto = self._proto
        return self._malformed + (proto.codec.skipped if proto is not None else 0)

    # -- lifecycle -----------------------------------------------------------------------

    async def start(self) -> None:
        """Start connecting (in the background). Returns at once."""
        if self._tasks:
            return
        self._stopping = False
        self._session_change = asyncio.Condition()
        self._tasks = [
            self.supervisor.spawn(f"ami-link-{self.pbx}", self._run),
            self.supervisor.spawn(f"ami-expire-{self.pbx}", self._expire_loop),
        ]

    async def stop(self) -> None:
        """Close the link and stop reconnecting. Pending actions fail."""
        self._stopping = True  # also ends _run if a cancellation gets swallowed (see _run)
        tasks, self._tasks = self._tasks, []
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        proto = self._proto
        if proto is not None:
            proto.transport.abort()
        for cb in list(self._callbacks):
            cb.cancel()
        self.connected = False

    async def __aenter__(self) -> AmiListener:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def wait_for_session(self, n: int = 1, timeout: float = 10.0) -> None:
        """Wait until ``n`` sessions in all have been established (logged in and
        reconciled). ``wait_for_session(self.sessions + 1)`` awaits the next reconnect."""
        cond = self._session_change
        if cond is None:
            raise AmiError("listener not started")

        async def _wait() -> None:
            async with cond:
                await cond.wait_for(lambda: self.sessions >= n and self.connected)

        await asyncio.wait_for(_wait(), timeout)

    # -- actions -------------------------------------------------------------------------

    async def originate(
        self,
        channel: str,
        exten: str,
        context: str,
        caller_id: str | None = None,
        variables: Mapping[str, str] | None = None,
        timeout: float = 30.0,
    ) -> PanoramiskMessage:
        """Send one ``Originate`` (Async=true) and return the PBX's answer (check
        ``.success``; ``["Message"]`` says why not). ``timeout``: seconds the PBX lets the
        first leg ring. Sent exactly once: if the link drops first, :class:`AmiActionLost`
        is raised and nothing is re-sent; with no link, :class:`AmiNotConnected`."""
        fields: dict[str, Any] = {
            "Action": "Originate",
            "Channel": channel,
            "Exten": exten,
            "Context": context,
            "Priority": "1",
            "Async": "true",
            "Timeout": str(int(timeout * 1000)),
        }
        if caller_id:
            fields["CallerID"] = caller_id
        if variables:
            fields["Variable"] = [f"{k}={v}" for k, v in variables.items()]
        answer = await self.send_action(fields, as_list=False)
        assert isinstance(answer, PanoramiskMessage)
        return answer

    async def send_action(
        self,
        fields: Mapping[str, Any],
        *,
        as_list: bool | None = None,
        timeout: float | None = None,
    ) -> PanoramiskMessage | list[PanoramiskMessage]:
        """Send any action once on the live link; its answer (a list for multi-message
        answers). ValueError for a control character in any header (see :func:`check_action`)."""
        proto = self._proto
        if proto is None or proto.closed or not self.connected:
            raise AmiNotConnected(f"AMI link to {self.host}:{self.port} is down")
        action = await self._request(proto, fields, as_list, timeout or self.action_timeout)
        return action.future.result()

    async def ping(self) -> float:
        """Round trip of one Ping, in seconds. Everything the PBX sent before its Pong has
        been handled when this returns (tests use it as a barrier)."""
        t0 = time.perf_counter()
        await self.send_action({"Action": "Ping"}, as_list=False, timeout=self.ping_timeout)
        return time.perf_counter() - t0

    async def _request(
        self,
        proto: _AmiProtocol,
        fields: Mapping[str, Any],
        as_list: bool | None,
        timeout: float,
        on_done: Callable[[_Action], None] | None = None,
    ) -> _Action:
        """The one way an action reaches the PBX: checked, sent, its answer awaited."""
        check_action(fields)
        action = _Action(dict(fields), as_list=as_list, on_done=on_done)
        if proto.closed or proto.transport.is_closing():  # panoramisk's send would write it
            raise AmiActionLost("the AMI link is down; not sent")
        fut = proto.send(action, as_list=as_list)  # a failed write logs repr(): no secret
        try:
            await asyncio.wait_for(fut, timeout)
        except TimeoutError:
            proto.responses.pop(action.id, None)
            raise AmiActionTimeout(
                f"no answer to {fields.get('Action')} within {timeout:.1f}s"
            ) from None
        return action

    # -- the link ------------------------------------------------------------------------

    async def _run(self) -> None:
        # ``_stopping`` is checked as well as cancellation: in Python 3.11, a cancel that
        # lands while an action's future is being failed by the same close can surface as
        # that failure (asyncio.wait_for returns the done future's exception instead).
        while not self._stopping:
            sessions_before = self.sessions
            backoff = self._reconnect
            try:
                await self._session()
            except asyncio.CancelledError:
                raise
            except AmiLoginRejected:
                backoff = self._relogin  # logged at error in _session
            except (OSError, TimeoutError, EOFError, AmiError) as exc:
                self.last_error = str(exc) or type(exc).__name__
                self.log.warning(
                    "AMI %s: link to %s:%s: %s", self.pbx, self.host, self.port, self.last_error
                )
            except Exception as exc:  # a bug must not end reconnecting
                self.last_error = repr(exc)
                self.log.exception("AMI %s: unexpected error on the link", self.pbx)
            finally:
                await self._session_ended()
            if self._stopping:
                return
            if self.sessions > sessions_before:  # it got as far as a live session
                self._reconnect.reset()
                self._relogin.reset()
            delay = backoff.next(time.monotonic())
            self.log.info("AMI %s: reconnecting in %.2fs", self.pbx, delay)
            await asyncio.sleep(delay)

    async def _session(self) -> None:
        """Connect, log in, reconcile, then serve until the link is lost (always raises)."""
        loop = asyncio.get_running_loop()
        _, proto = await asyncio.wait_for(
            loop.create_connection(lambda: _AmiProtocol(self), self.host, self.port),
            self.connect_timeout,
        )
        self._proto = proto
        await self._login(proto)
        self.banner = proto.codec.banner

        snapshot = await self._snapshot(proto)

        if self.sessions > 0:
            self.reconnects += 1
        self.sessions += 1
        self.connected = True
        now = time.time()
        gap = None
        if self._lost_since is not None:
            gap = (min(self._lost_since, now), now)
            self._lost_since = None
        self.log.info(
            "AMI %s: connected to %s:%s as %s (%s); %d channels up",
            self.pbx,
            self.host,
            self.port,
            self.username,
            self.banner or "no banner",
            len(snapshot or ()),
        )
        await self._notify_session()
        if self.on_session is not None:
            try:
                self.on_session(Session(self.sessions, now, gap))
            except Exception:
                self.handler_errors += 1
                self.log.exception("AMI %s: on_session failed", self.pbx)

        pinger = asyncio.create_task(self._watchdog(proto))
        try:
            waiters: set[asyncio.Future[Any]] = {proto.lost, pinger}
            await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
        finally:
            pinger.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await pinger
        if proto.dead is not None or not proto.lost.done():
            raise _LinkDead(proto.dead or "watchdog stopped")
        exc = proto.lost.result()
        raise ConnectionError(f"connection lost ({exc or 'closed by peer'})")

    async def _login(self, proto: _AmiProtocol) -> None:
        action = await self._request(
            proto,
            {"Action": "Login", "Username": self.username, "Secret": self._secret, "Events": "on"},
            False,
            self.connect_timeout,
        )
        answer = action.future.result()
        if answer.success:
            if self.login_error is not None:
                self.log.info("AMI %s: login accepted again", self.pbx)
            self.login_error = None
            return
        reason = answer.get("Message") or answer.get("Response") or "rejected"
        self.login_error = f"login as {self.username!r} rejected: {reason}"
        self.last_error = self.login_error
        self.log.error(
            "AMI %s: %s:%s %s; check [ami] username/secret and manager.conf; retrying with backoff",
            self.pbx,
            self.host,
            self.port,
            self.login_error,
        )
        raise AmiLoginRejected(self.login_error)

    async def _snapshot(self, proto: _AmiProtocol) -> list[Message] | None:
        """Ask for the channels up (``CoreShowChannels``); the tracker reconciles with them
        in :meth:`_reconcile`, in stream order. Returns the snapshot, or None."""
        try:
            action = await self._request(
                proto,
                {"Action": "CoreShowChannels"},
                None,
                self.connect_timeout,
                on_done=self._reconcile,
            )
        except AmiActionTimeout as exc:
            self.log.warning("AMI %s: %s; not reconciling this time", self.pbx, exc)
            return None
        answer = action.future.result()
        if not isinstance(answer, list):
            self.log.error(
                "AMI %s: CoreShowChannels refused (%s): grant write=reporting; calls that end "
                "while the link is down are only closed as stale",
                self.pbx,
                answer.get("Message", "?"),
            )
            return None
        return _channels_of(action)

    def _reconcile(self, action: _Action) -> None:
        if action.future.cancelled() or action.future.exception() is not None:
            return
        if isinstance(action.future.result(), list):
            snapshot = _channels_of(action)
            try:
                updates = list(self.tracker.reconcile(snapshot, time.time(), self._lost_since))
            except Exception:
                self.handler_errors += 1
                self.log.exception("AMI %s: tracker reconcile failed", self.pbx)
                return
            self._deliver(updates)
            lost = _adopted_without_did(updates, snapshot)
            if lost and self._proto is not None:
                task = asyncio.ensure_future(self._recover_dids(self._proto, lost))
                self._callbacks.add(task)
                task.add_done_callback(self._callback_done)

    async def _recover_dids(self, proto: _AmiProtocol, channels: list[Message]) -> None:
        """An inbound call adopted after a restart lost its DID (CoreShowChannel does not
        carry it): ask the PBX for the channel's DID variables (FreePBX: ``FROM_DID``) or,
        failing that, ``CALLERID(dnid)``, and tell the tracker as the ``VarSet`` it missed.
        Getvar needs no more than the ``reporting`` write class CoreShowChannels uses."""
        variables, told_as = _did_variables(self.tracker)
        for chan in channels:
            for variable in variables:
                try:
                    action = await self._request(
                        proto,
                        {"Action": "Getvar", "Channel": chan["Channel"], "Variable": variable},
                        False,
                        self.action_timeout,
                    )
                    answer = action.future.result()
                except ValueError as exc:  # a channel name no header may carry
                    self.log.warning(
                        "AMI %s: not asking the DID of adopted %r: %s",
                        self.pbx,
                        chan["Channel"],
                        exc,
                    )
                    break
                except (AmiActionTimeout, AmiActionLost) as exc:
                    call_id = chan.get("Linkedid") or chan.get("Uniqueid") or ""
                    log.info(
                        "AMI %s: no DID for adopted %s: %s",
                        self.pbx,
                        chan["Channel"],
                        exc,
                        extra=log_tags(call_id, self.pbx),
                    )
                    return
                value = answer.get("Value") if answer.success else None
                if value:
                    varset = {
                        "Event": "VarSet",
                        "Channel": chan["Channel"],
                        "Uniqueid": chan["Uniqueid"],
                        "Variable": told_as,
                        "Value": value,
                    }
                    self._deliver_from(
                        functools.partial(self.tracker.handle, varset, time.time()), "DID"
                    )
                    break

    async def _watchdog(self, proto: _AmiProtocol) -> None:
        """Ping every ``ping_interval``; no Pong within ``ping_timeout``: the peer is gone."""
        while True:
            await asyncio.sleep(self.ping_interval)
            try:
                await self._request(proto, {"Action": "Ping"}, False, self.ping_timeout)
            except AmiActionTimeout:
                proto.dead = f"no answer to Ping within {self.ping_timeout:.1f}s; peer dead"
                self.log.warning("AMI %s: %s", self.pbx, proto.dead)
                proto.transport.abort()
                return
            except AmiActionLost:
                return

    async def _session_ended(self) -> None:
        was_connected = self.connected
        self.connected = False
        if was_connected and not self._stopping:  # what follows is a gap in the stream
            self._lost_since = self.last_data_at or time.time()
        proto, self._proto = self._proto, None
        if proto is not None:
            self._malformed += proto.codec.skipped
            proto.transport.abort()
        if was_connected:
            if self._stopping:
                self.log.info("AMI %s: link closed", self.pbx)
            else:
                self.log.warning("AMI %s: link down (%s)", self.pbx, self.last_error or "closed")
            await self._notify_session()

    async def _notify_session(self) -> None:
        cond = self._session_change
        if cond is not None:
            async with cond:
                cond.notify_all()

    # -- events --------------------------------------------------------------------------

    def _on_event(self, msg: Message, arrived: float) -> None:
        self.events_received += 1
        self.last_event_at = arrived
        try:
            updates = self.tracker.handle(msg, arrived)
        except Exception:
            self.handler_errors += 1
            self.log.exception(
                "AMI %s: tracker failed on a %s event; skipped", self.pbx, msg.get("Event")
            )
            return
        if updates:
            self._deliver(updates)

    def _on_malformed(self, msg: Message, arrived: float) -> None:
        """A block that is neither event nor answer: maybe garbage glued to the front of
        a real message (``<junk>Event: Hangup``). Salvage that, else log and skip."""
        self._malformed += 1
        first = next(iter(msg), "")
        for tag in ("Event", "Response"):
            if first.endswith(tag) and first != tag:
                fixed = {tag: msg[first], **{k: v for k, v in msg.items() if k != first}}
                self.log.warning("AMI %s: dropped junk before a %s message", self.pbx, tag)
                if tag == "Event":  # its ActionID, if any, is no pending action's (_route)
                    self._on_event(fixed, arrived)
                return
        self.log.warning(
            "AMI %s: skipping a message that is neither event nor answer: %s",
            self.pbx,
            ", ".join(list(msg)[:5]),
        )

    async def _expire_loop(self) -> None:
        while True:
            await asyncio.sleep(self.expire_interval)
            now = time.time()
            self._deliver_from(functools.partial(self.tracker.expire, now), "expire")
            self.check_clock()

    def check_clock(self) -> None:
        """Warn once when the PBX's clock (its events' Timestamps) is more than a minute
        off this host's: the calls keep the PBX's times and are aged on its clock, but
        reports that mix both clocks will not line up."""
        offset = self.tracker.clock_offset
        if offset is None or abs(offset) <= SKEW_WARN_S or self.clock_warned:
            return
        self.clock_warned = True
        self.log.warning(
            "AMI %s: the PBX's clock is %.0f s %s this host's (event Timestamps against their "
            "arrival): call times stay the PBX's and calls are aged on its clock; set both "
            "clocks right (NTP)",
            self.pbx,
            abs(offset),
            "behind" if offset > 0 else "ahead of",
        )

    def _deliver_from(self, produce: Callable[[], Iterable[Update]], what: str) -> None:
        try:
            updates = produce()
        except Exception:
            self.handler_errors += 1
            self.log.exception("AMI %s: tracker %s failed", self.pbx, what)
            return
        self._deliver(updates)

    def _deliver(self, updates: Iterable[Update] | Sequence[Update]) -> None:
        on_update = self._on_update
        for update in updates:
            try:
                result = on_update(update)
                if result is not None and inspect.isawaitable(result):
                    task = asyncio.ensure_future(result)
                    self._callbacks.add(task)
                    task.add_done_callback(self._callback_done)
            except Exception:
                self.handler_errors += 1
                self.log.exception(
                    "AMI %s: on_update failed for %s; the link stays up",
                    self.pbx,
                    type(update).__name__,
                )

    def _callback_done(self, task: asyncio.Future[Any]) -> None:
        self._callbacks.discard(task)
        if task.cancelled():
            return
        exc = task.exception()
        if exc is not None:
            self.handler_errors += 1
            self.log.error("AMI %s: on_update task failed: %r", self.pbx, exc)
