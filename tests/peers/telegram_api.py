"""A local Telegram Bot API server on 127.0.0.1 for tests: the methods rightsdesk's Telegram channel calls.

It answers POST /bot<TOKEN>/<method> (form-encoded, JSON values as JSON text, as python-telegram-bot sends them),
with the HTTP statuses Telegram uses for errors (python-telegram-bot reads the status, not `ok`). A test pushes
updates (`text`, `photo`, `press`, `push`) and waits, bounded, for what the bot called (`wait_sent`, `wait_call`).
`getUpdates` is a long poll that wakes when an update is pushed, so tests are fast whatever the poll timeout.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from email.parser import BytesParser
from email.policy import default
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs

TEXT_LIMIT = 4096  # Bot API sendMessage: longer texts are refused with 400 "message is too long"
LONG_POLL_CAP = 5.0  # seconds: a getUpdates never waits longer than this, whatever the bot asks
BOT_USER = {"id": 4242, "is_bot": True, "first_name": "rightsdesk", "username": "rightsdesk_test_bot"}


@dataclass(frozen=True)
class Call:
    """One Bot API call the bot made: the method and its parameters (JSON values decoded)."""

    method: str
    params: dict[str, Any]


class BotAPI:
    """A threaded Bot API server; use as a context manager, or start() and stop()."""

    def __init__(self, token: str) -> None:
        self.token = token
        self.calls: list[Call] = []
        self._updates: list[dict[str, Any]] = []
        self._next_update = 1
        self._next_message = 100
        self.deleted: set[int] = set()  # message ids the bot deleted (deleteMessage)
        self.aged: set[int] = set()  # message ids a test made older than 48 hours (no longer deletable)
        self._failures: dict[str, list[tuple[int, dict[str, Any]]]] = {}
        self._cond = threading.Condition()
        self._stopping = False
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # -- life cycle -------------------------------------------------------------------------------------------

    def start(self) -> BotAPI:
        handler = type("Handler", (_Handler,), {"api": self})
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
                                        name="telegram-api", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        with self._cond:
            self._stopping = True
            self._cond.notify_all()  # release waiting long polls
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def __enter__(self) -> BotAPI:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def port(self) -> int:
        assert self._server is not None, "start() the server first"
        return self._server.server_address[1]

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/bot"

    # -- what a test pushes -----------------------------------------------------------------------------------

    def push(self, update: dict[str, Any]) -> int:
        """Queue an update (its update_id is assigned here) and wake the bot's long poll; return the id."""
        with self._cond:
            update_id = self._next_update
            self._next_update += 1
            self._updates.append({"update_id": update_id, **update})
            self._cond.notify_all()
            return update_id

    def message(self, chat_id: int, chat_type: str = "private", date: int | None = None,
                **fields: Any) -> dict[str, Any]:
        """A message as Telegram sends it (without update wrapper)."""
        with self._cond:
            self._next_message += 1
            message_id = self._next_message
        chat: dict[str, Any] = {"id": chat_id, "type": chat_type}
        if chat_type in ("group", "supergroup", "channel"):
            chat["title"] = "A group"
        return {"message_id": message_id, "date": int(time.time()) if date is None else date, "chat": chat,
                "from": {"id": abs(chat_id) if chat_type == "private" else 777, "is_bot": False,
                         "first_name": "Resident"}, **fields}

    def text(self, chat_id: int, text: str, chat_type: str = "private", date: int | None = None,
             sender: tuple[int, str] | None = None, reply_to: int | None = None) -> int:
        """Push a text message; a leading /command gets its bot_command entity, as Telegram marks it. In a group,
        `sender` is (user id, first name) and `reply_to` the id of the message replied to."""
        fields: dict[str, Any] = {"text": text}
        if sender is not None:
            fields["from"] = {"id": sender[0], "is_bot": False, "first_name": sender[1]}
        if reply_to is not None:
            fields["reply_to_message"] = {"message_id": reply_to, "date": int(time.time()),
                                          "chat": {"id": chat_id, "type": chat_type, "title": "A group"}}
        if text.startswith("/"):
            command = text.split()[0]
            fields["entities"] = [{"type": "bot_command", "offset": 0, "length": len(command)}]
        return self.push({"message": self.message(chat_id, chat_type, date, **fields)})

    def photo(self, chat_id: int, caption: str | None = None) -> int:
        """Push a photo (two sizes, as Telegram sends them)."""
        sizes = [{"file_id": f"photo-{n}", "file_unique_id": f"u-{n}", "width": n, "height": n, "file_size": n * 10}
                 for n in (90, 320)]
        fields: dict[str, Any] = {"photo": sizes}
        if caption is not None:
            fields["caption"] = caption
        return self.push({"message": self.message(chat_id, **fields)})

    def press(self, chat_id: int, label: str) -> int:
        """Press the button labelled `label` on the last keyboard the bot sent to that chat."""
        for call in reversed(self.sent(chat_id)):
            markup = call.params.get("reply_markup")
            if not markup:
                continue
            for row in markup["inline_keyboard"]:
                for button in row:
                    if button["text"] == label:
                        return self.callback(chat_id, call.params["message_id"], button["callback_data"],
                                             call.params["text"])
            raise AssertionError(f"no button {label!r} on the last keyboard sent to {chat_id}")
        raise AssertionError(f"no keyboard was sent to {chat_id}")

    def callback(self, chat_id: int, message_id: int, data: str, text: str = "...") -> int:
        """Push a callback query (a button press) on the bot's message `message_id`."""
        message = {"message_id": message_id, "date": int(time.time()), "chat": {"id": chat_id, "type": "private"},
                   "from": BOT_USER, "text": text}
        query = {"id": f"cq-{message_id}-{self._next_update}", "chat_instance": f"ci-{chat_id}", "data": data,
                 "from": {"id": abs(chat_id), "is_bot": False, "first_name": "Resident"}, "message": message}
        return self.push({"callback_query": query})

    def fail_next(self, method: str, status: int, description: str, **parameters: Any) -> None:
        """Make the next call of `method` fail as Telegram would (e.g. 429 with retry_after, 403 blocked)."""
        body: dict[str, Any] = {"ok": False, "error_code": status, "description": description}
        if parameters:
            body["parameters"] = parameters
        with self._cond:
            self._failures.setdefault(method, []).append((status, body))

    # -- what a test reads ------------------------------------------------------------------------------------

    def calls_of(self, method: str) -> list[Call]:
        with self._cond:
            return [c for c in self.calls if c.method == method]

    def sent(self, chat_id: int) -> list[Call]:
        """The sendMessage calls to one chat that Telegram accepted, in order (with the message_id given)."""
        return [c for c in self.calls_of("sendMessage") if int(c.params["chat_id"]) == chat_id
                and "message_id" in c.params]

    def wait(self, predicate: Callable[[], bool], timeout: float = 10.0) -> None:
        """Block until `predicate()` holds (checked on every call the bot makes); fail after `timeout` s."""
        with self._cond:
            if not self._cond.wait_for(predicate, timeout=timeout):
                raise AssertionError(f"the bot did not make the expected calls within {timeout} s")

    async def wait_sent(self, chat_id: int, count: int, timeout: float = 10.0) -> list[Call]:
        """Wait (without blocking the event loop) until `count` messages went to a chat; return them all."""
        await asyncio.to_thread(self.wait, lambda: len(self.sent(chat_id)) >= count, timeout)
        return self.sent(chat_id)

    async def wait_call(self, method: str, count: int = 1, timeout: float = 10.0) -> list[Call]:
        """Wait (without blocking the event loop) until `method` was called `count` times; return the calls."""
        await asyncio.to_thread(self.wait, lambda: len(self.calls_of(method)) >= count, timeout)
        return self.calls_of(method)

    # -- the Bot API ------------------------------------------------------------------------------------------

    def answer(self, token: str, method: str, params: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        """The status and JSON body Telegram would answer to one call."""
        if token != self.token:
            return 401, {"ok": False, "error_code": 401, "description": "Unauthorized"}
        with self._cond:
            failures = self._failures.get(method)
            if failures:
                status, body = failures.pop(0)
                self.calls.append(Call(method, params))
                self._cond.notify_all()
                return status, body
        if method == "getUpdates":
            return 200, {"ok": True, "result": self._get_updates(params)}
        handler = getattr(self, f"_{method}", None)
        if handler is None:
            return 404, {"ok": False, "error_code": 404, "description": "Not Found: method not found"}
        status, result = handler(params)
        with self._cond:
            self.calls.append(Call(method, params))
            self._cond.notify_all()
        if status != 200:
            return status, {"ok": False, "error_code": status, "description": result}
        return 200, {"ok": True, "result": result}

    def _get_updates(self, params: dict[str, Any]) -> list[dict[str, Any]]:
        offset = int(params.get("offset") or 0)
        timeout = min(float(params.get("timeout") or 0), LONG_POLL_CAP)
        deadline = time.monotonic() + timeout
        with self._cond:
            if offset:
                # Bot API getUpdates: an offset confirms (forgets) every update with a lower id.
                self._updates = [u for u in self._updates if u["update_id"] >= offset]
            while not self._updates and not self._stopping:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._cond.wait(left)
            self.calls.append(Call("getUpdates", params))
            return list(self._updates[: int(params.get("limit") or 100)])

    def _getMe(self, params: dict[str, Any]) -> tuple[int, Any]:  # noqa: N802 (Bot API method names)
        return 200, BOT_USER

    def _deleteWebhook(self, params: dict[str, Any]) -> tuple[int, Any]:  # noqa: N802
        return 200, True

    def _setWebhook(self, params: dict[str, Any]) -> tuple[int, Any]:  # noqa: N802
        return 200, True

    def _sendMessage(self, params: dict[str, Any]) -> tuple[int, Any]:  # noqa: N802
        text = str(params.get("text") or "")
        if not text.strip():
            return 400, "Bad Request: message text is empty"
        if len(text.encode("utf-16-le")) // 2 > TEXT_LIMIT:
            return 400, "Bad Request: message is too long"
        return 200, {**self._new_message(params), "text": text}

    def _new_message(self, params: dict[str, Any]) -> dict[str, Any]:
        """A Message the bot sent: the next id (kept in the call's params), the chat, the date."""
        with self._cond:
            self._next_message += 1
            params["message_id"] = self._next_message
        chat = {"id": int(params["chat_id"]), "type": "private"}
        return {"message_id": params["message_id"], "date": int(time.time()), "chat": chat, "from": BOT_USER}

    def _sendDocument(self, params: dict[str, Any]) -> tuple[int, Any]:  # noqa: N802
        document = params.get("document")
        if not isinstance(document, dict) or not document["data"]:
            return 400, "Bad Request: file must be non-empty"
        message = self._new_message(params)
        return 200, {**message, "document": {"file_id": f"doc{message['message_id']}", "file_unique_id": "u",
                                             "file_name": document["filename"], "file_size": len(document["data"])}}

    def _deleteMessage(self, params: dict[str, Any]) -> tuple[int, Any]:  # noqa: N802
        # Bot API deleteMessage: a bot deletes its own messages in a group for 48 hours only (`aged` marks the
        # older ones); a message already deleted is "not found".
        message_id = int(params["message_id"])
        with self._cond:
            if message_id in self.deleted or message_id > self._next_message:
                return 400, "Bad Request: message to delete not found"
            if message_id in self.aged:
                return 400, "Bad Request: message can't be deleted"
            self.deleted.add(message_id)
        return 200, True

    def _editMessageText(self, params: dict[str, Any]) -> tuple[int, Any]:  # noqa: N802
        message_id = int(params["message_id"])
        if message_id in self.deleted or message_id > self._next_message:
            return 400, "Bad Request: message to edit not found"
        chat = {"id": int(params["chat_id"]), "type": "private"}
        return 200, {"message_id": message_id, "date": int(time.time()), "chat": chat, "from": BOT_USER,
                     "text": str(params.get("text") or "")}

    def _answerCallbackQuery(self, params: dict[str, Any]) -> tuple[int, Any]:  # noqa: N802
        return 200, True

    def _editMessageReplyMarkup(self, params: dict[str, Any]) -> tuple[int, Any]:  # noqa: N802
        chat = {"id": int(params["chat_id"]), "type": "private"}
        return 200, {"message_id": int(params["message_id"]), "date": int(time.time()), "chat": chat,
                     "from": BOT_USER, "text": "..."}


class _Handler(BaseHTTPRequestHandler):
    api: BotAPI
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # else each small answer waits ~40 ms for the client's delayed ACK

    def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length)
        head, _, method = self.path.partition("?")[0].lstrip("/").rpartition("/")
        if not head.startswith("bot"):
            self._reply(404, {"ok": False, "error_code": 404, "description": "Not Found"})
            return
        status, body = self.api.answer(head[len("bot"):], method, _params(raw, self.headers.get("Content-Type")))
        self._reply(status, body)

    def _reply(self, status: int, body: dict[str, Any]) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        try:
            self.wfile.write(data)
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True  # the bot stopped waiting for a long poll: nobody to answer

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 (the base class's name)
        pass  # quiet tests; the calls are recorded on the BotAPI


def _params(raw: bytes, content_type: str | None) -> dict[str, Any]:
    """Decode a call's parameters: form fields, with JSON values (reply_markup, allowed_updates) decoded; an
    uploaded file (multipart/form-data, as sendDocument sends it) as {"filename", "data"}."""
    if content_type and content_type.startswith("application/json"):
        return dict(json.loads(raw or b"{}"))
    if content_type and content_type.startswith("multipart/form-data"):
        message = BytesParser(policy=default).parsebytes(f"Content-Type: {content_type}\r\n\r\n".encode() + raw)
        params: dict[str, Any] = {}
        for part in message.iter_parts():
            name = part.get_param("name", header="content-disposition")
            payload = part.get_payload(decode=True) or b""
            filename = part.get_filename()
            params[name] = {"filename": filename, "data": payload} if filename else payload.decode()
        return params
    params = {k: v[-1] for k, v in parse_qs(raw.decode(), keep_blank_values=True).items()}
    for key in ("reply_markup", "allowed_updates"):
        if key in params:
            params[key] = json.loads(params[key])
    return params
