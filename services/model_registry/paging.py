"""Page tokens of the List calls: opaque to clients, the id of the last item of the previous page."""

from __future__ import annotations

import base64
import binascii

from services.common.errors import InvalidArgument

DEFAULT_PAGE_SIZE = 100
MAX_PAGE_SIZE = 1000
_PREFIX = "after:"


def page_size(requested: int) -> int:
    """0 means the default; larger than the maximum is clamped (AIP-158)."""
    return min(requested or DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)


def encode_token(last_id: str) -> str:
    return base64.urlsafe_b64encode((_PREFIX + last_id).encode()).decode().rstrip("=")


def decode_token(token: str) -> str:
    """The id to list after ("" for the first page)."""
    if not token:
        return ""
    try:
        text = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)).decode()
    except (binascii.Error, UnicodeDecodeError, ValueError):
        text = ""
    if not text.startswith(_PREFIX) or not text.isprintable() or len(text) > 300:
        raise InvalidArgument("pagination.page_token", "malformed: pass back next_page_token unchanged")
    return text.removeprefix(_PREFIX)
