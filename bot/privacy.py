"""The bot's own data protection: masking what residents reveal by accident, and ids that logs may carry.

GDPR Art. 5(1)(c) (data minimisation) and Art. 25 (data protection by design): the unanswered-questions report
keeps text only, with e-mail addresses, phone numbers and ID numbers masked; logs carry a keyed hash of a
resident's id, never the id, a name or message text.
"""

from __future__ import annotations

import hashlib
import hmac
import re

# Order matters: e-mail first (it contains digits and dots), then IBANs and ID numbers, then phone numbers.
_PATTERNS = [
    (re.compile(r"[\w.+-]+@[\w-]+(?:\.[\w-]+)+"), "[email]"),
    (re.compile(r"\b[A-Z]{2}\d{2}(?: ?[A-Z0-9]{4}){3,7}(?: ?[A-Z0-9]{1,3})?\b", re.I), "[iban]"),
    (re.compile(r"\b[XYZ]?\d{7,8}[A-Z]\b", re.I), "[id]"),  # Spanish DNI / NIE
    (re.compile(r"\b\d{3}-\d{2}-\d{4}\b"), "[id]"),  # US Social Security number
    (re.compile(r"(?<![\w+])\+?\d[\d ()./-]{6,}\d\b"), "[number]"),  # phones, BSN and other long numbers
]


def mask(text: str) -> str:
    """Replace e-mail addresses, phone numbers and ID numbers by placeholders."""
    for pattern, placeholder in _PATTERNS:
        text = pattern.sub(placeholder, text)
    return text


def pseudonym(value: str, salt: bytes) -> str:
    """A keyed hash for logs: the same resident gives the same token, which cannot be turned back into the id."""
    return hmac.new(salt, value.encode(), hashlib.sha256).hexdigest()[:12]
