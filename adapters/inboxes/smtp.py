"""The e-mail inbox: each case as one e-mail to the city's address, through its SMTP server.

The e-mail is `file.as_email` (the letter as text, the case as a JSON attachment) with the Message-ID
`<REF@rightsdesk>`, the same on every retry, so the city's mail system can recognise a duplicate. smtplib is
blocking: it runs in a thread (`asyncio.to_thread`) so the bot keeps answering residents meanwhile.

Failures follow the SMTP reply classes (RFC 5321 §4.2.1): 4yz is transient (try again later), 5yz is permanent.
A refused connection or a timeout is transient too.
"""

from __future__ import annotations

import asyncio
import re
import smtplib
import ssl
from collections.abc import Mapping
from email.message import EmailMessage
from email.utils import parseaddr
from pathlib import Path
from typing import Any

from adapters.inboxes.file import as_email, message_id
from adapters.inboxes.settings import Settings, is_loopback
from bot.ports import DeliveryError, Letter, Receipt

TLS_MODES = ("starttls", "ssl", "none")
_ADDRESS = re.compile(r"[^\s<>@\"']+@[^\s<>@\"']+")


class SmtpInbox:
    def __init__(self, host: str, port: int, to: str, sender: str, username: str | None = None,
                 password: str | None = None, tls: str = "starttls", timeout: float = 30.0) -> None:
        self.host = host
        self.port = port
        self.to = to
        self.sender = sender
        self.username = username
        self.password = password
        self.tls = tls
        self.timeout = timeout

    @classmethod
    def from_settings(cls, name: str, settings: Mapping[str, Any], data_dir: Path) -> SmtpInbox:
        """Check the settings of an SMTP inbox and build it."""

        s = Settings(name, "smtp", settings,
                     ("host", "port", "to", "from", "username", "password", "tls", "timeout"))
        host = s.text("host", "smtp.city.example")
        port = s.port("port", 587)
        to = s.text("to", "privacy@city.example")
        sender = s.text("from", "rightsdesk@city.example")
        for key, value in (("to", to), ("from", sender)):
            if value and "@" not in parseaddr(value)[1]:
                s.fail(key, "is not an e-mail address", f"write one address, e.g. `{key}: privacy@city.example`")
        username = s.optional("username", "rightsdesk")
        password = s.optional("password", "${SMTP_PASSWORD}")
        if (username is None) != (password is None):
            s.fail("password" if username else "username", "username and password go together",
                   "set both (the password from an environment variable, `${SMTP_PASSWORD}`), or neither")
        tls = s.choice("tls", TLS_MODES)
        if tls == "none" and username and host and not is_loopback(host):
            # A password sent in clear to another machine can be read on the way (RFC 8314 §3: use TLS).
            s.fail("tls", "'none' would send the password unencrypted", "use starttls (port 587) or ssl (port 465)")
        timeout = s.number("timeout", 30, 0.1, 600)
        s.done()
        return cls(host, port, to, sender, username, password, tls, timeout)

    async def deliver(self, letter: Letter) -> Receipt:
        message = as_email(letter, self.sender, self.to)
        await asyncio.to_thread(self._send, message)
        return Receipt(message_id(letter.ref), f"accepted by {self.host}:{self.port}")

    def _send(self, message: EmailMessage) -> None:
        """Send one e-mail; raise DeliveryError saying whether a retry may work."""
        where = f"SMTP {self.host}:{self.port}"
        client: smtplib.SMTP | None = None
        try:
            if self.tls == "ssl":
                client = smtplib.SMTP_SSL(self.host, self.port, timeout=self.timeout,
                                          context=ssl.create_default_context())
            else:
                client = smtplib.SMTP(self.host, self.port, timeout=self.timeout)
            if self.tls == "starttls":
                client.starttls(context=ssl.create_default_context())
            if self.username and self.password:
                client.login(self.username, self.password)
            refused = client.send_message(message, from_addr=self.sender, to_addrs=[self.to])
            if refused:  # only possible with several recipients; kept for safety
                codes = [code for code, _ in refused.values()]
                raise DeliveryError(f"{where} refused the recipient ({codes[0]})", retryable=_transient(codes))
        except smtplib.SMTPRecipientsRefused as exc:
            codes = [code for code, _ in exc.recipients.values()]
            reply = next(iter(exc.recipients.values()), (0, b""))
            raise DeliveryError(f"{where} refused the recipient: {_reply(*reply)}",
                                retryable=_transient(codes)) from exc
        except smtplib.SMTPNotSupportedError as exc:
            # The server offers no STARTTLS: that will not change by itself (RFC 3207).
            raise DeliveryError(f"{where}: {exc} (tls: starttls): ask the city for the TLS port, or use tls: ssl",
                                retryable=False) from exc
        except smtplib.SMTPAuthenticationError as exc:
            raise DeliveryError(f"{where} refused the login: {_reply(exc.smtp_code, exc.smtp_error)}: check "
                                "username and password", retryable=_transient([exc.smtp_code])) from exc
        except smtplib.SMTPResponseException as exc:
            raise DeliveryError(f"{where} answered {_reply(exc.smtp_code, exc.smtp_error)}",
                                retryable=_transient([exc.smtp_code])) from exc
        except (smtplib.SMTPException, OSError) as exc:
            # Refused, reset or timed out connections (and a server hanging up) may work later.
            raise DeliveryError(f"{where}: cannot reach the server ({type(exc).__name__}: {exc})",
                                retryable=True) from exc
        finally:
            if client is not None:
                _close(client)


def _transient(codes: list[int]) -> bool:
    """Whether every reply is transient: 4yz (RFC 5321 §4.2.1); anything else is a permanent refusal."""
    return bool(codes) and all(400 <= code < 500 for code in codes)


def _reply(code: int, text: bytes | str) -> str:
    """An SMTP reply for a log line, with e-mail addresses blanked (they must not reach logs)."""
    if isinstance(text, bytes):
        text = text.decode("utf-8", "replace")
    return f"{code} {_ADDRESS.sub('<address>', text)}"[:300]


def _close(client: smtplib.SMTP) -> None:
    """Say QUIT if the connection is still open, then close; a failure here must not undo a sent e-mail."""
    try:
        if client.sock is not None:
            client.quit()
    except (smtplib.SMTPException, OSError):
        pass
    finally:
        client.close()
