"""The Open311 inbox: each case as a service request to the city's GeoReport v2 endpoint.

GeoReport v2 §POST Service Request (https://wiki.open311.org/GeoReport_v2): `POST {endpoint}/requests.json`,
form-encoded, with `api_key`, `service_code`, optionally `jurisdiction_id`, the `description` (at most 4,000
characters), the requester's `email`, `first_name` and `last_name`, and service attributes as `attribute[code]`.
The case reference travels as `attribute[rightsdesk_ref]`, so the city can recognise a retried duplicate.

The answer is a list with one object holding `service_request_id`, or a `token` when the id is assigned later
(§GET service_request_id from a token). Errors come as a list of `{code, description}` with an HTTP 4xx (the
request is refused for good) or 5xx (the service may recover).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import httpx

from adapters.inboxes.settings import Settings
from adapters.inboxes.webhook import excerpt, failure, place, unreachable
from bot.ports import DeliveryError, Letter, Receipt

MAX_DESCRIPTION = 4000  # GeoReport v2 §POST Service Request: "free form text limited to 4,000 characters"
CUT = "\n[…]"


def form(letter: Letter, api_key: str, service_code: str, jurisdiction_id: str | None) -> dict[str, str]:
    """The form fields of one service request: the letter, the requester if they gave it, and the reference."""
    fields = {"api_key": api_key, "service_code": service_code}
    if jurisdiction_id:
        fields["jurisdiction_id"] = jurisdiction_id
    description = letter.body
    if len(description) > MAX_DESCRIPTION:
        description = description[:MAX_DESCRIPTION - len(CUT)] + CUT  # the full letter is on the case
    fields["description"] = description
    email = str(letter.answers.get("email") or "").strip()
    if email:
        fields["email"] = email
    names = str(letter.answers.get("full_name") or "").split(maxsplit=1)
    if names:
        fields["first_name"] = names[0]
    if len(names) > 1:
        fields["last_name"] = names[1]
    fields["attribute[rightsdesk_ref]"] = letter.ref
    return fields


def receipt(where: str, response: httpx.Response) -> Receipt:
    """Read the answer to a created request: `service_request_id`, else `token` (GeoReport v2 §POST Response)."""
    try:
        body = response.json()
    except (json.JSONDecodeError, UnicodeDecodeError):
        body = None
    first = body[0] if isinstance(body, list) and body else body
    if isinstance(first, Mapping):
        notice = str(first.get("service_notice") or "")
        detail = f"{where} answered HTTP {response.status_code}" + (f": {excerpt(notice)}" if notice else "")
        if first.get("service_request_id") not in (None, ""):
            return Receipt(str(first["service_request_id"]), detail)
        if first.get("token") not in (None, ""):
            return Receipt(f"token:{first['token']}", detail)
    # The request may have been created: a retry carries the same attribute[rightsdesk_ref] for the city to match.
    raise DeliveryError(f"{where} answered HTTP {response.status_code} without a service_request_id or token "
                        f"(GeoReport v2 §POST Service Request): {excerpt(response.text) or 'an empty body'}",
                        retryable=True)


def errors(response: httpx.Response) -> str:
    """The descriptions of a GeoReport error list (`[{code, description}]`), or "" when the body is not one."""
    try:
        body = response.json()
    except (json.JSONDecodeError, UnicodeDecodeError):
        return ""
    items = body if isinstance(body, list) else [body]
    found = [f"{item.get('description')} (code {item.get('code')})" for item in items
             if isinstance(item, Mapping) and item.get("description")]
    return excerpt("; ".join(found), 300)


class Open311Inbox:
    def __init__(self, endpoint: str, api_key: str, service_code: str, jurisdiction_id: str | None = None,
                 timeout: float = 30.0) -> None:
        self.endpoint = endpoint.rstrip("/")
        self.api_key = api_key
        self.service_code = service_code
        self.jurisdiction_id = jurisdiction_id
        self.timeout = timeout

    @classmethod
    def from_settings(cls, name: str, settings: Mapping[str, Any], data_dir: Path) -> Open311Inbox:
        """Check the settings of an Open311 inbox and build it."""

        s = Settings(name, "open311", settings, ("endpoint", "api_key", "service_code", "jurisdiction_id", "timeout"))
        endpoint = s.url("endpoint", "https://311.city.example/open311/v2")
        if endpoint and endpoint.rstrip("/").endswith((".json", ".xml")):
            s.fail("endpoint", "is a resource, not the service's base URL", "leave out /requests.json at the end")
        api_key = s.text("api_key", "${OPEN311_API_KEY}")
        service_code = s.text("service_code", "DIGITAL-RIGHTS")
        jurisdiction_id = s.optional("jurisdiction_id", "city.example")
        timeout = s.number("timeout", 30, 0.1, 600)
        s.done()
        return cls(endpoint or "", api_key, service_code, jurisdiction_id, timeout)

    async def deliver(self, letter: Letter) -> Receipt:
        where = f"Open311 {place(self.endpoint)}"
        fields = form(letter, self.api_key, self.service_code, self.jurisdiction_id)
        try:
            async with httpx.AsyncClient(timeout=self.timeout) as client:
                response = await client.post(f"{self.endpoint}/requests.json", data=fields,
                                             headers={"Accept": "application/json"})
        except httpx.HTTPError as exc:
            raise unreachable(where, exc) from exc
        if not response.is_success:
            raise failure(where, response, errors(response))
        return receipt(where, response)
