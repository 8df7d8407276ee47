"""The city inboxes against real peers on 127.0.0.1: an SMTP server (aiosmtpd), HTTP servers for the webhook and
Open311, and the real outbox over a real SQLite store."""

from __future__ import annotations

import asyncio
import email
import json
import time
from datetime import UTC, date, datetime, timedelta
from email.message import EmailMessage
from email.policy import default as default_policy
from pathlib import Path
from urllib.parse import parse_qs

import pytest

from adapters.inboxes import registry
from adapters.inboxes.file import FileInbox as PlainFileInbox
from adapters.inboxes.open311 import MAX_DESCRIPTION, Open311Inbox
from adapters.inboxes.smtp import SmtpInbox
from adapters.inboxes.webhook import WebhookInbox, sign, verify
from bot.config import ConfigError
from bot.messages import Case, CaseFiled, Incoming, Outcome, State
from bot.outbox import Outbox
from bot.ports import DeliveryError, Letter, Receipt
from bot.store import Store

from .peers.http import HANG, Request, http_peer
from .peers.smtp import free_port, smtp_peer

REF = "AMS-DR-7K3QX"
AT = datetime(2026, 11, 25, 10, 0, tzinfo=UTC)
SECRET = "s3cret-for-tests-0123456789"
ANSWERS = {"email": "jane@example.org", "full_name": "Jane van der Berg", "concerns": "parking"}
LETTER = Letter(
    ref=REF, subject="Verzoek om inzage — Article 15 GDPR", body="Dear city,\n\nI ask for a copy of my data.\n",
    lang="en", flow="data-request", city="amsterdam", inbox="privacy", filed_at="2026-11-25T10:00:00+00:00",
    deadline="2026-12-28", answers=ANSWERS,
)


@pytest.fixture(autouse=True)
def no_proxy(monkeypatch):
    # httpx honours HTTP(S)_PROXY even for 127.0.0.1: the peers are on this machine.
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")


def deliver(inbox, letter: Letter = LETTER) -> Receipt:
    return asyncio.run(inbox.deliver(letter))


def refused(inbox, letter: Letter = LETTER) -> DeliveryError:
    with pytest.raises(DeliveryError) as caught:
        deliver(inbox, letter)
    return caught.value


def smtp(port: int, **overrides) -> SmtpInbox:
    settings = {"host": "127.0.0.1", "port": port, "to": "privacy@city.example", "from": "bot@city.example",
                "tls": "none", "timeout": 5} | overrides
    return SmtpInbox.from_settings("privacy", settings, Path("."))


# -- SMTP ------------------------------------------------------------------------------------------------------


def test_smtp_delivers_the_letter_with_its_case_attached():
    with smtp_peer() as (server, port):
        receipt = deliver(smtp(port))
    assert receipt.id == f"<{REF}@rightsdesk>"
    (mail,) = server.received
    assert mail.mail_from == "bot@city.example" and mail.rcpt_tos == ("privacy@city.example",)
    msg = email.message_from_bytes(mail.content, policy=default_policy)
    assert isinstance(msg, EmailMessage)
    assert msg["From"] == "bot@city.example" and msg["To"] == "privacy@city.example"
    assert msg["Subject"] == LETTER.subject and msg["Message-ID"] == f"<{REF}@rightsdesk>"
    assert msg["X-Rightsdesk-Ref"] == REF
    assert msg.get_body(("plain",)).get_content().replace("\r\n", "\n") == LETTER.body  # CRLF on the wire
    (attachment,) = list(msg.iter_attachments())
    assert attachment.get_filename() == f"{REF}.json"
    assert json.loads(attachment.get_content()) == LETTER.as_json()


def test_smtp_4xx_is_retryable_and_the_next_try_is_delivered():
    with smtp_peer(["451 4.3.0 Try again later"]) as (server, port):
        inbox = smtp(port)
        error = refused(inbox)
        assert error.retryable and "451" in str(error)
        assert deliver(inbox).id == f"<{REF}@rightsdesk>"
    assert server.attempts == 2 and len(server.received) == 1


def test_smtp_5xx_is_permanent_and_addresses_stay_out_of_the_error():
    with smtp_peer(["550 5.1.1 <privacy@city.example>: mailbox unavailable"]) as (server, port):
        error = refused(smtp(port))
    assert not error.retryable and "550" in str(error) and "mailbox unavailable" in str(error)
    assert "@" not in str(error)
    assert server.received == []


def test_smtp_with_nothing_listening_is_retryable():
    error = refused(smtp(free_port()))
    assert error.retryable and "cannot reach" in str(error)


def test_smtp_starttls_to_a_server_without_it_is_permanent():
    with smtp_peer() as (server, port):
        error = refused(smtp(port, tls="starttls"))
    assert not error.retryable and "STARTTLS" in str(error)
    assert server.received == []


# -- webhook ---------------------------------------------------------------------------------------------------


def webhook(url: str, **overrides) -> WebhookInbox:
    settings = {"url": url, "secret": SECRET, "headers": {"Authorization": "Bearer t0ken"}, "timeout": 5} | overrides
    return WebhookInbox.from_settings("intake", settings, Path("."))


def checking(request: Request):
    """A receiver that checks the signature as a city would, and accepts only signed requests."""
    ok = verify(SECRET, request.headers.get("x-rightsdesk-timestamp", ""), request.body,
                request.headers.get("x-rightsdesk-signature", ""), now=time.time())
    return (200, {"ok": True}) if ok else (401, {"error": "bad signature"})


def test_webhook_posts_signed_json_that_the_receiver_verifies():
    with http_peer(checking) as server:
        receipt = deliver(webhook(server.url + "/hook"))
    assert receipt.id == REF
    (request,) = server.requests
    assert request.method == "POST" and request.path == "/hook"
    assert request.headers["content-type"] == "application/json"
    assert request.headers["x-rightsdesk-ref"] == REF
    assert request.headers["authorization"] == "Bearer t0ken"
    assert json.loads(request.body) == LETTER.as_json()


def test_verify_refuses_a_wrong_secret_a_changed_body_and_an_old_timestamp():
    body = b'{"ref":"X"}'
    signature = sign(SECRET, "1000", body)
    assert verify(SECRET, "1000", body, signature, now=1100)
    assert not verify("another-secret-0123456789", "1000", body, signature, now=1100)
    assert not verify(SECRET, "1000", body + b" ", signature, now=1100)
    assert not verify(SECRET, "1001", body, signature, now=1100)  # the timestamp is signed too
    assert not verify(SECRET, "1000", body, signature, now=1000 + 301)  # a replay after the tolerance
    assert not verify(SECRET, "soon", body, signature, now=1100)


def test_webhook_receiver_refuses_a_forged_signature():
    with http_peer(checking) as server:
        error = refused(WebhookInbox(server.url, "not-the-shared-secret-000", timeout=5))
    assert not error.retryable and "401" in str(error)


def test_webhook_5xx_is_retryable():
    with http_peer(lambda request: (500, {"error": "down"})) as server:
        error = refused(webhook(server.url))
    assert error.retryable and "500" in str(error)


def test_webhook_429_is_retryable():
    with http_peer(lambda request: (429, {"error": "slow down"})) as server:
        error = refused(webhook(server.url))
    assert error.retryable and "429" in str(error)


def test_webhook_4xx_is_permanent_with_the_receiver_s_reason():
    with http_peer(lambda request: (400, {"error": "unknown flow"})) as server:
        error = refused(webhook(server.url))
    assert not error.retryable and "400" in str(error) and "unknown flow" in str(error)


def test_webhook_that_never_answers_in_time_is_retryable():
    with http_peer(lambda request: HANG) as server:
        error = refused(webhook(server.url, timeout=0.3))
    assert error.retryable and "no answer in time" in str(error)


def test_webhook_with_nothing_listening_is_retryable():
    error = refused(webhook(f"http://127.0.0.1:{free_port()}"))
    assert error.retryable and "cannot reach" in str(error)


# -- Open311 ---------------------------------------------------------------------------------------------------


def open311(endpoint: str, **overrides) -> Open311Inbox:
    settings = {"endpoint": endpoint, "api_key": "k3y", "service_code": "DIGITAL-RIGHTS",
                "jurisdiction_id": "amsterdam.nl", "timeout": 5} | overrides
    return Open311Inbox.from_settings("city311", settings, Path("."))


def test_open311_creates_a_service_request_and_keeps_its_id():
    with http_peer(lambda request: (201, [{"service_request_id": 123, "service_notice": "thank you"}])) as server:
        receipt = deliver(open311(server.url + "/open311/v2/"))
    assert receipt == Receipt("123", f"Open311 {server.url[7:]} answered HTTP 201: thank you")
    (request,) = server.requests
    assert request.path == "/open311/v2/requests.json"
    assert request.headers["content-type"] == "application/x-www-form-urlencoded"
    form = {k: v[0] for k, v in parse_qs(request.body.decode()).items()}
    assert form == {
        "api_key": "k3y", "service_code": "DIGITAL-RIGHTS", "jurisdiction_id": "amsterdam.nl",
        "description": LETTER.body, "email": "jane@example.org", "first_name": "Jane",
        "last_name": "van der Berg", "attribute[rightsdesk_ref]": REF,
    }


def test_open311_sends_no_requester_fields_the_resident_did_not_give_and_cuts_long_letters():
    letter = Letter(**(LETTER.__dict__ | {"answers": {}, "body": "x" * 10_000}))
    with http_peer(lambda request: (200, [{"service_request_id": "9"}])) as server:
        deliver(open311(server.url, jurisdiction_id=None), letter)
    form = {k: v[0] for k, v in parse_qs(server.requests[0].body.decode()).items()}
    assert set(form) == {"api_key", "service_code", "description", "attribute[rightsdesk_ref]"}
    assert len(form["description"]) == MAX_DESCRIPTION and form["description"].endswith("[…]")


def test_open311_token_becomes_the_receipt_when_the_id_comes_later():
    with http_peer(lambda request: (200, [{"token": "abc"}])) as server:
        assert deliver(open311(server.url)).id == "token:abc"


def test_open311_error_list_is_permanent_and_quoted():
    with http_peer(lambda request: (400, [{"code": 400, "description": "service_code not found"}])) as server:
        error = refused(open311(server.url))
    assert not error.retryable and "service_code not found" in str(error) and "400" in str(error)


def test_open311_5xx_and_429_are_retryable():
    for status in (503, 429):
        with http_peer(lambda request, status=status: (status, [{"code": status, "description": "busy"}])) as server:
            error = refused(open311(server.url))
        assert error.retryable and str(status) in str(error) and "busy" in str(error)


def test_open311_success_without_an_id_is_retryable_with_a_clear_message():
    with http_peer(lambda request: (200, b"<html>maintenance</html>")) as server:
        error = refused(open311(server.url))
    assert error.retryable and "without a service_request_id or token" in str(error)


def test_open311_that_never_answers_in_time_is_retryable():
    with http_peer(lambda request: HANG) as server:
        error = refused(open311(server.url, timeout=0.3))
    assert error.retryable


# -- through the real outbox -----------------------------------------------------------------------------------


def filed_store(tmp_path: Path) -> Store:
    """A real store holding one case filed as the core files it: a CaseFiled effect committed with its message."""
    store = Store(tmp_path / "db.sqlite")
    case = Case(ref=REF, flow="data-request", city="amsterdam", lang="en", filed_at=AT, filed=AT.date(),
                answers=ANSWERS,
                subject=LETTER.subject, letter=LETTER.body, resident_letter=LETTER.body, inbox="privacy",
                deadline=date(2026, 12, 28), rule="gdpr-art-12")
    store.commit(Incoming("console", "resident-1", "1", AT), Outcome(State(), (), (CaseFiled(case),)))
    return store


def events(store: Store) -> list[str]:
    return [e["event"] for e in store.case_history(REF)]


def test_outbox_delivers_exactly_once_when_the_inbox_comes_up_later(tmp_path):
    store = filed_store(tmp_path)
    port = free_port()
    outbox = Outbox(store, {"privacy": smtp(port)})
    first = asyncio.run(outbox.deliver_due(AT))  # nothing listens yet
    assert first.retrying == [REF] and store.outbox("pending")[0]["attempts"] == 1
    with smtp_peer(port=port) as (server, _):
        later = AT + timedelta(days=1)
        second = asyncio.run(outbox.deliver_due(later))
        third = asyncio.run(outbox.deliver_due(later + timedelta(days=1)))
    assert [row["ref"] for row in second.delivered] == [REF] and third.delivered == []
    assert len(server.received) == 1
    assert store.case(REF)["status"] == "delivered" and store.case(REF)["receipt"] == f"<{REF}@rightsdesk>"
    assert events(store) == ["filed", "retry", "delivered"]


def test_outbox_retries_a_451_and_delivers_on_the_second_pass(tmp_path):
    store = filed_store(tmp_path)
    with smtp_peer(["451 4.7.1 Greylisted, try again"]) as (server, port):
        outbox = Outbox(store, {"privacy": smtp(port)})
        first = asyncio.run(outbox.deliver_due(AT))
        second = asyncio.run(outbox.deliver_due(AT + timedelta(hours=1)))
    assert first.retrying == [REF] and [row["ref"] for row in second.delivered] == [REF]
    assert events(store).count("retry") == 1 and events(store)[-1] == "delivered"
    assert store.outbox("delivered")[0]["attempts"] == 2
    assert server.attempts == 2 and len(server.received) == 1


def test_outbox_marks_a_550_dead_with_its_last_error(tmp_path):
    store = filed_store(tmp_path)
    with smtp_peer(["550 5.7.1 Relaying denied"]) as (server, port):
        report = asyncio.run(Outbox(store, {"privacy": smtp(port)}).deliver_due(AT))
    assert report.dead == [REF]
    (dead,) = store.outbox("dead")
    assert dead["ref"] == REF and "550" in dead["last_error"] and "Relaying denied" in dead["last_error"]
    assert events(store) == ["filed", "dead"]


def test_outbox_delivers_to_open311_through_the_registry(tmp_path):
    store = filed_store(tmp_path)
    with http_peer(lambda request: (201, [{"service_request_id": "311-42"}])) as server:
        inboxes = registry.build({"privacy": {"type": "open311", "endpoint": server.url, "api_key": "k",
                                              "service_code": "DR"}}, tmp_path)
        report = asyncio.run(Outbox(store, inboxes).deliver_due(AT))
    assert [row["ref"] for row in report.delivered] == [REF] and len(server.requests) == 1
    assert store.case(REF)["receipt"] == "311-42"


# -- settings --------------------------------------------------------------------------------------------------


def config_error(kind, settings) -> str:
    with pytest.raises(ConfigError) as caught:
        kind.from_settings("city", settings, Path("."))
    return str(caught.value)


def test_smtp_settings_name_the_key_the_rule_and_the_fix():
    good = {"host": "smtp.city.example", "port": 587, "to": "privacy@city.example", "from": "bot@city.example"}
    missing = config_error(SmtpInbox, {k: v for k, v in good.items() if k != "host"})
    assert missing.startswith("inboxes.city.host: missing (required): add it")
    unknown = config_error(SmtpInbox, good | {"hots": "x"})
    assert unknown.startswith("inboxes.city.hots: unknown key for a smtp inbox (known: from, host, password, port")
    tls = config_error(SmtpInbox, good | {"tls": "yes"})
    assert tls == "inboxes.city.tls: 'yes' is not one of starttls, ssl, none: write e.g. `tls: starttls`"
    assert "inboxes.city.port: 'x' is not a TCP port" in config_error(SmtpInbox, good | {"port": "x"})
    assert "inboxes.city.to: is not an e-mail address" in config_error(SmtpInbox, good | {"to": "city"})
    clear = config_error(SmtpInbox, good | {"tls": "none", "username": "u", "password": "p"})
    assert clear.startswith("inboxes.city.tls: 'none' would send the password unencrypted")
    every = config_error(SmtpInbox, {"port": 0})
    assert [line.split(":")[0] for line in every.splitlines()] == [
        "inboxes.city.host", "inboxes.city.port", "inboxes.city.to", "inboxes.city.from"]
    inbox = SmtpInbox.from_settings("city", good, Path("."))
    assert (inbox.tls, inbox.timeout) == ("starttls", 30.0)


def test_webhook_and_open311_settings_name_the_key():
    assert config_error(WebhookInbox, {"url": "https://x.example", "secret": "short"}).startswith(
        "inboxes.city.secret: shorter than 16 characters")
    plain = config_error(WebhookInbox, {"url": "http://intake.city.example/h", "secret": SECRET})
    assert plain.startswith("inboxes.city.url: 'http://intake.city.example/h' is plain http to another machine")
    own = config_error(WebhookInbox, {"url": "https://x.example", "secret": SECRET,
                                      "headers": {"X-Rightsdesk-Signature": "x"}})
    assert own.startswith("inboxes.city.headers: X-Rightsdesk-Signature is set by rightsdesk")
    assert config_error(Open311Inbox, {"endpoint": "https://x.example", "service_code": "A"}).startswith(
        "inboxes.city.api_key: missing (required)")
    assert config_error(Open311Inbox, {"endpoint": "https://x.example/requests.json", "api_key": "k",
                                       "service_code": "A"}).startswith("inboxes.city.endpoint: is a resource")
    assert "inboxes.city.timeout: -1 is not a number" in config_error(
        Open311Inbox, {"endpoint": "https://x.example", "api_key": "k", "service_code": "A", "timeout": -1})


def test_registry_builds_every_type_and_lists_the_known_ones(tmp_path):
    assert list(registry.TYPES) == ["file", "smtp", "webhook", "open311"]
    (default,) = registry.build({}, tmp_path).items()
    assert default[0] == "default" and isinstance(default[1], PlainFileInbox)
    assert default[1].folder == tmp_path / "outbox"
    inboxes = registry.build({
        "default": {"type": "file", "dir": "letters"},
        "privacy": {"type": "smtp", "host": "smtp.city.example", "port": 465, "tls": "ssl",
                    "to": "privacy@city.example", "from": "bot@city.example"},
        "intake": {"type": "webhook", "url": "https://intake.city.example/h", "secret": SECRET},
        "city311": {"type": "open311", "endpoint": "https://311.city.example/v2", "api_key": "k",
                    "service_code": "DR"},
    }, tmp_path)
    assert inboxes["default"].folder == tmp_path / "letters"
    assert [type(i).__name__ for i in inboxes.values()] == ["FileInbox", "SmtpInbox", "WebhookInbox", "Open311Inbox"]
    with pytest.raises(ConfigError) as caught:
        registry.build({"a": {"type": "fax"}, "b": {"type": "file", "folder": "x"}}, tmp_path)
    assert str(caught.value).splitlines() == [
        "inboxes.a.type: 'fax' is not a known inbox type: choose one of file, smtp, webhook, open311",
        "inboxes.b.folder: unknown key for a file inbox (known: dir, from, to): check the spelling, or remove it",
    ]


def test_the_configured_file_inbox_writes_the_case(tmp_path):
    inbox = registry.build({"default": {"type": "file", "dir": "letters"}}, tmp_path)["default"]
    assert deliver(inbox).id == f"<{REF}@rightsdesk>"
    assert json.loads((tmp_path / "letters" / f"{REF}.json").read_text()) == LETTER.as_json()
