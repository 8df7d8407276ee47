"""Encryption at rest for personal data in the database (answers, letters, transcripts, conversation state).

Keys come from the environment variable RIGHTSDESK_KEYS: one or more Fernet keys separated by commas, the first
encrypting, all decrypting (cryptography's MultiFernet). Rotation: put a new key first, keep the old ones after
it, run `run_bot.py rekey`, then drop the old keys (docs/privacy.md). Without keys the bot runs but stores plain
text, and says so at start-up.
"""

from __future__ import annotations

from collections.abc import Mapping

from cryptography.fernet import Fernet, InvalidToken, MultiFernet

ENV = "RIGHTSDESK_KEYS"
PREFIX = "fernet:"  # marks a sealed value, so plain rows from before encryption still read


class CipherError(Exception):
    """The encryption keys are unusable; the message names the variable and the fix."""


class Cipher:
    def __init__(self, keys: list[str] | None = None) -> None:
        self.keys = keys or []
        try:
            self._fernet = MultiFernet([Fernet(k.strip().encode()) for k in self.keys]) if self.keys else None
        except (ValueError, TypeError):
            raise CipherError(f"{ENV}: a key is not a Fernet key (32 url-safe base64 bytes); make one with "
                            "python -c 'from cryptography.fernet import Fernet; print(Fernet.generate_key().decode())'"
                            ) from None

    @classmethod
    def from_environment(cls, environ: Mapping[str, str]) -> Cipher:
        raw = environ.get(ENV, "")
        return cls([k for k in raw.split(",") if k.strip()])

    @property
    def enabled(self) -> bool:
        return self._fernet is not None

    def seal(self, text: str | None) -> str | None:
        if text is None or self._fernet is None:
            return text
        return PREFIX + self._fernet.encrypt(text.encode()).decode()

    def open(self, value: str | None) -> str | None:
        if value is None or not value.startswith(PREFIX):
            return value
        if self._fernet is None:
            raise CipherError(f"the database holds encrypted data but {ENV} is not set: "
                              "set the keys it was written with")
        try:
            return self._fernet.decrypt(value[len(PREFIX):].encode()).decode()
        except InvalidToken:
            raise CipherError(f"{ENV}: no key opens this data: add the key it was written with (after the new one)"
                            ) from None

    def reseal(self, value: str | None) -> str | None:
        """Re-encrypt with the first key (rotation); plain values are encrypted."""
        return self.seal(self.open(value))
