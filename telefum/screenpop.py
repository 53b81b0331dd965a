"""Screen pop: what each agent's page shows, kept live from the tracker's updates.

The tracker's live updates (``Ringing``, ``Answered``, ``CallFinished``) come in through
:meth:`ScreenPop.on_update`, which is synchronous and never waits: it changes the state of
the extensions concerned, publishes their new snapshot to every open page at once (so the
caller's number shows the moment the phone rings) and, when someone watches the extension,
starts the CRM lookup in the background; the contacts follow in a second snapshot when the
CRM answers.

The caller is looked up only for a *watched* extension: one with an open page
(:meth:`ScreenPop.subscribe`) or whose snapshot is asked for (:meth:`ScreenPop.watch`, the
JSON endpoint). A lookup nobody sees is load on the customer's CRM for nothing: looking up
every call was a third of the CRM's requests and ~15% of the listener's CPU with no page
open (bench/e2e_bench.py). A page that opens mid-call starts the lookups of the calls
current then; calls that ended unwatched stay not looked up (lookup state ``none``) in the
history, shown with the CRM's search link, which is made locally and asks the CRM nothing.
:meth:`ScreenPop.snapshot` itself never looks up.

Each page subscription receives *whole snapshots* of its extension (current calls and a
short history), never deltas: a slow or reconnecting browser only needs the latest one, so
a subscriber's mailbox holds one snapshot and a newer one replaces an unread older one.

The CRM lookup is cached per phone for a few seconds and concurrent lookups for the same
phone share one request, so a ring group of ten phones asks the CRM once. At most
``max_lookups`` lookups run at once, ``max_lookups_per_extension`` of them for one extension
(5,000 calls ringing one watched extension must not become 5,000 CRM requests at once, nor take
every other agent's turn): a call beyond waits, shown with the search link, and is looked
up when a running lookup ends (an open page) or on the next watch; each one left waiting
counts as a ``crm_lookups`` hit (``telefum.limits``).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from collections import Counter, deque
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

import phonenumbers

from crm_client.redact import redact_text
from crm_client.types import Credentials, FindResult
from telefum.limits import Limits
from telephony.phones import PhoneFormat, for_crm
from telephony.records import Answered, CallFinished, CallStarted, Ringing

log = logging.getLogger(__name__)

State = Literal["ringing", "answered", "ended"]
LookupState = Literal["none", "pending", "done", "failed"]


class CrmDirectory(Protocol):
    """What the screen pop needs of a CRM client (``crm_client.TelefumClient`` fits)."""

    async def find(self, phone: str, creds: Credentials) -> FindResult: ...

    def card_url(self, id: str, typecont: str) -> str: ...

    def search_url(self, phone: str) -> str: ...


@dataclass(frozen=True)
class CrmLookup:
    """One CRM as the screen pop looks callers up in it: the client, whose login looks up,
    how phones look (built by ``telefum.wiring.crm_lookups`` from a ``[crm]``)."""

    client: CrmDirectory
    creds: Credentials
    phone_format: PhoneFormat | str = PhoneFormat.E164
    name: str = "default"  # cache key part: the same phone in two CRMs is two lookups


# --- the cache ----------------------------------------------------------------------------


class LookupCache:
    """Per-key results kept ``ttl_s`` seconds; concurrent callers of one key share one fetch.

    A failed fetch is not kept: every waiter of that fetch sees the error, the next caller
    tries again. A waiter that is cancelled does not cancel the fetch the others wait on.
    """

    def __init__(
        self, ttl_s: float = 5.0, clock: Callable[[], float] = time.monotonic, max_size: int = 1000
    ) -> None:
        self.ttl_s = ttl_s
        self._clock = clock
        self._max_size = max_size
        self._entries: dict[Any, tuple[float, asyncio.Task[Any]]] = {}
        self._swept_at = float("-inf")
        self.fetches = 0  # how many real fetches were started (for tests and metrics)

    async def get(self, key: Any, fetch: Callable[[], Awaitable[Any]]) -> Any:
        now = self._clock()
        entry = self._entries.get(key)
        if entry is None or entry[0] <= now:
            self._prune(now)
            task: asyncio.Task[Any] = asyncio.ensure_future(fetch())
            self.fetches += 1
            self._entries[key] = (now + self.ttl_s, task)
            task.add_done_callback(functools.partial(self._forget_failure, key))
        else:
            task = entry[1]
        return await asyncio.shield(task)

    def _forget_failure(self, key: Any, task: asyncio.Task[Any]) -> None:
        if task.cancelled() or task.exception() is not None:
            entry = self._entries.get(key)
            if entry is not None and entry[1] is task:
                del self._entries[key]

    def _prune(self, now: float) -> None:
        # the sweep for expired entries at most once a second (every new caller is a miss:
        # a sweep per miss is quadratic on a busy PBX); the size bound below holds anyway
        if now - self._swept_at >= 1.0:
            self._swept_at = now
            for k in [k for k, (exp, t) in self._entries.items() if exp <= now and t.done()]:
                del self._entries[k]
        while len(self._entries) >= self._max_size:  # oldest first (dicts keep insertion order)
            del self._entries[next(iter(self._entries))]


# --- per-extension state ------------------------------------------------------------------


@dataclass
class Lookup:
    """What the CRM said about one call's caller (shared by every extension it rang)."""

    state: LookupState = "none"  # "none": not looked up (internal call, or nobody watched)
    contacts: list[dict[str, str]] = field(default_factory=list)
    total: int = 0
    search_url: str | None = None
    error: str | None = None
    waited: bool = False  # a cap has held it back once (counted once)

    def to_json(self) -> dict[str, Any]:
        return {
            "state": self.state,
            "contacts": self.contacts,
            "total": self.total,
            "search_url": self.search_url,
            "error": self.error,
        }


@dataclass
class PopCall:
    """One call as one agent's page shows it."""

    call_id: str
    pbx: str
    extension: str
    direction: str
    caller: str | None  # the outside party, E.164
    did: str | None
    source: str | None
    rang_at: float
    lookup: Lookup
    state: State = "ringing"
    answered_at: float | None = None
    ended_at: float | None = None
    outcome: str | None = None  # "answered", "missed", "answered by 102"

    def to_json(self) -> dict[str, Any]:
        return {
            "call_id": self.call_id,
            "extension": self.extension,
            "direction": self.direction,
            "caller": self.caller,
            "caller_display": display_phone(self.caller),
            "did": self.did,
            "did_display": display_phone(self.did),
            "source": self.source,
            "state": self.state,
            "outcome": self.outcome,
            "rang_at": self.rang_at,
            "answered_at": self.answered_at,
            "ended_at": self.ended_at,
            "lookup": self.lookup.to_json(),
        }


def display_phone(e164: str | None) -> str | None:
    """``+79161234567`` -> ``+7 916 123-45-67`` (how a person reads it)."""
    if not e164:
        return None
    try:
        num = phonenumbers.parse(e164, None)
    except phonenumbers.NumberParseException:
        return e164
    return phonenumbers.format_number(num, phonenumbers.PhoneNumberFormat.INTERNATIONAL)


@dataclass
class _Extension:
    current: dict[str, PopCall] = field(default_factory=dict)  # call_id -> call
    history: deque[PopCall] = field(default_factory=deque)
    subscribers: set[_Mailbox] = field(default_factory=set)
    pruned_at: float = float("-inf")  # last stale sweep (see ScreenPop._prune_stale)


class _Mailbox:
    """Holds the latest unread snapshot for one open page."""

    def __init__(self) -> None:
        self._queue: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue(maxsize=1)

    def put(self, snapshot: dict[str, Any] | None) -> None:
        if self._queue.full():
            with contextlib.suppress(asyncio.QueueEmpty):
                self._queue.get_nowait()
        self._queue.put_nowait(snapshot)

    async def get(self) -> dict[str, Any] | None:
        return await self._queue.get()


class ScreenPop:
    """Per-extension live call state, the SSE fan-out and the cached CRM lookup.

    ``crm_for(pbx)`` says which CRM a PBX's callers are looked up in (``Settings.crm_for``);
    ``sources`` maps tracking numbers (E.164) to their ad-source labels. Callers are looked
    up only while their extension is watched: :meth:`subscribe` (a page's live feed) or
    :meth:`watch` (one snapshot on request); :meth:`snapshot` alone never asks the CRM.
    """

    def __init__(
        self,
        crm_for: Callable[[str], CrmLookup],
        *,
        sources: Mapping[str, str] | None = None,
        cache_ttl_s: float = 5.0,
        history_size: int = 10,
        max_call_age_s: float = 12 * 3600.0,
        max_lookups: int = 32,
        max_lookups_per_extension: int = 4,
        limits: Limits | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._crm_for = crm_for
        self._sources = dict(sources or {})
        self.cache = LookupCache(ttl_s=cache_ttl_s)
        self._history_size = history_size
        self._max_call_age_s = max_call_age_s
        self._clock = clock
        self._extensions: dict[str, _Extension] = {}
        self._lookups: dict[str, Lookup] = {}  # call key -> lookup, while the call is current
        self._started: dict[str, CallStarted] = {}  # call key -> how it began, until it ends
        self._tasks: set[asyncio.Task[None]] = set()
        self._started_pruned_at = float("-inf")
        self._closed = False
        self._max_lookups = max_lookups
        self._max_lookups_per_extension = max_lookups_per_extension
        self.limits = limits or Limits()
        self._running: Counter[str] = Counter()  # lookups under way, by the extension that asked
        self._waiting: set[str] = set()  # extensions with calls a cap left not looked up

    # --- input: the tracker's updates ---------------------------------------------------

    def on_update(self, update: object) -> None:
        """Take one live update; never blocks, never raises (a bad update is logged)."""
        try:
            if isinstance(update, CallStarted):
                now = self._clock()
                # ends lost with a link: keep the map bounded (swept at most once a second:
                # a busy PBX has well over 1000 calls up, and a sweep per call is quadratic)
                if len(self._started) >= 1000 and now - self._started_pruned_at >= 1.0:
                    self._started_pruned_at = now
                    limit = now - self._max_call_age_s
                    for k in [k for k, c in self._started.items() if c.at < limit]:
                        del self._started[k]
                self._started[_call_key(update.pbx, update.call_id)] = update
            elif isinstance(update, Ringing):
                self._ringing(update)
            elif isinstance(update, Answered):
                self._answered(update)
            elif isinstance(update, CallFinished):
                self._finished(update)
        except Exception:  # the listener must not die for a screen pop
            log.exception("screen pop: could not apply %r", type(update).__name__)

    def _ringing(self, u: Ringing) -> None:
        ext = self._ext(u.extension)
        self._prune_stale(ext)
        call = ext.current.get(_call_key(u.pbx, u.call_id))
        if call is None:
            self._pop(u.extension, u.pbx, u.call_id, u.direction, u.external, u.did, u.at)
        else:  # rung again (a queue's next round): ringing again, same pop
            call.state = "ringing"
        self._publish(u.extension)

    def _pop(
        self,
        extension: str,
        pbx: str,
        call_id: str,
        direction: str,
        external: str | None,
        did: str | None,
        at: float,
    ) -> PopCall:
        """A new call on an extension's page; the CRM lookup starts once per call, and only
        when the extension is watched (else when a page opens while the call is current)."""
        key = _call_key(pbx, call_id)
        lookup = self._lookups.get(key)
        if lookup is None:
            lookup = self._lookups[key] = Lookup()
        call = PopCall(
            call_id=call_id,
            pbx=pbx,
            extension=extension,
            direction=direction,
            caller=external,
            did=did,
            source=self._sources.get(did) if did else None,
            rang_at=at,
            lookup=lookup,
        )
        ext = self._ext(extension)
        ext.current[key] = call
        if ext.subscribers:
            self._count_waiting(extension, self._start_lookup(call))
        return call

    def _answered(self, u: Answered) -> None:
        key = _call_key(u.pbx, u.call_id)
        for name, ext in list(self._extensions.items()):
            call = ext.current.get(key)
            if call is None or name == u.extension:
                continue
            if u.extension is not None:  # a ring group or queue: someone else took it
                call.state, call.ended_at = "ended", u.at
                call.outcome = f"answered by {u.extension}"
                self._retire(ext, key)
                self._publish(name)
        if u.extension is None:
            return
        call = self._ext(u.extension).current.get(key)
        started = self._started.get(key)
        if call is None and started is not None:
            # answered without a ring we saw: the agent's own outgoing or click-to-call
            call = self._pop(
                u.extension,
                u.pbx,
                u.call_id,
                started.direction,
                started.external,
                started.did,
                started.at,
            )
        if call is not None:
            call.state, call.answered_at = "answered", u.at
            self._publish(u.extension)

    def _finished(self, u: CallFinished) -> None:
        rec = u.record
        key = _call_key(rec.pbx, rec.call_id)
        for name, ext in list(self._extensions.items()):
            call = ext.current.get(key)
            if call is None:
                continue
            call.state, call.ended_at = "ended", rec.ended_at
            if call.answered_at is not None:
                call.outcome = "answered"
            elif rec.answered and rec.extension and rec.extension != name:
                call.outcome = f"answered by {rec.extension}"
            else:
                call.outcome = "answered" if rec.answered and rec.direction == "out" else "missed"
            self._retire(ext, key)
            self._publish(name)
        self._lookups.pop(key, None)
        self._started.pop(key, None)

    # --- the CRM lookup -----------------------------------------------------------------

    def _start_lookup(self, call: PopCall) -> int:
        """Look the call's caller up unless that is done or under way (the lookup is shared
        by every extension the call rang); 1 when a cap makes it wait for the first time."""
        lookup = call.lookup
        if not call.caller or lookup.state != "none" or self._closed:
            return 0
        ext = call.extension
        if (
            self._running[ext] >= self._max_lookups_per_extension
            or self._running.total() >= self._max_lookups
        ):
            self._waiting.add(ext)
            first, lookup.waited = not lookup.waited, True
            return int(first)
        lookup.state = "pending"
        self._running[ext] += 1
        self._spawn(self._lookup(call.pbx, call.caller, lookup, ext))
        return 0

    def _look_up_current(self, ext: _Extension) -> None:
        """Someone watches ``ext``: look up its current calls that never were (not the
        history: a call that ended unwatched stays not looked up)."""
        self._prune_stale(ext)  # a call whose end was lost is not worth a CRM request
        name = ""
        waiting = 0
        for call in ext.current.values():
            name = call.extension
            waiting += self._start_lookup(call)
        self._count_waiting(name, waiting)

    def _count_waiting(self, extension: str, n: int) -> None:
        if n:
            self.limits.hit(
                "crm_lookups",
                f"extension {extension}: {n} more calls wait for a CRM lookup ([http] "
                f"max_lookups: {self._max_lookups} at once, "
                f"{self._max_lookups_per_extension} for one extension)",
                n,
            )

    def _lookup_ended(self, extension: str) -> None:
        """A slot is free: watched extensions with waiting calls take their turn."""
        self._running[extension] -= 1
        if self._running[extension] <= 0:
            del self._running[extension]
        for name in list(self._waiting):
            self._waiting.discard(name)
            ext = self._extensions.get(name)
            if ext is not None and ext.subscribers:  # else: the next watch() asks again
                self._look_up_current(ext)

    def _search_url(self, pbx: str, phone: str) -> str | None:
        """The CRM's search link for a phone; made here, no request to the CRM."""
        try:
            target = self._crm_for(pbx)
            return target.client.search_url(for_crm(phone, target.phone_format))
        except Exception as err:  # no link is better than no page
            log.debug("screen pop: no CRM search link: %s", redact_text(str(err)) or type(err))
            return None

    async def _lookup(self, pbx: str, phone: str, lookup: Lookup, extension: str) -> None:
        try:
            await self._find(pbx, phone, lookup)
        finally:
            self._lookup_ended(extension)

    async def _find(self, pbx: str, phone: str, lookup: Lookup) -> None:
        try:
            target = self._crm_for(pbx)
            crm_phone = for_crm(phone, target.phone_format)
            lookup.search_url = target.client.search_url(crm_phone)
            result: FindResult = await self.cache.get(
                (target.name, crm_phone), lambda: target.client.find(crm_phone, target.creds)
            )
            lookup.contacts = [
                {
                    "id": c.id,
                    "typecont": c.typecont,
                    "name": c.name,
                    "company": c.company,
                    "description": c.description,
                    "url": target.client.card_url(c.id, c.typecont),
                }
                for c in result.contacts
            ]
            lookup.total = max(result.total, len(result.contacts))
            lookup.state = "done"
        except asyncio.CancelledError:
            raise
        except Exception as err:  # the page still shows the number and the search link
            lookup.state, lookup.error = "failed", "CRM lookup failed"
            log.warning("screen pop: CRM lookup failed: %s", redact_text(str(err)) or type(err))
        for name, ext in self._extensions.items():
            if ext.subscribers and any(
                c.lookup is lookup for c in (*ext.current.values(), *ext.history)
            ):
                self._publish(name)

    def _spawn(self, coro: Awaitable[None]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # --- output: snapshots and subscriptions --------------------------------------------

    def snapshot(self, extension: str) -> dict[str, Any]:
        """Everything the agent page of ``extension`` shows, as JSON-ready data.

        Starts no CRM lookup (see :meth:`watch`); a call never looked up gets the CRM's
        search link here, made locally when first shown (most are never shown)."""
        ext = self._extensions.get(extension)
        current = sorted(ext.current.values(), key=lambda c: c.rang_at) if ext else []
        history = list(ext.history) if ext else []
        for call in (*current, *history):
            lk = call.lookup
            if lk.state == "none" and call.caller and lk.search_url is None:
                lk.search_url = self._search_url(call.pbx, call.caller)
        return {
            "extension": extension,
            "at": self._clock(),
            "calls": [c.to_json() for c in current],
            "history": [c.to_json() for c in history],
        }

    def watch(self, extension: str) -> dict[str, Any]:
        """The snapshot for someone who asked for it (the JSON endpoint): asking counts as
        watching, so the lookups of the extension's current calls start first (the answer
        shows them pending; ask again for the contacts). Open pages use :meth:`subscribe`."""
        ext = self._extensions.get(extension)
        if ext is not None:
            self._look_up_current(ext)
        return self.snapshot(extension)

    @contextlib.asynccontextmanager
    async def subscribe(self, extension: str) -> AsyncIterator[_Subscription]:
        """Open one page's feed: the current snapshot first, then one per change.

        While the feed is open the extension is watched: the lookups of its current calls
        start now (the first snapshot shows them pending), those of new calls as they ring."""
        box = _Mailbox()
        ext = self._ext(extension)
        ext.subscribers.add(box)
        self._look_up_current(ext)
        box.put(None if self._closed else self.snapshot(extension))
        try:
            yield _Subscription(box)
        finally:
            ext.subscribers.discard(box)

    async def close(self) -> None:
        """End every open feed (so the web server can stop) and stop pending lookups."""
        self._closed = True
        for ext in self._extensions.values():
            for box in ext.subscribers:
                box.put(None)
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)

    async def idle(self) -> None:
        """Wait until no CRM lookup is in flight (for tests and orderly shutdown)."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)

    # --- helpers ------------------------------------------------------------------------

    def _ext(self, extension: str) -> _Extension:
        ext = self._extensions.get(extension)
        if ext is None:
            ext = self._extensions[extension] = _Extension(history=deque(maxlen=self._history_size))
        return ext

    def _retire(self, ext: _Extension, key: str) -> None:
        call = ext.current.pop(key)
        ext.history.appendleft(call)

    def _prune_stale(self, ext: _Extension) -> None:
        """Drop calls whose end never came (a lost link): a page must not ring forever."""
        now = self._clock()
        if now - ext.pruned_at < 1.0:  # once a second at most: a sweep per ring is quadratic
            return
        ext.pruned_at = now
        limit = now - self._max_call_age_s
        for key in [k for k, c in ext.current.items() if c.rang_at < limit]:
            ext.current[key].state, ext.current[key].outcome = "ended", "unknown"
            self._retire(ext, key)
            self._lookups.pop(key, None)
            self._started.pop(key, None)

    def _publish(self, extension: str) -> None:
        ext = self._extensions.get(extension)
        if not ext or not ext.subscribers or self._closed:
            return
        snap = self.snapshot(extension)
        for box in ext.subscribers:
            box.put(snap)


class _Subscription:
    """Async iterator of snapshots; ends when the screen pop closes."""

    def __init__(self, box: _Mailbox) -> None:
        self._box = box

    def __aiter__(self) -> _Subscription:
        return self

    async def __anext__(self) -> dict[str, Any]:
        snap = await self._box.get()
        if snap is None:
            raise StopAsyncIteration
        return snap

    async def next(self, timeout: float) -> dict[str, Any] | None:
        """The next snapshot, or None when none came within ``timeout`` seconds."""
        try:
            snap = await asyncio.wait_for(self._box.get(), timeout)
        except TimeoutError:
            return None
        if snap is None:
            raise StopAsyncIteration
        return snap


def _call_key(pbx: str, call_id: str) -> str:
    return f"{pbx}:{call_id}"
