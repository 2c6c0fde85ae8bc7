"""Text PostgreSQL stores, from whatever a tenant's endpoint or event put in it."""

from __future__ import annotations


def storable_text(raw: bytes | str, cap_bytes: int) -> str:
    """``raw`` as text of at most ``cap_bytes`` UTF-8 bytes that PostgreSQL accepts: invalid UTF-8
    and U+0000 (which PostgreSQL text refuses) become U+FFFD, a lone surrogate becomes ``?``, and a
    character cut by the cap is dropped."""
    if isinstance(raw, str):
        raw = raw.encode("utf-8", "replace")
    text = raw.decode("utf-8", "replace")
    if "\x00" in text:
        text = text.replace("\x00", "\ufffd")
    encoded = text.encode("utf-8")
    if len(encoded) > cap_bytes:
        text = encoded[:cap_bytes].decode("utf-8", "ignore")
    return text
