"""The file inbox (the embedded default): one .eml and one .json per case in a folder.

Writes are atomic (a temporary file renamed into place) and named by the case reference, so delivering the same
case twice leaves one copy: the reference is the idempotency key.
"""

from __future__ import annotations

import json
import os
from datetime import datetime
from email.message import EmailMessage
from email.utils import format_datetime
from pathlib import Path

from bot.ports import DeliveryError, Letter, Receipt


def message_id(ref: str) -> str:
    """The e-mail Message-ID of a case: the same for every retry, so a duplicate is recognisable."""
    return f"<{ref}@rightsdesk>"


def as_email(letter: Letter, sender: str, to: str) -> EmailMessage:
    """The case as an e-mail: the letter as text, the case's data as a JSON attachment."""
    msg = EmailMessage()
    msg["From"] = sender
    msg["To"] = to
    msg["Subject"] = letter.subject
    msg["Message-ID"] = message_id(letter.ref)
    msg["Date"] = format_datetime(datetime.fromisoformat(letter.filed_at))
    msg["X-Rightsdesk-Ref"] = letter.ref
    msg.set_content(letter.body)
    msg.add_attachment(json.dumps(letter.as_json(), ensure_ascii=False, indent=2).encode(), maintype="application",
                       subtype="json", filename=f"{letter.ref}.json")
    return msg


class FileInbox:
    def __init__(self, folder: Path, to: str = "city@localhost", sender: str = "rightsdesk@localhost") -> None:
        self.folder = Path(folder)
        self.to = to
        self.sender = sender

    async def deliver(self, letter: Letter) -> Receipt:
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            _write(self.folder / f"{letter.ref}.eml", bytes(as_email(letter, self.sender, self.to)))
            _write(self.folder / f"{letter.ref}.json",
                   json.dumps(letter.as_json(), ensure_ascii=False, indent=2).encode())
        except OSError as exc:
            # A full disk or a missing permission may be mended by staff: try again later.
            raise DeliveryError(f"cannot write to {self.folder}: {exc.strerror}", retryable=True) from exc
        return Receipt(message_id(letter.ref), f"written to {self.folder}")


def _write(path: Path, data: bytes) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
