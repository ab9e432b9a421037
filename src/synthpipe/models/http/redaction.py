"""Keeping secrets out of what a backend shows: headers never echoed, credentials cut out of URLs,
an API key echoed in an error body replaced by ``***``."""

from __future__ import annotations

from typing import Optional
from urllib.parse import urlsplit, urlunsplit

SENSITIVE_HEADERS = frozenset({"authorization", "api-key", "x-api-key", "proxy-authorization"})


def redact(text: str, secret: Optional[str]) -> str:
    if secret and len(secret) >= 4:
        text = text.replace(secret, "***")
    return text


def safe_url(url: str) -> str:
    """The URL without user:password@."""
    parts = urlsplit(url)
    if "@" not in parts.netloc:
        return url
    return urlunsplit(parts._replace(netloc=parts.netloc.rsplit("@", 1)[1]))
