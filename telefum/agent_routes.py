"""HTTP for agents and marketers: the screen-pop page, its live feed, click-to-call, the report.

Routes (all added by :func:`setup_agent_routes`):

- ``GET  /agent/{ext}?token=T``         the agent's page (HTML)
- ``GET  /agent/{ext}/events?token=T``  server-sent events: one ``state`` event per change,
                                        carrying the extension's whole snapshot
- ``GET  /agent/{ext}/state?token=T``   the same snapshot once, as JSON
- ``POST /originate``                   click-to-call (JSON or form: extension, number)
- ``GET  /report?token=T``              the marketer's page (HTML + chart)
- ``GET  /report.json?token=T&since=7d&until=&tz=``  the figures
- ``GET  /ui/{file}``                   the pages' script and style (no secrets in them)

Callers are looked up in the CRM only for an extension someone watches: while its events
feed is open, and for its current calls when its state is asked for (see ``ScreenPop``).
An extension has at most ``[http] max_streams_per_extension`` feeds open, the service at
most half of ``[http] max_connections`` (a feed holds its connection for as long as the
page is open); a feed beyond is a 429 (``telefum.limits``).

Tokens: an agent's own token (``[http.agent_tokens]``) opens that extension's page and dials
from that extension only; the admin token (``[http] token``) does both for any extension;
the report takes the admin token or ``[http] report_token``. A token travels as
``Authorization: Bearer T`` or, where a browser cannot set headers (page links,
EventSource), as ``?token=T``. No token, no call: nothing is originated unauthenticated.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import logging
import re
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import tzinfo
from importlib import resources
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from aiohttp import web

from telefum.attribution import Attribution, parse_since
from telefum.config import HttpSettings, Settings
from telefum.http_guard import BODY_TIMEOUT_S
from telefum.limits import Limits
from telefum.originate import (
    DialRefused,
    OriginateFailed,
    Originator,
    RateLimited,
    parse_dial_target,
)
from telefum.screenpop import ScreenPop

log = logging.getLogger(__name__)

SSE_KEEPALIVE_S = 15.0
_STATIC = ("agent.html", "agent.js", "report.html", "report.js", "telefum.css")
_TYPES = {".html": "text/html", ".js": "text/javascript", ".css": "text/css"}
# The pages load only their own script and style; CRM cards open as plain links.
_CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
    "img-src 'self' data:; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)


@dataclass
class AgentServices:
    """The three things the agent routes serve, built from the settings by
    ``telefum.wiring.agent_services``; ``aclose()`` at shutdown."""

    screenpop: ScreenPop
    originator: Originator | None
    attribution: Attribution | None
    _close_crm: Callable[[], Awaitable[None]]

    async def aclose(self) -> None:
        await self.screenpop.close()
        await self._close_crm()


def request_token(request: web.Request) -> str | None:
    """The token a request carries: ``Authorization: Bearer X``, else ``?token=X`` (a posted
    form or JSON object may carry it as its ``token`` field instead: see ``originate``).

    The query form is for pages opened in a browser and for EventSource, which cannot set
    headers; log lines mask ``token=`` (crm_client.redact).
    """
    auth = request.headers.get("Authorization", "")
    scheme, _, value = auth.partition(" ")
    if scheme.lower() == "bearer" and value.strip():
        return value.strip()
    return request.query.get("token") or None


def token_matches(given: str | None, expected: str) -> bool:
    """Constant-time comparison; an empty expected token matches nothing, so a token left
    unset disables what it guards rather than opening it."""
    if not given or not expected:
        return False
    return hmac.compare_digest(given.encode(), expected.encode())


class Tokens:
    """Who a token is: the admin, the report reader, or the agent of one extension."""

    def __init__(self, http: HttpSettings) -> None:
        self._admin = http.token.get_secret_value()
        self._report = http.report_token.get_secret_value()
        self._agents = {ext: t.get_secret_value() for ext, t in http.agent_tokens.items()}

    def is_admin(self, token: str | None) -> bool:
        return token_matches(token, self._admin)

    def extension_of(self, token: str | None) -> str | None:
        """The extension whose agent token this is, else None."""
        for ext, tok in self._agents.items():
            if token_matches(token, tok):
                return ext
        return None

    def known(self, token: str | None) -> bool:
        return self.is_admin(token) or self.extension_of(token) is not None

    def may_act_for(self, token: str | None, extension: str) -> bool:
        return self.is_admin(token) or token_matches(token, self._agents.get(extension, ""))

    def may_read_report(self, token: str | None) -> bool:
        return self.is_admin(token) or token_matches(token, self._report)


def setup_agent_routes(
    app: web.Application,
    *,
    screenpop: ScreenPop,
    originator: Originator | None,
    attribution: Attribution | None,
    settings: Settings,
    limits: Limits | None = None,
) -> None:
    """Add the agent and report routes to ``app`` (the service shell calls this once).

    ``originator`` None: click-to-call answers 503 (no PBX link). ``attribution`` None: the
    report answers 503 (no Redis). The screen pop's feeds are closed on app shutdown, so
    open browser pages do not hold the server up.
    """
    routes = _AgentRoutes(screenpop, originator, attribution, settings, limits or Limits())
    app.router.add_get("/agent/{ext}", routes.agent_page)
    app.router.add_get("/agent/{ext}/events", routes.agent_events)
    app.router.add_get("/agent/{ext}/state", routes.agent_state)
    app.router.add_post("/originate", routes.originate)
    app.router.add_get("/report", routes.report_page)
    app.router.add_get("/report.json", routes.report_json)
    app.router.add_get("/ui/{name}", routes.static)

    async def close_feeds(_app: web.Application) -> None:
        await screenpop.close()

    app.on_shutdown.append(close_feeds)


class _AgentRoutes:
    def __init__(
        self,
        screenpop: ScreenPop,
        originator: Originator | None,
        attribution: Attribution | None,
        settings: Settings,
        limits: Limits,
    ) -> None:
        self.screenpop = screenpop
        self.originator = originator
        self.attribution = attribution
        self.settings = settings
        self.tokens = Tokens(settings.http)
        self._files = {name: _read_static(name) for name in _STATIC}
        self._extension_re = re.compile(settings.calls.extension_pattern, re.ASCII)
        self.limits = limits
        self._streams: Counter[str] = Counter()  # open live feeds per extension
        self._max_streams_per_extension = settings.http.max_streams_per_extension
        self._max_streams = max(1, settings.http.max_connections // 2)

    # --- the agent page -----------------------------------------------------------------

    def _agent(self, request: web.Request) -> str:
        ext = request.match_info["ext"]
        if not self.tokens.may_act_for(request_token(request), ext):
            raise _error(401, f"a valid token for extension {ext} is needed")
        if not self._extension_re.fullmatch(ext):  # the admin token opens any name
            raise _error(404, f"not an extension ([calls] extension_pattern): {ext!r}")
        return ext

    async def agent_page(self, request: web.Request) -> web.Response:
        self._agent(request)
        return self._page("agent.html")

    async def agent_state(self, request: web.Request) -> web.Response:
        ext = self._agent(request)
        return _json(self.screenpop.watch(ext))  # asking counts as watching: looks up

    async def agent_events(self, request: web.Request) -> web.StreamResponse:
        ext = self._agent(request)
        refusal = self._stream_refusal(ext)
        if refusal is not None:
            self.limits.hit("sse_streams", refusal)
            return _json(
                {"error": f"too many live feeds: {refusal}"},
                status=429,
                headers={"Retry-After": "30"},
            )
        self._streams[ext] += 1
        try:
            return await self._feed(request, ext)
        finally:
            self._streams[ext] -= 1
            if not self._streams[ext]:
                del self._streams[ext]

    def _stream_refusal(self, ext: str) -> str | None:
        if self._streams[ext] >= self._max_streams_per_extension:
            return (
                f"extension {ext} has {self._streams[ext]} open ([http] max_streams_per_extension)"
            )
        if self._streams.total() >= self._max_streams:
            return f"{self._streams.total()} open in all (half of [http] max_connections)"
        return None

    async def _feed(self, request: web.Request, ext: str) -> web.StreamResponse:
        resp = web.StreamResponse(
            headers={
                "Content-Type": "text/event-stream; charset=utf-8",
                "Cache-Control": "no-cache",
                "X-Accel-Buffering": "no",  # nginx: do not buffer the stream
            }
        )
        await resp.prepare(request)
        with contextlib.suppress(ConnectionResetError, asyncio.CancelledError):
            await resp.write(b"retry: 2000\n\n")
            async with self.screenpop.subscribe(ext) as feed:
                while True:
                    try:
                        snap = await feed.next(SSE_KEEPALIVE_S)
                    except StopAsyncIteration:
                        break
                    if snap is None:
                        await resp.write(b": keep-alive\n\n")
                        continue
                    data = json.dumps(snap, ensure_ascii=False, separators=(",", ":"))
                    await resp.write(f"event: state\ndata: {data}\n\n".encode())
        return resp

    # --- click-to-call ------------------------------------------------------------------

    async def originate(self, request: web.Request) -> web.Response:
        """The token first (a header or query token before the body is even read), then
        the body's shape (400), then what may be dialled."""
        unauthorized = _json({"error": "a valid agent token is needed"}, status=401)
        token = request_token(request)
        if token is not None and not self.tokens.known(token):
            return unauthorized
        try:
            body = await _read_body(request)
        except BadBody as err:
            return _json({"error": str(err)}, status=err.status) if token else unauthorized
        if token is None and isinstance(body.get("token"), str):
            token = body["token"]
        if not self.tokens.known(token):
            return unauthorized
        try:
            given_ext, raw = _text_field(body, "extension"), _text_field(body, "number")
        except BadBody as err:
            return _json({"error": str(err)}, status=400)
        ext = (given_ext or self.tokens.extension_of(token) or "").strip()
        if not ext:
            return _json({"error": "which extension dials: give 'extension'"}, status=400)
        if not self.tokens.may_act_for(token, ext):
            return _json({"error": f"this token may not dial from extension {ext}"}, status=403)
        raw = (raw or "").strip()
        if not raw:
            return _json({"error": "give the 'number' to dial"}, status=400)
        if self.originator is None:
            return _json({"error": "click-to-call is not available (no PBX link)"}, status=503)
        try:
            dialled = await self.originator.dial(ext, parse_dial_target(raw))
        except DialRefused as err:
            return _json({"error": str(err)}, status=403)
        except RateLimited as err:
            retry = max(1, round(err.retry_after_s + 0.49))
            return _json(
                {"error": str(err), "retry_after_s": retry},
                status=429,
                headers={"Retry-After": str(retry)},
            )
        except OriginateFailed as err:
            return _json({"error": str(err)}, status=503 if err.link_down else 502)
        return _json(dialled.to_json(), status=202)

    # --- the report ---------------------------------------------------------------------

    def _reader(self, request: web.Request) -> None:
        if not self.tokens.may_read_report(request_token(request)):
            raise _error(401, "a valid report token is needed")

    async def report_page(self, request: web.Request) -> web.Response:
        self._reader(request)
        return self._page("report.html")

    async def report_json(self, request: web.Request) -> web.Response:
        self._reader(request)
        if self.attribution is None:
            return _json({"error": "the attribution store is not available"}, status=503)
        try:
            tz = _zone(request.query.get("tz"))
            now = time.time()
            since = parse_since(request.query.get("since") or "7d", now, tz)
            until_s = request.query.get("until")
            until = parse_since(until_s, now, tz) if until_s else now
        except ValueError as err:
            return _json({"error": str(err)}, status=400)
        report = await self.attribution.report(since, until, tz)
        return _json(report)

    # --- files --------------------------------------------------------------------------

    async def static(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        if name not in self._files or name.endswith(".html"):
            raise web.HTTPNotFound()
        return self._page(name)

    def _page(self, name: str) -> web.Response:
        ctype = _TYPES[name[name.rfind(".") :]]
        return web.Response(
            body=self._files[name],
            content_type=ctype,
            charset="utf-8",
            headers={
                "Content-Security-Policy": _CSP,
                "Cache-Control": "no-store",
                "Referrer-Policy": "no-referrer",  # the page URL carries the token
                "X-Content-Type-Options": "nosniff",
            },
        )


def _read_static(name: str) -> bytes:
    return resources.files("telefum").joinpath("static", name).read_bytes()


class BadBody(ValueError):
    """A posted body that is not what the endpoint takes (HTTP 400, or 408 when it did not
    arrive in time; ``str()`` says why)."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


async def _read_body(request: web.Request) -> dict[str, Any]:
    """A JSON object or form fields; another content type is an empty body (the checks say
    what is missing). BadBody for JSON that is not an object, or not JSON at all: nested
    thousands deep, the decoder runs out of recursion (RecursionError); and for a body
    that does not arrive within BODY_TIMEOUT_S (a slow client holding a connection)."""
    try:
        async with asyncio.timeout(BODY_TIMEOUT_S):
            if request.content_type in (
                "application/x-www-form-urlencoded",
                "multipart/form-data",
            ):
                try:
                    form = await request.post()
                except ValueError:
                    raise BadBody("the form could not be read") from None
                return {k: v for k, v in form.items() if isinstance(v, str)}
            if request.content_type != "application/json":
                return {}
            raw = await request.read()
    except TimeoutError:
        raise BadBody(f"the body did not arrive within {BODY_TIMEOUT_S:g} s", 408) from None
    try:
        data = json.loads(raw)
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise BadBody("the body is not valid JSON") from None
    if not isinstance(data, dict):
        raise BadBody("the body must be a JSON object")
    return data


def _text_field(body: dict[str, Any], name: str) -> str | None:
    """A field that must be text (a JSON number is taken as its digits), or BadBody."""
    value = body.get(name)
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    raise BadBody(f"'{name}' must be a string, got {type(value).__name__}")


def _zone(name: str | None) -> tzinfo | None:
    if not name:
        return None
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(f"unknown time zone {name!r}") from None


def _json(data: Any, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(
        text=json.dumps(data, ensure_ascii=False),
        status=status,
        content_type="application/json",
        headers={"Cache-Control": "no-store", **(headers or {})},
    )


def _error(status: int, message: str) -> web.HTTPException:
    cls = {401: web.HTTPUnauthorized, 403: web.HTTPForbidden, 404: web.HTTPNotFound}[status]
    return cls(
        text=json.dumps({"error": message}),
        content_type="application/json",
        headers={"WWW-Authenticate": 'Bearer realm="telefum"'} if status == 401 else None,
    )
