"""Sensitive-data detectors: emails, phone numbers, card numbers (Luhn), IBANs (mod-97), secrets, custom regexes.

A request whose text any detector flags may go only to `local: true` targets. Detectors return names,
never the matched text, so nothing sensitive reaches logs or error messages. Checksums (Luhn, IBAN
mod-97) keep ordinary long numbers from being flagged.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from typing import Any

_EMAIL = re.compile(r"[A-Za-z0-9._%+-]+@[A-Za-z0-9.-]+\.[A-Za-z]{2,}")
# +CC then 7-14 digits, or a national number in common groupings (e.g. 555-123-4567, (555) 123 4567, 06 12 34 56 78)
_PHONE = re.compile(r"(?<![\w+])(?:\+\d{1,3}[\s.-]?)?(?:\(\d{1,4}\)[\s.-]?)?\d{2,4}(?:[\s.-]\d{2,4}){2,4}(?!\w)"
                    r"|(?<![\w+])\+\d{8,15}(?!\w)")
_CARD = re.compile(r"(?<!\d)(?:\d[ -]?){12,18}\d(?!\d)")
_IBAN = re.compile(r"\b[A-Z]{2}\d{2}(?:[ ]?[A-Z0-9]){11,30}\b")
_SECRETS = [
    re.compile(r"\bsk-(?:proj-|ant-)?[A-Za-z0-9_-]{16,}"),           # OpenAI / Anthropic style
    re.compile(r"\b(?:ghp|gho|ghu|ghs|ghr|github_pat)_[A-Za-z0-9_]{20,}"),  # GitHub tokens
    re.compile(r"\bAKIA[0-9A-Z]{16}\b"),                              # AWS access key id
    re.compile(r"\bxox[abprs]-[A-Za-z0-9-]{10,}"),                    # Slack
    re.compile(r"\bAIza[0-9A-Za-z_-]{35}\b"),                         # Google API key
    re.compile(r"\bhf_[A-Za-z0-9]{30,}\b"),                           # Hugging Face
    re.compile(r"\blp_[0-9a-f]{10}_[A-Za-z0-9_-]{20,}"),              # llmpress API keys
    re.compile(r"\beyJ[A-Za-z0-9_-]{10,}\.[A-Za-z0-9_-]{10,}\.[A-Za-z0-9_-]{10,}"),  # JWT
    re.compile(r"-----BEGIN (?:[A-Z ]+ )?PRIVATE KEY-----"),
    re.compile(r"(?i:\b(?:api[_-]?key|secret|token|password|passwd)\b)\s*[:=]\s*['\"]?[A-Za-z0-9_\-./+=]{12,}"),
]
_SECRET = re.compile("|".join(f"(?:{rx.pattern})" for rx in _SECRETS))  # one pass over the text, not ten


def luhn_ok(digits: str) -> bool:
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = int(ch)
        if i % 2 == 1:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


def iban_ok(iban: str) -> bool:
    s = iban.replace(" ", "").upper()
    if not 15 <= len(s) <= 34:
        return False
    moved = s[4:] + s[:4]
    try:
        return int("".join(str(int(c, 36)) for c in moved)) % 97 == 1
    except ValueError:
        return False


def _has_email(text: str) -> bool:
    return _EMAIL.search(text) is not None


def _has_card(text: str) -> bool:
    for m in _CARD.finditer(text):
        digits = re.sub(r"\D", "", m.group())
        if 13 <= len(digits) <= 19 and luhn_ok(digits):
            return True
    return False


def _has_phone(text: str) -> bool:
    for m in _PHONE.finditer(text):
        digits = re.sub(r"\D", "", m.group())
        if 9 <= len(digits) <= 15 and not (13 <= len(digits) and luhn_ok(digits) and " " not in m.group()):
            return True
    return False


def _has_iban(text: str) -> bool:
    return any(iban_ok(m.group()) for m in _IBAN.finditer(text.upper()))


def _has_secret(text: str) -> bool:
    return _SECRET.search(text) is not None


DETECTORS: dict[str, Callable[[str], bool]] = {
    "email": _has_email, "phone": _has_phone, "card": _has_card, "iban": _has_iban, "secret": _has_secret,
}


class PrivacyScanner:
    """Runs the configured detectors plus custom named regexes over a request's text."""

    def __init__(self, detectors: Iterable[str] = tuple(DETECTORS), patterns: dict[str, str] | None = None,
                 enabled: bool = True) -> None:
        self.enabled = enabled
        self.detectors = [(n, DETECTORS[n]) for n in detectors]
        self.patterns = [(n, re.compile(rx)) for n, rx in (patterns or {}).items()]

    def scan(self, text: str) -> list[str]:
        """Names of the detectors that fired (empty: nothing sensitive found)."""
        if not self.enabled or not text:
            return []
        hits = [n for n, f in self.detectors if f(text)]
        hits += [f"pattern:{n}" for n, rx in self.patterns if rx.search(text)]
        return hits


def request_text(body: dict[str, Any]) -> str:
    """All client-supplied text of a completions or chat body (prompt, messages, contents parts)."""
    parts: list[str] = []
    prompt = body.get("prompt")
    if isinstance(prompt, str):
        parts.append(prompt)
    elif isinstance(prompt, list):
        parts += [p for p in prompt if isinstance(p, str)]
    for m in body.get("messages") or []:
        if not isinstance(m, dict):
            continue
        c = m.get("content")
        if isinstance(c, str):
            parts.append(c)
        elif isinstance(c, list):
            parts += [str(p.get("text", "")) for p in c if isinstance(p, dict)]
    return "\n".join(parts)
