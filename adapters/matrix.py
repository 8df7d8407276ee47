"""The Matrix channel: matrix-nio <-> Incoming/Reply, with end-to-end encryption.

A conversation is a Matrix room: `Incoming.user` is the room id of the direct chat, and replies go to that room.
The bot joins direct invitations (two members) and the rooms listed in `allowed_rooms`; it reads text and notes
media, tells a resident when a message could not be decrypted, and ignores its own messages, notices, edits and
what was said before it was in the room.

nio returns errors as values, so every response is checked here (DESIGN.md §2). Three rules keep a restart
from losing or repeating anything:

- One device, one store. The crypto store (nio's SQLite file) belongs to one device id. A saved login
  (`session.json`: user, device, access token; nio's store does not keep the token) is restored instead of
  logging in again. A device id that already has keys on the homeserver but no store here is refused: its
  keys cannot be recovered, and re-using it breaks every resident's session with the bot.
- Our own sync token (`sync.json`) is saved only after the handlers of its batch returned, that is after the
  runtime committed each message, with the ids of the batch's events already handled. nio saves its token
  before running callbacks, which loses a message when the bot stops inside a handler.
- A reply is sent with the transaction id `reply-<event id>-<n>`: sending it again after a restart returns the
  same event (Matrix client-server API, "Transaction identifiers"), so the resident sees it once.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import html
import io
import json
import logging
import os
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit
from uuid import uuid4

from aiohttp import ClientError
from nio import (
    AsyncClient,
    AsyncClientConfig,
    ErrorResponse,
    JoinError,
    KeysUploadError,
    LocalProtocolError,
    LoginError,
    MatrixRoom,
    MegolmEvent,
    RoomMemberEvent,
    RoomRedactResponse,
    RoomSendResponse,
    SyncError,
    SyncResponse,
    UploadResponse,
    WhoamiError,
)
from nio.crypto import ENCRYPTION_ENABLED
from nio.exceptions import EncryptionError, OlmUnverifiedDeviceError

from bot.config import ConfigError
from bot.messages import Incoming, Reply
from bot.ports import SendError

log = logging.getLogger("rightsdesk.matrix")

KEYS = {"homeserver", "user_id", "password", "access_token", "device_id", "store", "pickle_key", "encryption",
        "allowed_rooms"}
POLL_MS = 30_000  # long-poll for new events; the homeserver answers at once when something arrives
TIMELINE_LIMIT = 100  # events per room and sync: enough for a resident's messages while the bot was down
MEDIA = ("m.image", "m.file", "m.audio", "m.video")  # message types the bot cannot read (spec §m.room.message)
SEND_TRIES = 4  # one send plus three waits on M_LIMIT_EXCEEDED
MAX_RATE_WAIT = 30.0  # seconds: never wait longer than this for one rate-limited send
UPLOAD_TIMEOUT = 60.0  # seconds for a file upload (nio sets none)
UNDECRYPTABLE_QUIET = timedelta(minutes=10)  # one "could not read" per room and key session in this time
BACKOFF_MAX = 30.0  # seconds between sync attempts while the homeserver is away
# Only the room timeline matters to the bot; presence and account data would be parsed for nothing.
SYNC_FILTER = {
    "presence": {"types": []},
    "account_data": {"types": []},
    "room": {"timeline": {"limit": TIMELINE_LIMIT}, "account_data": {"types": []}},
}


@dataclass(frozen=True)
class MatrixSettings:
    """The `channels.matrix` settings, checked."""

    homeserver: str
    user_id: str
    password: str | None
    access_token: str | None
    device_id: str
    store: Path
    pickle_key: str | None
    encryption: bool
    allowed_rooms: frozenset[str]


@dataclass(frozen=True)
class Session:
    """A saved login: nio's crypto store keeps the keys but not the access token."""

    user_id: str
    device_id: str
    access_token: str


class MatrixChannel:
    name = "matrix"

    def __init__(self, settings: MatrixSettings) -> None:
        self.settings = settings
        self.client: AsyncClient | None = None
        self._handling: dict[str, list[Any]] = {}  # room id -> [event id, replies sent] while a handler runs
        self._told_undecryptable: dict[tuple[str, str], datetime] = {}  # (room, key session) -> when told

    @classmethod
    def from_settings(cls, settings: Mapping[str, Any], data_dir: Path) -> MatrixChannel:
        """Check `channels.matrix` and build the channel; raise ConfigError naming the first wrong key."""
        return cls(parse(settings, data_dir))

    async def run(self, on_message: Callable[[Incoming], Awaitable[None]]) -> None:
        """Log in (or restore the saved login), then sync and hand each message over until cancelled."""
        try:
            await self._connect()
            await self._sync_forever(on_message)
        finally:
            await self._close()

    async def send(self, user: str, reply: Reply) -> tuple[str, ...]:
        """Send one reply to the room `user` and return its event id; wait out rate limits (bounded); raise
        SendError otherwise."""
        client = self._connected()
        handling = self._handling.get(user)
        if handling is not None:
            tx_id = f"reply-{handling[0]}-{handling[1]}"
            handling[1] += 1
        else:
            tx_id = f"rightsdesk-{uuid4()}"
        return await self._send_content(client, user, as_content(reply), tx_id)

    async def send_file(self, user: str, name: str, data: bytes) -> None:
        """Send a file (the resident's /mydata export) as an m.file event, encrypted before it leaves the bot
        (client-server API §End-to-end encryption, sending encrypted attachments): the homeserver's media store,
        which nobody can empty later, only ever holds ciphertext, and the key travels in the encrypted event. In a
        room without end-to-end encryption the export is not uploaded at all (SendError: it goes as messages)."""
        client = self._connected()
        room = client.rooms.get(user)
        if room is None or not room.encrypted or client.olm is None:
            raise SendError("matrix: files go only to end-to-end encrypted rooms; the export goes as messages",
                            retryable=False)
        try:
            # nio uploads without a time limit: a stalled homeserver must not hold every Matrix conversation.
            uploaded, keys = await asyncio.wait_for(client.upload(
                io.BytesIO(data), content_type="application/json", filename=name, encrypt=True,
                filesize=len(data)), UPLOAD_TIMEOUT)
        except (ClientError, TimeoutError) as exc:
            raise SendError(f"matrix: no answer from {self.settings.homeserver} to an upload "
                            f"({exc.__class__.__name__})", retryable=True) from exc
        if not isinstance(uploaded, UploadResponse):
            raise SendError(f"matrix: the homeserver refused an upload ({getattr(uploaded, 'status_code', '')}: "
                            f"{getattr(uploaded, 'message', type(uploaded).__name__)})", retryable=False)
        content: dict[str, Any] = {"msgtype": "m.file", "body": name,
                                   "info": {"mimetype": "application/json", "size": len(data)},
                                   "file": {**(keys or {}), "url": uploaded.content_uri}}
        await self._send_content(client, user, content, f"rightsdesk-file-{uuid4()}")

    def _connected(self) -> AsyncClient:
        """The logged-in client; sending before run() has connected may work later."""
        client = self.client
        if client is None or not client.access_token:
            raise SendError("matrix: the channel is not connected yet (start run() first)", retryable=True)
        return client

    async def _send_content(self, client: AsyncClient, user: str, content: dict[str, Any],
                            tx_id: str) -> tuple[str, ...]:
        for attempt in range(1, SEND_TRIES + 1):
            try:
                response = await client.room_send(user, "m.room.message", content, tx_id=tx_id,
                                                  ignore_unverified_devices=True)
            except (ClientError, TimeoutError) as exc:
                raise SendError(f"matrix: no answer from {self.settings.homeserver} ({exc.__class__.__name__}); "
                                "the homeserver may be down", retryable=True) from exc
            except (LocalProtocolError, OlmUnverifiedDeviceError, EncryptionError) as exc:
                # "No such room": the bot is not (or no longer) in that room; nothing later will change that.
                raise SendError(f"matrix: cannot send to room {_hidden(user)}: {exc}", retryable=False) from exc
            if isinstance(response, RoomSendResponse):
                return (response.event_id,)
            if not isinstance(response, ErrorResponse):
                raise SendError(f"matrix: unexpected answer to a send: {type(response).__name__}")
            if response.status_code == "M_LIMIT_EXCEEDED" and attempt < SEND_TRIES:
                # The server says how long to wait (client-server API §Rate limiting); we cap the wait.
                wait = min((response.retry_after_ms or 1000) / 1000, MAX_RATE_WAIT)
                log.info("matrix: rate limited by the homeserver; sending again in %.1f s", wait)
                await asyncio.sleep(wait)
                continue
            status = _http_status(response)
            raise SendError(f"matrix: the homeserver refused a reply to room {_hidden(user)} "
                            f"({response.status_code}: {response.message})",
                            retryable=response.status_code == "M_LIMIT_EXCEEDED" or status >= 500)

    async def retract(self, room: str, message: str, notice: str) -> None:
        """Redact an event the bot sent (client-server API, PUT /rooms/{roomId}/redact): the homeserver strips its
        content for everyone, and `notice` is the reason shown in its place. No time limit applies."""
        client = self._connected()
        try:
            response = await client.room_redact(room, message, reason=notice, tx_id=f"retract-{message}")
        except (ClientError, TimeoutError) as exc:
            raise SendError(f"matrix: no answer from {self.settings.homeserver} to a redaction "
                            f"({exc.__class__.__name__})", retryable=True) from exc
        if isinstance(response, RoomRedactResponse):
            return
        if isinstance(response, ErrorResponse) and response.status_code == "M_NOT_FOUND":
            return  # no such event (any more): nothing left to take back
        status = _http_status(response) if isinstance(response, ErrorResponse) else 500
        raise SendError(f"matrix: the homeserver refused a redaction in room {_hidden(room)} "
                        f"({getattr(response, 'status_code', type(response).__name__)}: "
                        f"{getattr(response, 'message', '')})", retryable=status >= 500 or status == 429)

    # -- login -------------------------------------------------------------------------------------------

    async def _connect(self) -> None:
        s = self.settings
        s.store.mkdir(parents=True, exist_ok=True, mode=0o700)
        config = AsyncClientConfig(
            encryption_enabled=s.encryption, store_sync_tokens=True, pickle_key=s.pickle_key or "",
            max_limit_exceeded=0,  # hand M_LIMIT_EXCEEDED back to us: send() waits a bounded time
            max_timeouts=2,  # a homeserver that is away raises, so that the sync loop can back off
            request_timeout=60,
        )
        client = AsyncClient(s.homeserver, s.user_id, device_id=s.device_id, store_path=str(s.store), config=config)
        self.client = client
        session = self._load_session()
        has_store = self._crypto_store().exists()
        if s.encryption and session is not None and not has_store:
            raise ConfigError(
                f"channels.matrix.store: {s.store} holds the login of device {session.device_id} but not its crypto "
                "store: a device id must never be used without its keys. Set channels.matrix.device_id to a new "
                f"id and delete {self._session_file()} (residents will see the bot's new device)")
        if session is not None:
            if (session.user_id, session.device_id) != (s.user_id, s.device_id):
                raise ConfigError(
                    f"channels.matrix.device_id: {s.store} holds the login of {session.device_id} for "
                    f"{session.user_id}, not {s.device_id} for {s.user_id}: put the old values back, or use "
                    "another channels.matrix.store folder")
            self._restore(client, session)
            await self._check_token(client, "store")
        elif s.access_token:
            self._restore(client, Session(s.user_id, s.device_id, s.access_token))
            await self._check_token(client, "access_token")
            if s.encryption and not has_store:
                await self._refuse_orphan_device(client, "access_token")
        else:
            await self._login(client, has_store)
        if client.should_upload_keys:
            # Upload keys at once: a resident who writes before our first key upload gets an undecryptable chat.
            response = await client.keys_upload()
            if isinstance(response, KeysUploadError):
                raise ConfigError(
                    f"channels.matrix.device_id: the homeserver refused the keys of device {s.device_id} "
                    f"({response.status_code}: {response.message}); the device's store was probably lost: "
                    "set a new device_id and start with an empty store folder")
        log.info("matrix: connected as device %s (encryption %s)", s.device_id, "on" if s.encryption else "off")

    def _restore(self, client: AsyncClient, session: Session) -> None:
        try:
            client.restore_login(session.user_id, session.device_id, session.access_token)
        except Exception as exc:  # vodozemac raises its own PickleException types for a wrong key
            if "pickle" not in type(exc).__name__.lower() and "pickle" not in str(exc).lower():
                raise
            raise ConfigError(
                f"channels.matrix.pickle_key: the crypto store in {self.settings.store} cannot be opened with "
                f"this key ({type(exc).__name__}): set the pickle key it was created with") from exc

    async def _check_token(self, client: AsyncClient, key: str) -> None:
        response = await client.whoami()
        if isinstance(response, WhoamiError):
            if response.status_code == "M_UNKNOWN_TOKEN":
                where = "the saved login" if key == "store" else "the access token"
                raise ConfigError(
                    f"channels.matrix.{key}: the homeserver no longer accepts {where} (M_UNKNOWN_TOKEN): the "
                    "device was logged out. Set a new channels.matrix.device_id and an empty store folder")
            raise ConfigError(f"channels.matrix.homeserver: {self.settings.homeserver} refused whoami "
                              f"({response.status_code}: {response.message}): check the URL")
        if response.user_id != self.settings.user_id or (response.device_id and
                                                         response.device_id != self.settings.device_id):
            raise ConfigError(
                f"channels.matrix.{key}: the token belongs to device {response.device_id} of another account or "
                f"device, not {self.settings.device_id}: set user_id and device_id to the token's")

    async def _login(self, client: AsyncClient, has_store: bool) -> None:
        s = self.settings
        assert s.password is not None  # parse() requires password or access_token
        try:
            response = await client.login(password=s.password, device_name="rightsdesk")
        except (ClientError, TimeoutError) as exc:
            raise ConfigError(f"channels.matrix.homeserver: no answer from {s.homeserver} "
                              f"({exc.__class__.__name__}): check the URL and that the homeserver runs") from exc
        if isinstance(response, LoginError):
            if response.status_code == "M_FORBIDDEN":
                raise ConfigError(f"channels.matrix.password: the homeserver refused the login of {s.user_id} "
                                  "(M_FORBIDDEN): check the password, or the user id")
            raise ConfigError(f"channels.matrix.homeserver: the login failed ({response.status_code}: "
                              f"{response.message}): check homeserver and user_id")
        if s.encryption and not has_store:
            await self._refuse_orphan_device(client, "device_id")
        self._save_session(Session(response.user_id, response.device_id, response.access_token))

    async def _refuse_orphan_device(self, client: AsyncClient, key: str) -> None:
        """Refuse a device id that has keys on the homeserver but no store here (its keys are lost)."""
        s = self.settings
        body = json.dumps({"device_keys": {s.user_id: [s.device_id]}})
        headers = {"Authorization": f"Bearer {client.access_token}", "Content-Type": "application/json"}
        response = await client.send("POST", "/_matrix/client/v3/keys/query", body, headers)
        if response.status != 200:
            raise ConfigError(f"channels.matrix.homeserver: {s.homeserver} refused a key query "
                              f"(HTTP {response.status}): check the URL")
        known = (await response.json()).get("device_keys", {}).get(s.user_id, {})
        if s.device_id in known:
            raise ConfigError(
                f"channels.matrix.{key}: device {s.device_id} already has encryption keys on the homeserver but "
                f"{s.store} has no store for it: a device must never be reused without its keys. Set "
                "channels.matrix.device_id to a new id (or put the old store folder back)")

    # -- sync ---------------------------------------------------------------------------------------------

    async def _sync_forever(self, on_message: Callable[[Incoming], Awaitable[None]]) -> None:
        client = self.client
        assert client is not None
        token, done = self._load_progress()
        token = token or client.loaded_sync_token
        # Without any token this is the bot's first start: what was said before it is not for it to answer.
        first_start = token is None
        first = True
        failures = 0
        while True:
            try:
                # Always from our own token, never nio's (advanced before anything was handled): a batch that
                # fails half-way comes again, and `done` skips what was already handled. The first sync is
                # full_state: after a restart nio's room list is empty until a room changes.
                response = await client.sync(timeout=0 if first else POLL_MS, sync_filter=SYNC_FILTER,
                                             since=token, full_state=True if first else None)
                if isinstance(response, SyncError):
                    if response.status_code == "M_UNKNOWN_TOKEN":
                        raise ConfigError("channels.matrix.store: the homeserver no longer accepts the bot's "
                                          "login (M_UNKNOWN_TOKEN): set a new device_id and an empty store folder")
                    failures += 1
                    log.warning("matrix: sync refused (%s); retrying", response.status_code)
                    limited = response.status_code == "M_LIMIT_EXCEEDED" and response.retry_after_ms
                    await asyncio.sleep(min(response.retry_after_ms / 1000, BACKOFF_MAX) if limited
                                        else _backoff(failures))
                    continue
                if not isinstance(response, SyncResponse):
                    raise TypeError(f"matrix: unexpected sync answer {type(response).__name__}")
                # Keys first: a reply must be encrypted for the resident's devices that this batch made known.
                await self._keep_keys(client)
                await self._accept_invitations(client, response)
                if not first_start:
                    await self._handle_rooms(client, response, on_message, token, done)
            except (ClientError, TimeoutError) as exc:
                failures += 1
                # nio skips a sync answer whose next_batch it has seen: rewind it so the batch is processed again.
                client.next_batch = token
                log.warning("matrix: the homeserver did not answer (%s); retrying", exc.__class__.__name__)
                await asyncio.sleep(_backoff(failures))
                continue
            failures = 0
            token, done = response.next_batch, set()
            self._save_progress(token, done)  # only now: every message of the batch was committed by its handler
            first = first_start = False

    async def _keep_keys(self, client: AsyncClient) -> None:
        """Do what nio's sync_forever does between syncs: upload, query and claim keys, send to-device events."""
        calls = []
        if client.should_upload_keys:
            calls.append(client.keys_upload())
        if client.should_query_keys:
            calls.append(client.keys_query())
        if client.should_claim_keys:
            calls.append(client.keys_claim(client.get_users_for_key_claiming()))
        for response in [await call for call in calls]:
            if isinstance(response, ErrorResponse):
                log.warning("matrix: key maintenance refused (%s: %s)", response.status_code, response.message)
        for response in await client.send_to_device_messages():
            if isinstance(response, ErrorResponse):
                log.warning("matrix: to-device send refused (%s)", response.status_code)

    async def _accept_invitations(self, client: AsyncClient, response: SyncResponse) -> None:
        for room_id in response.rooms.invite:
            if not self._welcome(client, room_id):
                log.info("matrix: left an invitation to a group room unanswered (%s)", _hidden(room_id))
                continue
            joined = await client.join(room_id)
            if isinstance(joined, JoinError):
                log.warning("matrix: could not join %s (%s: %s)", _hidden(room_id), joined.status_code, joined.message)

    def _welcome(self, client: AsyncClient, room_id: str) -> bool:
        """Join the rooms staff listed, and what looks like a direct chat: the inviter and the bot.

        An invitation shows only the inviter and the invitee (stripped state, client-server API §Room
        invitations), not others invited along; a group is recognised after joining and left (`_handle_rooms`).
        """
        if room_id in self.settings.allowed_rooms:
            return True
        room = client.invited_rooms.get(room_id)
        return room is not None and room.member_count <= 2

    async def _handle_rooms(self, client: AsyncClient, response: SyncResponse,
                            on_message: Callable[[Incoming], Awaitable[None]], since: str | None,
                            done: set[str]) -> None:
        """Hand each new message to the runtime; note each one handled, so a restart inside a batch skips it."""
        for room_id, info in response.rooms.join.items():
            room = client.rooms.get(room_id)
            if room is None:
                continue
            events = info.timeline.events
            joins = [i for i, e in enumerate(events) if _is_own_join(e, client.user_id)]
            if room.member_count > 2 and room_id not in self.settings.allowed_rooms:
                # A group: only the rooms staff listed are read (channels.matrix.allowed_rooms). One the bot
                # just joined, invited as if to a direct chat, is left; a direct chat that grew is only ignored.
                if joins:
                    log.info("matrix: leaving %s: a group room not in allowed_rooms", _hidden(room_id))
                    left = await client.room_leave(room_id)
                    if isinstance(left, ErrorResponse):
                        log.warning("matrix: could not leave %s (%s)", _hidden(room_id), left.status_code)
                continue
            # What was said before the bot joined this room is history, not a question to it.
            for event in events[joins[-1] + 1:] if joins else events:
                message = self._incoming(client, room, event)
                if message is None or event.event_id in done:
                    continue
                await self._dispatch(event.event_id, message, on_message)
                done.add(event.event_id)
                self._save_progress(since, done)

    def _incoming(self, client: AsyncClient, room: MatrixRoom, event: Any) -> Incoming | None:
        """Translate one timeline event, or None for what the bot does not answer.

        The event's own JSON decides, not nio's class: nio turns a decrypted message that misses a field of its
        schema (an image with `url` where an encrypted room wants `file`) into a BadEvent, yet it is media.
        """
        if getattr(event, "sender", None) == client.user_id:
            return None
        if isinstance(event, MegolmEvent):
            # Still encrypted: the resident's device did not share its key with ours (yet). A resident is told,
            # rather than left waiting for an answer to a message nobody could read: once per key session and
            # room in a while, for new messages only (not edits or reactions), never in the staff room, and not
            # when this bot runs without encryption (then nothing encrypted can be read, and the text would lie).
            log.warning("matrix: could not decrypt an event in %s", _hidden(room.room_id))
            content = event.source.get("content") if isinstance(event.source.get("content"), dict) else {}
            relation = content.get("m.relates_to") if isinstance(content.get("m.relates_to"), dict) else {}
            if (room.room_id in self.settings.allowed_rooms or client.olm is None
                    or relation.get("rel_type") in ("m.replace", "m.annotation", "m.reference")):
                return None
            at = datetime.fromtimestamp(event.server_timestamp / 1000, UTC)
            told = self._told_undecryptable.get((room.room_id, event.session_id))
            if told is not None and at - told < UNDECRYPTABLE_QUIET:
                return None
            self._told_undecryptable[(room.room_id, event.session_id)] = at
            return Incoming(self.name, room.room_id, "", at, kind="undecryptable", id=event.event_id)
        source = event.source if isinstance(getattr(event, "source", None), dict) else {}
        content = source.get("content") if isinstance(source.get("content"), dict) else {}
        relation = content.get("m.relates_to") if isinstance(content.get("m.relates_to"), dict) else {}
        timestamp = source.get("origin_server_ts")
        if not isinstance(timestamp, int) or relation.get("rel_type") == "m.replace":
            return None  # not a message, or an edit: the core already answered the original
        at = datetime.fromtimestamp(timestamp / 1000, UTC)
        kind = source.get("type")
        msgtype = content.get("msgtype")
        event_id = getattr(event, "event_id", None)
        if kind == "m.sticker" or (kind == "m.room.message" and msgtype in MEDIA):
            return Incoming(self.name, room.room_id, "", at, kind="media", id=event_id)
        if kind == "m.room.message" and msgtype in ("m.text", "m.emote") and isinstance(content.get("body"), str):
            body = _without_reply_fallback(content["body"], relation)
            if room.room_id in self.settings.allowed_rooms:
                # A group room is the help desk's staff room: who wrote, and which post they answer (a rich
                # reply, or a thread), decide what happens.
                sender = str(event.sender)
                replied = (relation.get("m.in_reply_to") or {}).get("event_id") or (
                    relation.get("event_id") if relation.get("rel_type") == "m.thread" else None)
                return Incoming(self.name, room.room_id, body, at, sender=sender,
                                sender_name=room.user_name(sender), reply_to=replied, id=event_id)
            return Incoming(self.name, room.room_id, body, at, id=event_id)
        return None  # notices (other bots), state, reactions, calls...

    async def _dispatch(self, event_id: str, message: Incoming,
                        on_message: Callable[[Incoming], Awaitable[None]]) -> None:
        self._handling[message.user] = [event_id, 0]
        try:
            await on_message(message)
        except Exception:
            # One failed message must not stop the channel; the runtime has kept or dropped it whole.
            log.exception("matrix: handling event %s in %s failed", event_id, message.user)
        finally:
            self._handling.pop(message.user, None)

    # -- files --------------------------------------------------------------------------------------------

    def _crypto_store(self) -> Path:
        # nio's DefaultStore names its database after the account and device (nio/store/database.py).
        return self.settings.store / f"{self.settings.user_id}_{self.settings.device_id}.db"

    def _session_file(self) -> Path:
        return self.settings.store / "session.json"

    def _load_session(self) -> Session | None:
        path = self._session_file()
        if not path.exists():
            return None
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            return Session(str(data["user_id"]), str(data["device_id"]), str(data["access_token"]))
        except (ValueError, KeyError, TypeError) as exc:
            raise ConfigError(f"channels.matrix.store: {path} is damaged ({exc.__class__.__name__}): restore it "
                              "from a backup; deleting it means logging in again with the same device") from exc

    def _save_session(self, session: Session) -> None:
        _write_private(self._session_file(), {"user_id": session.user_id, "device_id": session.device_id,
                                               "access_token": session.access_token})

    def _load_progress(self) -> tuple[str | None, set[str]]:
        """Our sync token, and the events of its batch already handled (a stop can come inside a batch)."""
        path = self.settings.store / "sync.json"
        if not path.exists():
            return None, set()
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            token, done = data.get("next_batch"), data.get("done") or []
        except (ValueError, AttributeError):
            log.warning("matrix: %s is damaged; continuing from nio's own sync token", path)
            return None, set()
        return (str(token) if token else None), {str(e) for e in done}

    def _save_progress(self, token: str | None, done: set[str]) -> None:
        _write_private(self.settings.store / "sync.json", {"next_batch": token, "done": sorted(done)})

    async def _close(self) -> None:
        client = self.client
        if client is None:
            return
        with contextlib.suppress(Exception):
            await client.close()
        store = client.store
        if store is not None:
            with contextlib.suppress(Exception):
                store.database.close()


def parse(settings: Mapping[str, Any], data_dir: Path) -> MatrixSettings:
    """Check `channels.matrix` settings; raise ConfigError naming the key, the rule and the fix."""
    if not isinstance(settings, Mapping):
        raise ConfigError("channels.matrix: must be a mapping of settings (homeserver, user_id, password, ...)")
    for key in settings:
        if key not in KEYS:
            raise ConfigError(f"channels.matrix.{key}: unknown key (known keys: {', '.join(sorted(KEYS))})")
    homeserver = _text(settings, "homeserver", "e.g. https://matrix.example.org")
    url = urlsplit(homeserver)
    if url.scheme not in ("http", "https") or not url.netloc:
        raise ConfigError(f"channels.matrix.homeserver: {homeserver!r} is not an http(s) URL "
                          "(e.g. https://matrix.example.org)")
    user_id = _text(settings, "user_id", "the bot's full id, e.g. @rightsdesk:example.org")
    if not user_id.startswith("@") or ":" not in user_id:
        raise ConfigError(f"channels.matrix.user_id: {user_id!r} is not a Matrix user id "
                          "(e.g. @rightsdesk:example.org)")
    password = _optional_text(settings, "password")
    access_token = _optional_text(settings, "access_token")
    if password is None and access_token is None:
        raise ConfigError("channels.matrix.password: set password or access_token "
                          "(from the environment: password: ${MATRIX_PASSWORD})")
    if password is not None and access_token is not None:
        raise ConfigError("channels.matrix.access_token: set password or access_token, not both")
    device_id = _optional_text(settings, "device_id") or "RIGHTSDESK"
    store = Path(_optional_text(settings, "store") or "matrix")
    encryption = settings.get("encryption", True)
    if not isinstance(encryption, bool):
        raise ConfigError(f"channels.matrix.encryption: {encryption!r} is not true or false")
    pickle_key = _optional_text(settings, "pickle_key")
    if encryption and pickle_key is None:
        raise ConfigError("channels.matrix.pickle_key: required with encryption on, to protect the keys on disk "
                          "(pickle_key: ${MATRIX_PICKLE_KEY}, a long random secret kept with your backups)")
    if encryption and not ENCRYPTION_ENABLED:
        raise ConfigError("channels.matrix.encryption: matrix-nio has no encryption support here: "
                          "pip install 'matrix-nio[e2e]', or set encryption: false")
    rooms = settings.get("allowed_rooms") or []
    if not isinstance(rooms, list) or not all(isinstance(r, str) and r.startswith("!") for r in rooms):
        raise ConfigError(f"channels.matrix.allowed_rooms: {rooms!r} is not a list of room ids "
                          "(e.g. ['!abc:example.org'])")
    return MatrixSettings(homeserver.rstrip("/"), user_id, password, access_token, device_id,
                          store if store.is_absolute() else Path(data_dir) / store, pickle_key, encryption,
                          frozenset(rooms))


def as_content(reply: Reply) -> dict[str, Any]:
    """A reply as an m.text event: choices as numbered lines, and as an <ol> in the HTML part.

    Everything from the bot's texts or a resident's answers is escaped: nothing typed can inject markup.
    """
    body = reply.text
    formatted = html.escape(reply.text).replace("\n", "<br>")
    if reply.choices:
        body += "\n\n" + "\n".join(f"{i}. {label}" for i, label in enumerate(reply.choices, 1))
        formatted += "<ol>" + "".join(f"<li>{html.escape(label)}</li>" for label in reply.choices) + "</ol>"
    # "m.mentions": {} says the bot means to mention nobody (client-server API §User and room mentions), so that
    # "@room" or a user id in a resident's text relayed to the staff room pings no one.
    return {"msgtype": "m.text", "body": body, "format": "org.matrix.custom.html", "formatted_body": formatted,
            "m.mentions": {}}


def _is_own_join(event: Any, user_id: str | None) -> bool:
    return (isinstance(event, RoomMemberEvent) and event.state_key == user_id and event.membership == "join"
            and event.prev_membership != "join")


def _without_reply_fallback(body: str, relation: Mapping[str, Any]) -> str:
    """Drop the quoted '> ' lines a rich reply starts with (client-server API §Fallbacks for rich replies)."""
    if "m.in_reply_to" not in relation or not body.startswith("> "):
        return body
    lines = body.split("\n")
    rest = 0
    while rest < len(lines) and lines[rest].startswith(">"):
        rest += 1
    return "\n".join(lines[rest:]).lstrip("\n")


def _hidden(room_id: str) -> str:
    """A room as logs may name it: a short hash (a direct room's id identifies a resident; docs/privacy.md)."""
    return "room-" + hashlib.sha256(room_id.encode()).hexdigest()[:10]


def _backoff(failures: int) -> float:
    """Seconds to wait after `failures` failed syncs in a row: 2, 4, 8 ... up to BACKOFF_MAX."""
    return min(2.0 ** min(failures, 10), BACKOFF_MAX)


def _http_status(response: ErrorResponse) -> int:
    transport = getattr(response, "transport_response", None)
    return int(getattr(transport, "status", 0) or 0)


def _text(settings: Mapping[str, Any], key: str, example: str) -> str:
    value = _optional_text(settings, key)
    if value is None:
        raise ConfigError(f"channels.matrix.{key}: required ({example})")
    return value


def _optional_text(settings: Mapping[str, Any], key: str) -> str | None:
    value = settings.get(key)
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise ConfigError(f"channels.matrix.{key}: {value!r} must be text")
    return value


def _write_private(path: Path, data: Mapping[str, Any]) -> None:
    """Write JSON atomically, readable by the bot's user only (it may hold an access token)."""
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        json.dump(data, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
