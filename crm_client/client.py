"""The async TelefUM client: find, addcont, addevent, and the card/search links.

    async with TelefumClient("https://crm.example.com/rest", timeout_s=10) as crm:
        found = await crm.find("+79161234567", creds)
        cid = await crm.add_contact("+79161234567", "Иван", "contact", "+74951234567", creds)
        idev = await crm.add_event(cid, "contact", "Входящий звонок", "Длительность 3:54", creds)

Every failure is a :class:`~crm_client.errors.CrmError`: a
:class:`~crm_client.errors.Transient` one when a retry can help (its ``may_have_acted``
says whether the CRM may already have acted on the request); nothing else escapes (bar
cancellation). ``find`` and ``addcont`` are GET requests, ``addevent`` a form POST, as the
protocol's examples show. Values are percent-encoded in full (``+`` as ``%2B``, space as
``%20``), so a server that decodes the query as a form does not turn ``+7901...`` into
`` 7901...``.

Credentials are per call, not per client: the CRM records the user whose credentials came
with a request as the author, so the worker passes each agent's own.

Redirects are not followed (a POST would silently become a GET without its body); the
error names the target so crm.url can be fixed.

A write (``addcont``, ``addevent``) is sent once: aiohttp's session re-sends a request with
an idempotent method (GET, as ``addcont`` is) once, on any connection, when the connection
drops before the answer, and a CRM that stored the contact and then lost the connection
got it twice. :func:`_send_once` turns that off for writes; the worker decides what
happens next (it looks the contact up before it creates it again).

Answers larger than :data:`PARSE_INLINE_BYTES` are read in a worker thread: parsing is
linear, but a 4 MiB answer still takes seconds of CPU, and the event loop also reads the
AMI stream and serves ``/health`` and ``/originate``.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Callable, Sequence
from types import TracebackType
from typing import Any
from urllib.parse import quote, urlsplit, urlunsplit

import aiohttp
from yarl import URL

from . import parse
from .errors import CrmError, PermanentCrmError, Transient, TransientCrmError
from .redact import redact_text, redact_url
from .types import Created, Credentials, FindResult

log = logging.getLogger("crm_client")

# (op, outcome, seconds): op is "find" | "addcont" | "addevent", outcome "ok" | "transient"
# | "permanent". The service feeds Prometheus histograms from it; crm_client stays free of it.
LatencyHook = Callable[[str, str, float], None]

MAX_BODY_BYTES = 4 * 1024 * 1024  # a find answer with thousands of items is still far below
PARSE_INLINE_BYTES = 64 * 1024  # larger answers are parsed off the event loop
USER_AGENT = "telefum-bridge"
WRITES = frozenset({"addcont", "addevent"})  # never re-sent by a library (see _send_once)


def encode_params(pairs: Sequence[tuple[str, str]]) -> str:
    """``k=v&...`` with everything but unreserved characters percent-encoded (UTF-8)."""
    return "&".join(f"{quote(k, safe='')}={quote(v, safe='')}" for k, v in pairs)


def site_base(rest_url: str) -> str:
    """``https://crm.example.com/rest`` -> ``https://crm.example.com/``: where /card and
    /search live (the /rest path's last segment dropped, its query too)."""
    parts = urlsplit(rest_url)
    path = parts.path.rsplit("/", 1)[0] + "/"
    return urlunsplit((parts.scheme, parts.netloc, path, "", ""))


class TelefumClient:
    def __init__(
        self,
        rest_url: str,
        *,
        timeout_s: float = 10.0,
        session: aiohttp.ClientSession | None = None,
        on_request: LatencyHook | None = None,
        max_body_bytes: int = MAX_BODY_BYTES,
    ) -> None:
        parts = urlsplit(rest_url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"not an http(s) URL: {redact_url(rest_url)!r}")
        self.rest_url = rest_url
        self._wire_url = str(URL(rest_url))  # non-ASCII host or path percent-encoded once
        self._query_sep = "&" if urlsplit(self._wire_url).query else "?"  # for GET fields
        self.base_url = site_base(rest_url)
        self.timeout_s = timeout_s
        self.on_request = on_request
        self.max_body_bytes = max_body_bytes
        self._session = session
        self._own_session = session is None
        self._warned: set[tuple[str, str]] = set()

    def __repr__(self) -> str:
        return f"TelefumClient({redact_url(self.rest_url)!r}, timeout_s={self.timeout_s})"

    # --- the protocol -----------------------------------------------------------------

    async def find(self, phone: str, creds: Credentials) -> FindResult:
        """Contacts with this phone (zero, one or many), as the CRM orders them."""
        params = [("typereq", "find"), ("phone", phone)]
        result: FindResult = await self._call("find", "GET", params, creds, parse.parse_find)
        self._log_warnings("find", result.warnings)
        return result

    async def add_contact(
        self, phone: str, name: str, typecont: str, x_pstn: str | None, creds: Credentials
    ) -> str:
        """Create a contact (author: ``creds``' user); its new id. ``x_pstn`` is the source:
        the tracking number the caller dialled (omitted when None or empty)."""
        params = [("typereq", "addcont"), ("typecont", typecont), ("phone", phone), ("name", name)]
        if x_pstn:
            params.append(("x_pstn", x_pstn))
        created: Created = await self._call(
            "addcont", "GET", params, creds, parse.parse_add_contact
        )
        self._log_warnings("addcont", created.warnings)
        return created.id

    async def add_event(
        self, contact_id: str, typecont: str, subj: str, desc: str, creds: Credentials
    ) -> str:
        """Log an event (a call) on a contact (author: ``creds``' user); its ``idev``."""
        params = [
            ("typereq", "addevent"),
            ("id", contact_id),
            ("typecont", typecont),
            ("subj", subj),
            ("desc", desc),
        ]
        created: Created = await self._call(
            "addevent", "POST", params, creds, parse.parse_add_event
        )
        self._log_warnings("addevent", created.warnings)
        return created.id

    def card_url(self, id: str, typecont: str) -> str:
        """The contact's card, for a browser (point 5)."""
        return f"{self.base_url}card?{encode_params([('id', id), ('typecont', typecont)])}"

    def search_url(self, phone: str) -> str:
        """The CRM's search by phone, for a browser (point 6)."""
        return f"{self.base_url}search?{encode_params([('phone', phone)])}"

    # --- lifecycle --------------------------------------------------------------------

    async def close(self) -> None:
        if self._own_session and self._session is not None:
            await self._session.close()
            self._session = None

    async def __aenter__(self) -> TelefumClient:
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    # --- plumbing ---------------------------------------------------------------------

    def _http(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            if not self._own_session:
                raise PermanentCrmError(
                    "the aiohttp session given to the client is closed", kind="config"
                )
            self._session = aiohttp.ClientSession(headers={"User-Agent": USER_AGENT})
        return self._session

    async def request(
        self, op: str, method: str, params: list[tuple[str, str]], creds: Credentials
    ) -> tuple[bytes, str | None]:
        """One TelefUM request with exactly these fields (plus login and password): the 2xx
        body and its Content-Type, unparsed, or a CrmError. For conformance checks, which
        must send what the typed calls never would (a missing field, a wrong password)."""
        raw: tuple[bytes, str | None] = await self._call(op, method, params, creds, _raw)
        return raw

    async def _call(
        self,
        op: str,
        method: str,
        params: list[tuple[str, str]],
        creds: Credentials,
        parser: Callable[[bytes, str | None], Any],
    ) -> Any:
        """Send one request and parse its 2xx answer, timed for the latency hook (parsing
        included: an unreadable answer is a failed request); a CrmError otherwise."""
        t0 = time.monotonic()
        outcome = "ok"
        try:
            body, ctype = await self._send(op, method, params, creds)
            try:
                return await _off_loop_if_large(body, functools.partial(parser, body, ctype))
            except CrmError as err:
                raise err.at(op, self.rest_url) from None
            except Exception as err:  # a parser bug must still come out classified
                log.exception("crm %s: could not read the answer", op)
                raise TransientCrmError(
                    f"could not read the answer: {type(err).__name__}",
                    kind="bad_response",
                    may_have_acted=True,
                    op=op,
                    url=self.rest_url,
                ) from None
        except CrmError as err:
            outcome = "transient" if isinstance(err, Transient) else "permanent"
            raise
        except BaseException:
            outcome = "transient"  # cancelled (e.g. shutdown): not the CRM's fault
            raise
        finally:
            elapsed = time.monotonic() - t0
            if self.on_request is not None:
                try:
                    self.on_request(op, outcome, elapsed)
                except Exception:  # metrics never fail a request
                    log.debug("latency hook failed", exc_info=True)

    async def _send(
        self, op: str, method: str, params: list[tuple[str, str]], creds: Credentials
    ) -> tuple[bytes, str | None]:
        password = creds.password.get_secret_value()
        query = encode_params([*params, ("login", creds.login), ("password", password)])
        if method == "GET":
            url, data = f"{self._wire_url}{self._query_sep}{query}", None
        else:
            url, data = self._wire_url, query.encode("ascii")
        timeout = aiohttp.ClientTimeout(total=self.timeout_s)
        headers = {"Content-Type": "application/x-www-form-urlencoded"} if data else None
        t0 = time.monotonic()
        try:
            async with self._http().request(
                method,
                URL(url, encoded=True),
                data=data,
                headers=headers,
                timeout=timeout,
                allow_redirects=False,
                middlewares=(_send_once,) if op in WRITES else None,
            ) as resp:
                body = await self._read(resp)
                status, ctype = resp.status, resp.headers.get("Content-Type")
                retry_after = resp.headers.get("Retry-After")
                location = resp.headers.get("Location")
        except CrmError as err:
            raise err.at(op, url) from None
        except TimeoutError:  # asyncio's and aiohttp's timeouts are both TimeoutError
            # may have acted: the total timeout does not tell whether it hit before sending
            raise TransientCrmError(
                f"no answer within {self.timeout_s:g} s",
                kind="timeout",
                may_have_acted=True,
                op=op,
                url=url,
            ) from None
        except aiohttp.InvalidURL as err:
            raise PermanentCrmError(
                f"cannot build the request: {type(err).__name__}", kind="config", op=op, url=url
            ) from None
        except aiohttp.ClientPayloadError as err:
            raise TransientCrmError(
                f"answer cut off: {_describe(err)}",
                kind="network",
                may_have_acted=True,
                op=op,
                url=url,
            ) from None
        except aiohttp.ClientConnectorError as err:  # refused, DNS, TLS: nothing was sent
            raise TransientCrmError(
                _describe(err), kind="network", may_have_acted=False, op=op, url=url
            ) from None
        except _SentOnce as err:  # the connection dropped after the write was sent
            raise TransientCrmError(
                _describe(err.dropped), kind="network", may_have_acted=True, op=op, url=url
            ) from None
        except (aiohttp.ClientError, OSError) as err:  # reset or closed once connected
            raise TransientCrmError(
                _describe(err), kind="network", may_have_acted=True, op=op, url=url
            ) from None
        if log.isEnabledFor(logging.DEBUG):  # redacting the URL is not free: only when shown
            log.debug(
                "crm %s %s %s -> HTTP %s, %d bytes in %.3f s",
                op,
                method,
                redact_url(url),
                status,
                len(body),
                time.monotonic() - t0,
            )
        problem = None
        if not 200 <= status < 300:
            problem = await _off_loop_if_large(
                body,
                functools.partial(
                    parse.error_for_status,
                    status,
                    body,
                    ctype,
                    retry_after=retry_after,
                    location=location,
                ),
            )
        if problem is not None:
            raise problem.at(op, url)
        return body, ctype

    async def _read(self, resp: aiohttp.ClientResponse) -> bytes:
        chunks: list[bytes] = []
        size = 0
        async for chunk in resp.content.iter_chunked(64 * 1024):
            size += len(chunk)
            if size > self.max_body_bytes:
                raise TransientCrmError(
                    f"answer larger than {self.max_body_bytes} bytes",
                    kind="bad_response",
                    may_have_acted=True,
                    status=resp.status,
                )
            chunks.append(chunk)
        return b"".join(chunks)

    def _log_warnings(self, op: str, warnings: Sequence[str]) -> None:
        """Each distinct oddity once at INFO (a CRM that always omits <total> is not news
        on every call), then at DEBUG."""
        for w in warnings:
            first = (op, w) not in self._warned
            if first and len(self._warned) < 1000:
                self._warned.add((op, w))
            log.log(
                logging.INFO if first else logging.DEBUG,
                "crm %s at %s: %s",
                op,
                redact_url(self.rest_url),
                w,
            )


async def _off_loop_if_large(body: bytes, read: Callable[[], Any]) -> Any:
    """``read()``, in a worker thread when ``body`` is large (see the module doc)."""
    if len(body) <= PARSE_INLINE_BYTES:
        return read()
    return await asyncio.to_thread(read)


def _raw(body: bytes, ctype: str | None) -> tuple[bytes, str | None]:
    return body, ctype


class _SentOnce(aiohttp.ClientError):
    """The connection of a write dropped before its answer (``dropped`` says how). Not a
    ``ClientOSError`` nor a ``ServerDisconnectedError``, which the session re-sends."""

    def __init__(self, dropped: BaseException) -> None:
        super().__init__(str(dropped))
        self.dropped = dropped


async def _send_once(
    request: aiohttp.ClientRequest, handler: aiohttp.ClientHandlerType
) -> aiohttp.ClientResponse:
    """aiohttp client middleware: a write is never re-sent by the session. aiohttp 3.14's
    ``ClientSession._request`` re-sends an idempotent request once on ``ClientOSError`` or
    ``ServerDisconnectedError`` out of its handler chain (this middleware is in it), fresh
    connection or kept-alive; any other ``ClientError`` it raises as it is. A connection
    that could not be opened (``ClientConnectorError``: nothing was sent) passes unchanged.
    Pinned by tests/test_crm_client_failures.py over real sockets."""
    try:
        return await handler(request)
    except aiohttp.ClientConnectorError:
        raise
    except (aiohttp.ClientOSError, aiohttp.ServerDisconnectedError) as err:
        raise _SentOnce(err) from err


def _describe(err: BaseException) -> str:
    text = str(err) or type(err).__name__
    return redact_text(f"{type(err).__name__}: {text}")


__all__ = [
    "LatencyHook",
    "TelefumClient",
    "encode_params",
    "site_base",
]
