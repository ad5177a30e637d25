"""Only this service's own page may drive it: Host names, cross-origin writes, browser headers.

A service on 127.0.0.1 is still reachable by every page that the user's browser opens. Three
checks keep those pages out, before a route reads a byte of the body:

- **Host.** A request is answered only when its Host header names this server: the address it is
  bound to, the loopback names (127.0.0.1, localhost, [::1]) when it is bound to loopback, and,
  when it is bound to every interface (0.0.0.0 or ::), this machine's names and the address the
  connection came in on; plus the names given with `--allowed-host`. Any port. DNS rebinding,
  which lets a page at attacker.example read the answers, needs a Host name that is none of
  these: it gets 400.
- **Origin.** A POST (or any method that is not GET, HEAD or OPTIONS) whose `Origin` is not this
  server's own origin, or whose `Sec-Fetch-Site` is not `same-origin` or `none`, gets 403. A
  cross-origin `multipart/form-data` POST needs no preflight, so the browser would send it;
  plain clients (curl, httpx, scripts) send neither header and are served.
- **Headers.** Every response carries a Content-Security-Policy that allows only this server's
  own scripts, styles, images and fetches (plus the `data:`/`blob:` images the page makes), no
  framing (`frame-ancestors 'none'`), `X-Content-Type-Options: nosniff`, no referrer, and
  same-origin resource and opener policies.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import socket
import uuid
from collections.abc import Iterable
from urllib.parse import urlsplit

from starlette.datastructures import Headers, MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

LOOPBACK_NAMES = frozenset({"127.0.0.1", "localhost", "::1"})
WILDCARD_ADDRESSES = frozenset({"0.0.0.0", "::", ""})
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
SAME_ORIGIN_FETCHES = frozenset({"same-origin", "none"})
DEFAULT_PORTS = {"http": 80, "https": 443, "ws": 80, "wss": 443}
CONTENT_SECURITY_POLICY = "; ".join(
    [
        "default-src 'none'",
        "script-src 'self'",
        "style-src 'self'",
        "img-src 'self' data: blob:",
        "connect-src 'self'",
        "base-uri 'none'",
        "form-action 'none'",
        "frame-ancestors 'none'",
    ]
)
SECURITY_HEADERS = {
    "content-security-policy": CONTENT_SECURITY_POLICY,
    "x-content-type-options": "nosniff",
    "x-frame-options": "DENY",
    "referrer-policy": "no-referrer",
    "cross-origin-resource-policy": "same-origin",
    "cross-origin-opener-policy": "same-origin",
}
log = logging.getLogger("ptxseg.serving.request_guard")


def split_host(value: str) -> tuple[str, int | None] | None:
    """(lower-case name, port or None) of a Host header value; None when it is malformed.

    `[::1]:8000` -> ("::1", 8000); `LocalHost.` -> ("localhost", None)."""
    value = value.strip()
    if not value or any(c in value for c in "/@?#\\ \t"):
        return None
    try:
        parts = urlsplit(f"//{value}")
        name, port = parts.hostname, parts.port
    except ValueError:  # a port that is not a number, an unclosed bracket
        return None
    if not name:
        return None
    return name.rstrip("."), port


def normalise_name(value: str) -> str:
    """A host name or address as the checks compare it; ValueError when it is not one."""
    parsed = split_host(value if not _is_bare_ipv6(value) else f"[{value}]")
    if parsed is None:
        raise ValueError(
            f"{value!r} is not a host name or address: expected a name such as "
            "ptxseg.example.org or an address such as 192.168.1.5 (no scheme, no path)"
        )
    return parsed[0]


def _is_bare_ipv6(value: str) -> bool:
    try:
        return ipaddress.ip_address(value).version == 6
    except ValueError:
        return False


def is_loopback(host: str) -> bool:
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def is_wildcard(host: str) -> bool:
    return host in WILDCARD_ADDRESSES


class HostRule:
    """The Host names a server bound to `bind` answers (see the module docstring)."""

    def __init__(self, bind: str, extra: Iterable[str] = ()) -> None:
        self.any_interface = is_wildcard(bind)
        names = {normalise_name(name) for name in extra}
        if self.any_interface or is_loopback(bind):
            names |= LOOPBACK_NAMES
        if self.any_interface:
            names |= {n.lower() for n in (socket.gethostname(), socket.getfqdn()) if n}
        else:
            names.add(normalise_name(bind))
        self.names = frozenset(names)

    def describe(self) -> str:
        """The names, as a refusal shows them (a page may read it: no machine names)."""
        shown = sorted(f"[{n}]" if ":" in n else n for n in self.names - self._machine_names())
        if self.any_interface:
            shown.append("this machine's names and addresses")
        return ", ".join(shown)

    def _machine_names(self) -> set[str]:
        if not self.any_interface:
            return set()
        return {n.lower() for n in (socket.gethostname(), socket.getfqdn()) if n} - LOOPBACK_NAMES

    def allows(self, name: str, scope: Scope) -> bool:
        if name in self.names:
            return True
        server = scope.get("server")
        # bound everywhere: the address this connection came in on is this server's own
        return self.any_interface and bool(server) and name == str(server[0]).lower()


def _refusal(status: int, code: str, message: str) -> tuple[int, bytes, str]:
    request_id = uuid.uuid4().hex[:12]
    body = {"detail": message, "code": code, "request_id": request_id}
    return status, json.dumps(body).encode(), request_id


class LocalOnly:
    """ASGI middleware: the Host and Origin checks, and the security headers on every answer."""

    def __init__(self, app: ASGIApp, rule: HostRule) -> None:
        self.app = app
        self.rule = rule

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        refused = self.check(scope)
        if refused is not None:
            status, body, request_id = refused
            await _send_json(send, status, body, request_id)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                for key, value in SECURITY_HEADERS.items():
                    headers[key] = value
            await send(message)

        await self.app(scope, receive, send_with_headers)

    def check(self, scope: Scope) -> tuple[int, bytes, str] | None:
        """None when the request may go on, else (status, JSON body, request id)."""
        headers = Headers(scope=scope)
        host_value = headers.get("host", "")
        host = split_host(host_value)
        if host is None or not self.rule.allows(host[0], scope):
            shown = host_value[:80]
            refused = _refusal(
                400,
                "host_not_allowed",
                f"Host {shown!r} is not a name of this server. It answers only to "
                f"{self.rule.describe()}; open it under one of those names, or "
                "ask the administrator to add the name with --allowed-host.",
            )
            log.warning("request %s status=400 code=host_not_allowed host=%r", refused[2], shown)
            return refused
        if scope.get("method", "GET") in SAFE_METHODS:
            return None
        fetch_site = headers.get("sec-fetch-site")
        origin = headers.get("origin")
        if fetch_site is not None and fetch_site.lower() not in SAME_ORIGIN_FETCHES:
            why = f"Sec-Fetch-Site is {fetch_site[:20]!r}"
        elif origin is not None and not _same_origin(origin, host, scope):
            why = f"Origin {origin[:80]!r} is not this server"
        else:
            return None
        refused = _refusal(
            403,
            "cross_origin",
            f"Refused: this request comes from another web page ({why}). Only this server's own "
            "page, or a client outside the browser, may send images here.",
        )
        log.warning("request %s status=403 code=cross_origin %s", refused[2], why)
        return refused


def _same_origin(origin: str, host: tuple[str, int | None], scope: Scope) -> bool:
    """Whether an Origin header names the scheme, host and port that this request was sent to."""
    try:
        parts = urlsplit(origin.strip())
        origin_port = parts.port
    except ValueError:
        return False
    if parts.scheme not in ("http", "https") or not parts.hostname or parts.path:
        return False  # "null" (sandboxed frames, file: pages) included
    scheme = scope.get("scheme", "http")
    if parts.scheme != scheme:
        return False
    name, port = host
    default = DEFAULT_PORTS.get(scheme)
    return (parts.hostname.rstrip("."), origin_port or default) == (name, port or default)


async def _send_json(send: Send, status: int, body: bytes, request_id: str) -> None:
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        (b"x-request-id", request_id.encode()),
    ]
    headers += [(k.encode(), v.encode()) for k, v in SECURITY_HEADERS.items()]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
