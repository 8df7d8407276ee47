"""The Telegram channel: python-telegram-bot 22 between the Bot API and Incoming/Reply.

Choices become an inline keyboard, one button per row; a button press comes back as the button's label, so the
core resolves it like a typed label. Texts go out plain (no parse_mode): nothing to escape, and nothing a resident
typed can inject formatting. Private chats are served; groups only when listed in `allowed_groups`; channel posts
and edited messages are ignored. Message texts, names and tokens are never logged.
"""

from __future__ import annotations

import asyncio
import logging
import re
import warnings
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import partial
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from telegram import InlineKeyboardButton, InlineKeyboardMarkup, InputFile, Message, Update
from telegram.error import (
    BadRequest,
    ChatMigrated,
    Forbidden,
    InvalidToken,
    NetworkError,
    RetryAfter,
    TelegramError,
)
from telegram.ext import Application, ApplicationBuilder, ContextTypes, TypeHandler

from bot.config import ConfigError
from bot.messages import Incoming, Reply
from bot.ports import SendError

log = logging.getLogger("rightsdesk.telegram")

TEXT_LIMIT = 4096  # Bot API sendMessage: "1-4096 characters after entities parsing" (counted in UTF-16 units)
CALLBACK_DATA_LIMIT = 64  # Bot API InlineKeyboardButton.callback_data: 1-64 bytes
MAX_RETRY_WAIT = 30.0  # seconds we wait on a RetryAfter before giving up on this send (the caller may retry)
REMEMBERED_CHATS = 1024  # chats whose long button labels we remember (bounded: memory stays flat)
UPDATES = ("message", "callback_query")  # edited messages and channel posts are not even fetched
MEDIA = ("photo", "sticker", "voice", "document", "video", "video_note", "audio", "animation", "location", "venue",
         "contact", "poll", "dice", "story")
KEYS = {"token", "base_url", "mode", "webhook", "allowed_groups"}
WEBHOOK_KEYS = {"url", "listen", "port", "secret_token"}
_TOKEN = re.compile(r"^\d+:[A-Za-z0-9_-]+$")  # what @BotFather issues: "<bot id>:<secret>"
_SECRET = re.compile(r"^[A-Za-z0-9_-]{1,256}$")  # Bot API setWebhook.secret_token: 1-256 of A-Z a-z 0-9 _ -


@dataclass(frozen=True)
class Webhook:
    """Where Telegram posts updates (`url`, public) and where we listen for them (`listen`:`port`)."""

    url: str
    listen: str
    port: int
    secret_token: str

    @property
    def path(self) -> str:
        return urlsplit(self.url).path.lstrip("/")


class TelegramChannel:
    name = "telegram"

    def __init__(self, token: str, base_url: str | None = None, webhook: Webhook | None = None,
                 allowed_groups: frozenset[int] = frozenset(), poll_timeout: float = 10.0,
                 max_retry_wait: float = MAX_RETRY_WAIT,
                 sleep: Callable[[float], Awaitable[None]] = asyncio.sleep) -> None:
        self.token = token
        self.base_url = base_url
        self.webhook = webhook
        self.allowed_groups = allowed_groups
        self.poll_timeout = poll_timeout
        self.max_retry_wait = max_retry_wait
        self.sleep = sleep
        self.ready = asyncio.Event()  # set once updates are being received (tests and health checks wait on it)
        self._app: Application[Any, Any, Any, Any, Any, Any] | None = None
        self._labels: dict[str, tuple[str, ...]] = {}  # chat -> labels of the last keyboard that used indexes

    @classmethod
    def from_settings(cls, settings: Mapping[str, Any], data_dir: Path) -> TelegramChannel:
        """Build the channel from `channels.telegram`; raise ConfigError listing every problem."""
        del data_dir  # nothing to keep on disk: Telegram keeps the update offset, the store keeps the rest
        if not isinstance(settings, Mapping):
            raise ConfigError("channels.telegram: must be a mapping with at least a token (see docs/deploy.md)")
        errors: list[str] = []
        for key in settings:
            if key not in KEYS:
                errors.append(f"channels.telegram.{key}: unknown key (known keys: {', '.join(sorted(KEYS))})")
        token = settings.get("token")
        if not token:
            errors.append("channels.telegram.token: missing (ask @BotFather for one and set token: ${TELEGRAM_TOKEN})")
        elif not isinstance(token, str) or not _TOKEN.match(token.strip()):
            # Never echo the value: it is a secret.
            errors.append("channels.telegram.token: not a bot token (it looks like 123456789:AAH...; "
                          "copy it again from @BotFather)")
        base_url = settings.get("base_url")
        if base_url is not None:
            base_url = str(base_url).rstrip("/")
            if not base_url.startswith(("http://", "https://")) or not base_url.endswith("/bot"):
                errors.append(f"channels.telegram.base_url: {base_url!r} is not a Bot API address ending in /bot "
                              "(e.g. http://127.0.0.1:8081/bot, as https://api.telegram.org/bot)")
        mode = settings.get("mode", "polling")
        if mode not in ("polling", "webhook"):
            errors.append(f"channels.telegram.mode: {mode!r} is not a mode (use polling or webhook)")
        webhook = None
        if mode == "webhook":
            webhook = _webhook(settings.get("webhook"), local=base_url is not None, errors=errors)
        elif settings.get("webhook") is not None:
            errors.append("channels.telegram.webhook: set, but mode is polling (set mode: webhook, or remove it)")
        groups = _groups(settings.get("allowed_groups"), errors)
        if errors:
            raise ConfigError("\n".join(errors))
        return cls(str(token).strip(), base_url=base_url, webhook=webhook, allowed_groups=groups)

    async def run(self, on_message: Callable[[Incoming], Awaitable[None]]) -> None:
        """Receive updates until cancelled, then stop cleanly; a refused token raises ConfigError at once."""
        # httpx logs every request URL at INFO, and Bot API URLs carry the token: keep it out of the logs.
        logging.getLogger("httpx").setLevel(max(logging.getLogger("httpx").level, logging.WARNING))
        app = self._build()
        app.add_handler(TypeHandler(Update, partial(self._receive, on_message), block=False))
        try:
            await app.initialize()
        except InvalidToken:
            # After a failed initialize() the application's shutdown() returns early and leaves the HTTP
            # client open: close the bot's own (python-telegram-bot 22).
            await app.bot.shutdown()
            # `from None`: the library's message quotes the token, and tracebacks end up in logs.
            raise ConfigError("channels.telegram.token: Telegram refused the token (401): "
                              "copy it again from @BotFather") from None
        except BaseException:
            await app.bot.shutdown()
            raise
        try:
            await app.start()
            self._app = app
            assert app.updater is not None  # the builder makes one unless told not to
            if self.webhook is None:
                await app.updater.start_polling(timeout=int(self.poll_timeout), allowed_updates=list(UPDATES),
                                                drop_pending_updates=False, error_callback=_polling_failed)
            else:
                await app.updater.start_webhook(
                    listen=self.webhook.listen, port=self.webhook.port, url_path=self.webhook.path,
                    webhook_url=self.webhook.url, secret_token=self.webhook.secret_token,
                    allowed_updates=list(UPDATES), drop_pending_updates=False)
            self.ready.set()
            log.info("telegram channel receiving updates by %s", "webhook" if self.webhook else "polling")
            await asyncio.Event().wait()  # until cancelled
        finally:
            self.ready.clear()
            if app.updater is not None and app.updater.running:
                await app.updater.stop()
            if app.running:
                await app.stop()  # handles the updates already fetched and waits for their tasks
            self._app = None
            await app.shutdown()

    async def send(self, user: str, reply: Reply) -> tuple[str, ...]:
        """Send one reply as plain text, split to Telegram's limit, choices as buttons on the last part; return
        the ids of the parts (the help desk maps agents' replies to each, and can take each back)."""
        app = self._running()
        if not user.lstrip("-").isdigit():
            raise SendError(f"telegram: {user!r} is not a Telegram chat id (a whole number)", retryable=False)
        parts = split(reply.text)
        markup = self._keyboard(user, reply.choices)
        ids: list[str] = []
        for i, part in enumerate(parts):
            last = i == len(parts) - 1
            try:
                message_id = await self._send_part(app, user, part, markup if last else None)
            except SendError as exc:
                exc.sent = tuple(ids)  # the parts already out: the help desk must still know (and can retract) them
                raise
            if message_id is not None:
                ids.append(message_id)
        return tuple(ids)

    async def retract(self, room: str, message: str, notice: str) -> None:
        """Delete a message the bot sent. Telegram lets a bot delete its messages in a group for 48 hours only
        (Bot API deleteMessage); an older one is edited to `notice` instead (editMessageText has no such limit)."""
        app = self._running()
        try:
            chat, message_id = int(room), int(message)
        except ValueError:
            raise SendError(f"telegram: {room!r}/{message!r} is not a Telegram chat and message id (was the help desk "
                            "moved from another channel?)", retryable=False) from None
        try:
            await self._call(partial(app.bot.delete_message, chat_id=chat, message_id=message_id))
            return
        except SendError as exc:
            text = str(exc).lower()
            if "message to delete not found" in text:
                return  # already gone (an admin deleted it): nothing left to take back
            if "can't be deleted" not in text:
                raise
        try:
            await self._call(partial(app.bot.edit_message_text, chat_id=chat, message_id=message_id, text=notice))
        except SendError as exc:
            if "not modified" not in str(exc).lower():
                raise  # "not modified": edited before, done

    def _build(self) -> Application[Any, Any, Any, Any, Any, Any]:
        builder = ApplicationBuilder().token(self.token)
        if self.base_url is not None:
            builder = builder.base_url(self.base_url).base_file_url(_file_url(self.base_url))
        return builder.build()

    async def _receive(self, on_message: Callable[[Incoming], Awaitable[None]], update: object,
                       context: ContextTypes.DEFAULT_TYPE) -> None:
        """Turn one update into an Incoming and hand it over; never let one failure stop the channel."""
        del context
        if not isinstance(update, Update):
            return
        incoming = None
        acknowledged = None
        try:
            if update.callback_query is not None:
                incoming = self._pressed(update)
                # Answer the press and drop its keyboard alongside, so that the message reaches the runtime
                # before anything awaits: the runtime's per-chat lock then keeps the resident's order.
                acknowledged = asyncio.create_task(self._acknowledge(update, remove=incoming is not None))
            elif update.message is not None:
                incoming = self._incoming(update.message)
            if incoming is not None:
                await on_message(incoming)
        except SendError as exc:
            log.warning("telegram: a reply to update %s was not sent (%s)", update.update_id, exc)
        except Exception:
            log.exception("telegram: handling update %s failed", update.update_id)
        finally:
            if acknowledged is not None:
                await acknowledged  # never raises: _acknowledge logs its own failures

    def _incoming(self, message: Message) -> Incoming | None:
        """The Incoming of a new message, or None when it is not for us (a group not allowed, a service note)."""
        if not self._serves(message.chat.type, message.chat.id):
            return None
        at = message.date.astimezone(UTC)
        # Telegram re-posts an update it thinks was not received (webhook mode): its id lets the runtime answer
        # it once.
        message_id = f"m{message.chat.id}:{message.message_id}"
        if message.text is not None:
            if message.chat.type in ("group", "supergroup"):
                # A group is the help desk's staff room: who wrote, and which post they reply to, matter.
                sender = message.from_user
                replied = message.reply_to_message
                return Incoming(self.name, str(message.chat.id), message.text, at,
                                sender=str(sender.id) if sender else None,
                                sender_name=sender.first_name if sender else None,
                                reply_to=str(replied.message_id) if replied else None, id=message_id)
            return Incoming(self.name, str(message.chat.id), message.text, at, id=message_id)
        if any(getattr(message, kind, None) for kind in MEDIA):
            return Incoming(self.name, str(message.chat.id), "", at, kind="media", id=message_id)
        return None

    def _pressed(self, update: Update) -> Incoming | None:
        """The Incoming of a button press: the button's label, as if the resident had typed it."""
        query = update.callback_query
        assert query is not None
        message = query.message
        if message is None or not query.data or not self._serves(message.chat.type, message.chat.id):
            return None
        user = str(message.chat.id)
        text = query.data
        if text.startswith("#") and text[1:].isdigit():
            n = int(text[1:])
            labels = self._labels.get(user, ())
            # Unknown after a restart: the number alone picks the same choice (the core keeps the offers).
            text = labels[n - 1] if 0 < n <= len(labels) else str(n)
        # A press has no date of its own (its message's date is when the bot wrote it): now is when it happened.
        return Incoming(self.name, user, text, datetime.now(UTC), id=f"c{query.id}")

    async def _acknowledge(self, update: Update, remove: bool) -> None:
        """Answer the press (the client stops its spinner) and remove that message's keyboard."""
        query = update.callback_query
        assert query is not None
        try:
            await query.answer()
            if remove and query.message is not None:
                await query.get_bot().edit_message_reply_markup(
                    chat_id=query.message.chat.id, message_id=query.message.message_id, reply_markup=None)
        except TelegramError as exc:
            # An old message (over 48 hours) can no longer be edited; the choice is followed all the same.
            log.info("telegram: could not acknowledge a button press (%s)", type(exc).__name__)

    def _serves(self, chat_type: str, chat_id: int) -> bool:
        if chat_type == "private":
            return True
        return chat_type in ("group", "supergroup") and chat_id in self.allowed_groups

    def _keyboard(self, user: str, choices: Sequence[str]) -> InlineKeyboardMarkup | None:
        """One button per row; the label itself as callback data when it fits, else its number."""
        if not choices:
            return None
        rows = []
        indexed = False
        for i, label in enumerate(choices, 1):
            data = label
            if len(label.encode()) > CALLBACK_DATA_LIMIT or label.startswith("#") or not label:
                data = f"#{i}"
                indexed = True
            rows.append([InlineKeyboardButton(label, callback_data=data)])
        if indexed:
            self._labels.pop(user, None)
            self._labels[user] = tuple(choices)
            while len(self._labels) > REMEMBERED_CHATS:
                del self._labels[next(iter(self._labels))]  # the chat that waited longest
        return InlineKeyboardMarkup(rows)

    async def _send_part(self, app: Application[Any, Any, Any, Any, Any, Any], user: str, text: str,
                         markup: InlineKeyboardMarkup | None) -> str | None:
        """Send one message and return its id."""
        return await self._call(partial(app.bot.send_message, chat_id=int(user), text=text, reply_markup=markup))

    async def send_file(self, user: str, name: str, data: bytes) -> None:
        """Send a file (the resident's /mydata export) as a document (Bot API sendDocument, up to 50 MB)."""
        app = self._running()
        await self._call(partial(app.bot.send_document, chat_id=int(user),
                                 document=InputFile(data, filename=name)))

    def _running(self) -> Application[Any, Any, Any, Any, Any, Any]:
        """The running application; sending before run() (or after it stopped) may work later."""
        if self._app is None:
            raise SendError("telegram: the channel is not running (start it first)", retryable=True)
        return self._app

    async def _call(self, send: Callable[[], Awaitable[Any]]) -> str | None:
        """Make one Bot API call and return the id of the message it sent, if it sent one; wait once on flood
        control (Bot API 429 retry_after); map every Telegram error to SendError."""
        for attempt in (1, 2):
            try:
                sent = await send()
                return str(sent.message_id) if isinstance(sent, Message) else None
            except RetryAfter as exc:
                wait = _seconds(exc)
                if attempt == 2 or wait > self.max_retry_wait:
                    raise SendError(f"telegram: flood control, retry in {wait:g} s", retryable=True) from None
                await self.sleep(wait)
            except Forbidden:
                raise SendError("telegram: the user blocked the bot or left the chat (403); "
                                "nothing will reach them until they write again", retryable=False) from None
            except ChatMigrated as exc:
                raise SendError(f"telegram: the group became a supergroup (new chat id {exc.new_chat_id}); "
                                "add that id to channels.telegram.allowed_groups", retryable=False) from None
            except BadRequest as exc:
                # Telegram's description names the cause (chat not found, message too long) but never the text.
                raise SendError(f"telegram: request refused (400): {exc.message}", retryable=False) from None
            except InvalidToken:
                raise SendError("channels.telegram.token: Telegram refused the token (401): "
                                "copy it again from @BotFather", retryable=False) from None
            except NetworkError as exc:
                raise SendError(f"telegram: network problem ({type(exc).__name__})", retryable=True) from None
            except TelegramError as exc:
                raise SendError(f"telegram: {type(exc).__name__}", retryable=True) from None
        return None


def split(text: str, limit: int = TEXT_LIMIT) -> tuple[str, ...]:
    """Cut a text into messages of at most `limit` UTF-16 units: at paragraphs, then lines, then words, then hard."""
    parts: list[str] = []
    rest = text
    while _units(rest) > limit:
        fit = _fit(rest, limit)
        head = rest[:fit]
        cut = fit
        for sep in ("\n\n", "\n", " "):
            at = head.rfind(sep)
            if at > 0 and head[:at].strip():
                cut = at
                break
        piece = rest[:cut].rstrip()
        if piece:
            parts.append(piece)
        rest = rest[cut:].lstrip()
    if rest.strip() or not parts:
        parts.append(rest)
    return tuple(parts)


def _units(text: str) -> int:
    """Length as Telegram counts it: UTF-16 code units (an emoji outside the BMP counts two)."""
    return len(text.encode("utf-16-le")) // 2


def _fit(text: str, limit: int) -> int:
    """The largest prefix length (in code points) of `text` within `limit` UTF-16 units; at least 1."""
    units = 0
    for i, ch in enumerate(text):
        units += 2 if ord(ch) > 0xFFFF else 1
        if units > limit:
            return max(i, 1)
    return len(text)


def _seconds(exc: RetryAfter) -> float:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # 22.x warns that retry_after becomes a timedelta: we accept both
        value = exc.retry_after
    return value.total_seconds() if isinstance(value, timedelta) else float(value)


def _file_url(base_url: str) -> str:
    """The file address next to a Bot API address: .../bot -> .../file/bot (as api.telegram.org has them)."""
    return base_url[: -len("bot")] + "file/bot"


def _polling_failed(exc: TelegramError) -> None:
    log.warning("telegram: fetching updates failed (%s: %s); retrying", type(exc).__name__, exc)


def _webhook(value: Any, local: bool, errors: list[str]) -> Webhook | None:
    """Check `channels.telegram.webhook`; Telegram itself posts only to https (Bot API setWebhook)."""
    where = "channels.telegram.webhook"
    if not isinstance(value, Mapping):
        errors.append(f"{where}: required in webhook mode, a mapping of url, listen, port and secret_token")
        return None
    count = len(errors)
    for key in value:
        if key not in WEBHOOK_KEYS:
            errors.append(f"{where}.{key}: unknown key (known keys: {', '.join(sorted(WEBHOOK_KEYS))})")
    url = str(value.get("url") or "")
    schemes = ("https://", "http://") if local else ("https://",)
    if not url.startswith(schemes) or not urlsplit(url).hostname:
        errors.append(f"{where}.url: {url!r} is not an https address Telegram can post to "
                      "(e.g. https://bot.example.org/telegram)")
    listen = str(value.get("listen") or "127.0.0.1")
    port = value.get("port")
    if isinstance(port, str) and port.isdigit():
        port = int(port)
    if not isinstance(port, int) or isinstance(port, bool) or not 0 < port < 65536:
        errors.append(f"{where}.port: {port!r} is not a port number (1-65535) to listen on")
    secret = value.get("secret_token")
    if not isinstance(secret, str) or not _SECRET.match(secret):
        errors.append(f"{where}.secret_token: missing or malformed (1-256 of A-Z, a-z, 0-9, _ and -; "
                      "e.g. the output of `openssl rand -hex 32`)")
    if len(errors) > count:
        return None
    assert isinstance(port, int) and isinstance(secret, str)
    return Webhook(url=url, listen=listen, port=port, secret_token=secret)


def _groups(value: Any, errors: list[str]) -> frozenset[int]:
    """Check `channels.telegram.allowed_groups`: chat ids (a group's id is negative, e.g. -1001234567890)."""
    if value is None:
        return frozenset()
    if not isinstance(value, list | tuple):
        errors.append("channels.telegram.allowed_groups: must be a list of chat ids (e.g. [-1001234567890])")
        return frozenset()
    groups = set()
    for i, item in enumerate(value):
        try:
            groups.add(int(str(item)))
        except ValueError:
            errors.append(f"channels.telegram.allowed_groups[{i}]: {item!r} is not a chat id "
                          "(a whole number such as -1001234567890)")
    return frozenset(groups)
