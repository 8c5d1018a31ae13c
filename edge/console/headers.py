"""Security headers on every response, and the Host check of a console bound to loopback.

A plain ASGI middleware (not Starlette's BaseHTTPMiddleware, which buffers in a second task and
is known to misbehave with streaming responses): it only edits the response's start message.
"""

from __future__ import annotations

from starlette.types import ASGIApp, Message, Receive, Scope, Send

# Only this origin's scripts, styles and images; no framing, no plugins, no base-URI tricks.
CSP = "default-src 'self'; img-src 'self'; script-src 'self'; style-src 'self'; connect-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'; form-action 'self'"
_ALWAYS = [
    (b"content-security-policy", CSP.encode()),
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"no-referrer"),
    (b"cross-origin-resource-policy", b"same-origin"),
]
# The names a browser on this machine (or at the end of an SSH tunnel) uses for a loopback console.
LOOPBACK_NAMES = {"localhost", "127.0.0.1", "[::1]"}


class SecurityHeaders:
    def __init__(self, app: ASGIApp, loopback_only: bool):
        self.app = app
        self.loopback_only = loopback_only

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if self.loopback_only and not _loopback_host(scope):
            # DNS rebinding: a web page elsewhere whose name now resolves to 127.0.0.1 must not
            # read the console through the engineer's browser.
            await _refuse(send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                names = {name.lower() for name, _ in headers}
                headers += [(name, value) for name, value in _ALWAYS if name not in names]
                if b"cache-control" not in names:
                    # Live state by default: a page, a preview or /metrics from a cache is a lie.
                    headers.append((b"cache-control", b"no-store"))
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, send_with_headers)


def _loopback_host(scope: Scope) -> bool:
    host = next((value.decode("latin-1") for name, value in scope.get("headers", []) if name == b"host"), "")
    name = host.rsplit(":", 1)[0] if not host.endswith("]") else host
    return name.lower() in LOOPBACK_NAMES


async def _refuse(send: Send) -> None:
    body = b"This console only answers to localhost, 127.0.0.1 or [::1] (it listens on loopback).\n"
    await send({"type": "http.response.start", "status": 421, "headers": [(b"content-type", b"text/plain; charset=utf-8"), *_ALWAYS, (b"cache-control", b"no-store")]})
    await send({"type": "http.response.body", "body": body})
