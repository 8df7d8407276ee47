"""The webhook inbox: each case POSTed as signed JSON to a URL the city runs.

Headers: `X-Rightsdesk-Ref` (the case reference: the idempotency key, the same on every retry),
`X-Rightsdesk-Timestamp` (unix seconds) and `X-Rightsdesk-Signature: sha256=<hex>`, the HMAC-SHA256 (RFC 2104) of
`"<timestamp>.<raw body>"` with the shared secret. Signing the timestamp with the body lets a receiver refuse a
replayed old request; `verify` checks both, in constant time.

2xx is delivered; 5xx, 429, a timeout or a connection error may pass later (RFC 9110 §15.6, RFC 6585 §4); any other
status is a refusal that will not change by itself.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx

from adapters.inboxes.settings import Settings
from bot.ports import DeliveryError, Letter, Receipt

OWN_HEADERS = ("content-type", "x-rightsdesk-ref", "x-rightsdesk-timestamp", "x-rightsdesk-signature")
MIN_SECRET = 16  # characters; a short shared secret can be guessed offline from one signed request
_ADDRESS = re.compile(r"[^\s<>@\"']+@[^\s<>@\"']+")


def sign(secret: str, timestamp: str, body: bytes) -> str:
    """The signature header value for `body` sent at `timestamp`: `sha256=<hex HMAC>`."""
    mac = hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256)
    return "sha256=" + mac.hexdigest()


def verify(secret: str, timestamp: str, body: bytes, signature: str, now: float, tolerance: float = 300) -> bool:
    """Check a request's signature and that it was signed within `tolerance` seconds of `now` (no replays)."""
    try:
        sent = int(timestamp)
    except (TypeError, ValueError):
        return False
    if abs(now - sent) > tolerance:
        return False
    # compare_digest: the time taken must not tell an attacker how many leading characters were right.
    return hmac.compare_digest(sign(secret, str(sent), body).encode(), (signature or "").encode())


def excerpt(text: str, limit: int = 200) -> str:
    """A peer's answer for a log line: one line, cut short, e-mail addresses blanked (they must not reach logs)."""
    return _ADDRESS.sub("<address>", " ".join(text.split()))[:limit]


def place(url: str) -> str:
    """Host and port of `url` for log lines: never the path or a user:password part, which may hold secrets."""
    parts = urlsplit(url)
    return f"{parts.hostname}:{parts.port}" if parts.port else str(parts.hostname)


def failure(where: str, response: httpx.Response, detail: str = "") -> DeliveryError:
    """The DeliveryError for a non-2xx answer: 5xx and 429 may pass later, the rest will not."""
    status = response.status_code
    retryable = status >= 500 or status == 429
    if 300 <= status < 400:
        detail = f"a redirect to {response.headers.get('location', '?')}: put the final address in the settings"
    detail = detail or excerpt(response.text)
    message = f"{where} answered HTTP {status} {response.reason_phrase}" + (f": {detail}" if detail else "")
    return DeliveryError(message, retryable=retryable)


def unreachable(where: str, exc: httpx.HTTPError) -> DeliveryError:
    """The DeliveryError for a timeout or a connection that failed: both may pass later."""
    if isinstance(exc, httpx.TimeoutException):
        return DeliveryError(f"{where}: no answer in time ({type(exc).__name__})", retryable=True)
    return DeliveryError(f"{where}: cannot reach it ({type(exc).__name__}: {exc})", retryable=True)


class WebhookInbox:
    def __init__(self, url: str, secret: str, headers: Mapping[str, str] | None = None, timeout: float = 30.0,
                 clock: Callable[[], float] = time.time) -> None:
        self.url = url
        self.secret = secret
        self.headers = dict(headers or {})
        self.timeout = timeout
        self.clock = clock

    @classmethod
    def from_settings(cls, name: str, settings: Mapping[str, Any], data_dir: Path) -> WebhookInbox:
        """Check the settings of a webhook inbox and build it."""

        s = Settings(name, "webhook", settings, ("url", "secret", "headers", "timeout"))
        url = s.url("url", "https://intake.city.example/rightsdesk")
        secret = s.text("secret", "${WEBHOOK_SECRET}")
        if secret and len(secret) < MIN_SECRET:
            s.fail("secret", f"shorter than {MIN_SECRET} characters (a short secret can be guessed)",
                   "generate one: python -c 'import secrets; print(secrets.token_hex(32))'")
        headers = s.mapping("headers", "Authorization: Bearer ${INTAKE_TOKEN}")
        for key in headers:
            if key.lower() in OWN_HEADERS:
                s.fail("headers", f"{key} is set by rightsdesk (it is signed or describes the body)", "remove it")
        timeout = s.number("timeout", 30, 0.1, 600)
        s.done()
        return cls(url or "", secret, headers, timeout)

    async def deliver(self, letter: Letter) -> Receipt:
        body = json.dumps(letter.as_json(), ensure_ascii=False, separators=(",", ":")).encode()
        timestamp = str(int(self.clock()))
        headers = {
            **self.headers,
            "Content-Type": "application/json",
            "X-Rightsdesk-Ref": letter.ref,
            "X-Rightsdesk-Timestamp": timestamp,
            "X-Rightsdesk-Signature": sign(self.secret, timestamp, body),
        }
        where = f"webhook {place(self.url)}"
        try:
            async with httpx.AsyncClient(timeout=self.timeout) as client:
                response = await client.post(self.url, content=body, headers=headers)
        except httpx.HTTPError as exc:
            raise unreachable(where, exc) from exc
        if not response.is_success:
            raise failure(where, response)
        return Receipt(letter.ref, f"{where} answered HTTP {response.status_code}")
