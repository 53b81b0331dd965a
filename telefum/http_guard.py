"""The HTTP side under a hostile network: which Host it answers, how many connections it
holds, and for how long a connection may sit without a request.

- **Host allow-list** (DNS rebinding: a web page whose name resolves to this machine would
  otherwise read ``/health``, ``/metrics`` and the rest from the victim's browser): a
  request is answered when its ``Host`` is ``localhost``, a loopback address, the
  ``[http] listen`` address (any IP address when that is a wildcard: an address cannot be
  rebound, only a name can), or a name in ``[http] allowed_hosts``; else 421. A request
  without ``Host`` (no browser sends one) is answered.
- **Connections**: at most ``[http] max_connections`` open. A new connection beyond it
  closes the oldest idle one (waiting for a request head, or kept alive between requests)
  to make room, so slow clients cannot lock out a fresh one such as a health check; when
  every open connection is inside a request (agent pages' live feeds), the new one gets a
  503 and is closed. (Descriptors in use peak near the cap plus the connections the kernel
  hands over in one turn of the event loop: the listen backlog, 100.)
- **Timeouts**: a connection that has not sent its first whole request head within
  :data:`HEADER_TIMEOUT_S` is closed, however slowly it trickles bytes; one idle between
  requests for :data:`IDLE_TIMEOUT_S` too (aiohttp's keep-alive timeout). A request body
  must arrive within :data:`BODY_TIMEOUT_S` (``telefum.agent_routes``).

Every refusal and closing counts in ``telefum.limits`` (metric and rate-limited log).
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
from collections.abc import Awaitable, Callable, Collection
from typing import Any

from aiohttp import hdrs, web
from aiohttp.web_protocol import RequestHandler

from telefum.limits import Limits

HEADER_TIMEOUT_S = 10.0
IDLE_TIMEOUT_S = 30.0
BODY_TIMEOUT_S = 10.0
WILDCARD_HOSTS = frozenset({"0.0.0.0", "::", ""})

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


# --- which Host a request may name ----------------------------------------------------------


def host_name(header: str) -> str | None:
    """The host of a ``Host`` header: lower case, without port, brackets or final dot;
    None when it is not one."""
    value = header.strip().lower()
    if value.startswith("["):  # [::1]:8088
        value, sep, rest = value[1:].partition("]")
        if not sep or (rest and not (rest.startswith(":") and _is_port(rest[1:]))):
            return None
    elif value.count(":") == 1:  # host:port (a bare IPv6 address has more colons)
        value, _, port = value.partition(":")
        if not _is_port(port):
            return None
    return value.rstrip(".") or None


def _is_port(text: str) -> bool:
    return text.isascii() and text.isdigit()


def host_allowed(header: str | None, listen_host: str, allowed: Collection[str] = ()) -> bool:
    """Whether a request naming ``header`` as its Host is for this service (module doc)."""
    if header is None:
        return True
    name = host_name(header)
    if name is None:
        return False
    if name == "localhost" or name in allowed or name == listen_host.lower():
        return True
    try:
        address = ipaddress.ip_address(name)
    except ValueError:
        return False
    return address.is_loopback or listen_host in WILDCARD_HOSTS


def host_check(listen_host: str, allowed_hosts: Collection[str], limits: Limits) -> Any:
    """The middleware that answers 421 to a request for another Host."""
    allowed = frozenset(h.strip().lower().rstrip(".") for h in allowed_hosts)

    @web.middleware
    async def check_host(request: web.Request, handler: Handler) -> web.StreamResponse:
        host = request.headers.get(hdrs.HOST)
        if host_allowed(host, listen_host, allowed):
            return await handler(request)
        limits.hit(
            "http_host",
            f"refused a request for Host {host!r}: not a name of this "
            "service (add it to [http] allowed_hosts if it is)",
        )
        return web.Response(
            text=json.dumps(
                {
                    "error": f"this service does not answer for Host {host!r}; "
                    "see [http] allowed_hosts"
                }
            ),
            status=421,
            content_type="application/json",
            headers={"Cache-Control": "no-store"},
        )

    return check_host


# --- how many connections, for how long ---------------------------------------------------


class _Refused(asyncio.Protocol):
    """A connection beyond the cap: one 503, then closed."""

    BODY = b'{"error": "too many connections; try again"}'
    ANSWER = (
        b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n"
        b"Retry-After: 1\r\nConnection: close\r\nContent-Length: %d\r\n\r\n%s" % (len(BODY), BODY)
    )

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.WriteTransport)
        transport.write(self.ANSWER)
        transport.close()


class HttpServer:
    """``app`` served on ``host:port`` with the connection cap and timeouts of the module
    doc. ``await start()``, read ``port``, ``await cleanup()`` to stop."""

    def __init__(
        self,
        app: web.Application,
        host: str,
        port: int,
        *,
        limits: Limits,
        max_connections: int = 512,
        header_timeout_s: float = HEADER_TIMEOUT_S,
        idle_timeout_s: float = IDLE_TIMEOUT_S,
    ) -> None:
        self.host, self._port = host, port
        self.limits = limits
        self.max_connections = max_connections
        self.header_timeout_s = header_timeout_s
        app.middlewares.insert(0, self._in_request)
        self._runner = web.AppRunner(
            app,
            access_log=None,
            handle_signals=False,
            shutdown_timeout=2.0,
            keepalive_timeout=idle_timeout_s,
        )
        self._listening: asyncio.Server | None = None
        self._busy: dict[RequestHandler, int] = {}  # connections inside a request
        self._asked: set[RequestHandler] = set()  # sent a request head (until their timer)
        # accepted in this turn of the event loop: aiohttp counts them from the next one on
        self._fresh = 0

    async def start(self) -> None:
        await self._runner.setup()
        loop = asyncio.get_running_loop()
        try:
            self._listening = await loop.create_server(self._accept, self.host, self._port)
        except BaseException:
            await self._runner.cleanup()
            raise

    @property
    def port(self) -> int:
        """The port bound (``listen = "127.0.0.1:0"`` in tests)."""
        if self._listening is None or not self._listening.sockets:
            raise RuntimeError("not listening")
        return int(self._listening.sockets[0].getsockname()[1])

    @property
    def addresses(self) -> list[Any]:
        """Every address bound (``socket.getsockname()`` of each listening socket)."""
        sockets = self._listening.sockets if self._listening is not None else ()
        return [s.getsockname() for s in sockets]

    @property
    def connections(self) -> int:
        server = self._runner.server
        return len(server.connections) if server is not None else 0

    async def cleanup(self) -> None:
        """Stop accepting, then close every connection (aiohttp's graceful shutdown)."""
        if self._listening is not None:
            self._listening.close()
            self._listening = None
        await self._runner.cleanup()

    # -- the protocol factory the listening socket uses --------------------------------------

    def _accept(self) -> asyncio.Protocol:
        server = self._runner.server
        assert server is not None
        open_now = server.connections  # oldest first
        if len(open_now) + self._fresh >= self.max_connections and not self._close_oldest_idle(
            open_now
        ):
            self.limits.hit(
                "http_connections",
                f"{len(server.connections)} connections open, "
                "all inside a request: refused one ([http] max_connections)",
            )
            return _Refused()
        handler = server()
        loop = asyncio.get_running_loop()
        if not self._fresh:  # runs before this turn's connections reach aiohttp's count
            loop.call_soon(self._turn_over)
        self._fresh += 1
        loop.call_later(self.header_timeout_s, self._deadline, handler)
        return handler

    def _turn_over(self) -> None:
        self._fresh = 0

    def _close_oldest_idle(self, open_now: list[RequestHandler]) -> bool:
        for handler in open_now:
            # transport None: closed already, gone from the count on the next turn
            if handler not in self._busy and handler.transport is not None:
                handler.force_close()
                self.limits.hit(
                    "http_idle_closed",
                    f"closed the oldest idle connection of "
                    f"{len(open_now)} to take a new one ([http] max_connections)",
                )
                return True
        return False

    def _deadline(self, handler: RequestHandler) -> None:
        if handler in self._asked:
            self._asked.discard(handler)
        elif handler.transport is not None:
            handler.force_close()
            self.limits.hit(
                "http_header_timeout",
                "closed a connection that sent no whole "
                f"request within {self.header_timeout_s:g} s",
            )

    @web.middleware
    async def _in_request(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        conn = request.protocol
        self._asked.add(conn)
        self._busy[conn] = self._busy.get(conn, 0) + 1
        try:
            return await handler(request)
        finally:
            left = self._busy.pop(conn) - 1
            if left:
                self._busy[conn] = left
