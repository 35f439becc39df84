"""What the dashboard reads from a request: its JSON body and the text fields in it, and path
parameters. One way for every route, so that a client's mistake (a body nested 10,000 deep, a
bogus charset, a lone surrogate, NUL in a path) is a 4xx naming the field, never a 500."""

from __future__ import annotations

import json
from typing import Any

from aiohttp import web

from orisun.errors import InvalidArgument
from orisun.service.validation import is_storable

MAX_JSON_DEPTH = 64  # nesting of a request's JSON body; the dashboard's bodies are flat objects
# A request body: 64 KiB is plenty for every form; only DELETE /api/users takes up to 1 MiB, for
# a name stored before usernames were limited (they could be that long). Parsing is the cost: a
# 1 MiB body of empty lists costs ~0.2 s of CPU, so the login (open to anyone) gets the small limit.
MAX_BODY_BYTES = 64 * 1024
MAX_LARGE_BODY_BYTES = 1024 * 1024


def username_in_path(request: web.Request) -> str:
    """The {username} of a path; one PostgreSQL cannot store (NUL, lone surrogate) cannot exist."""
    username = request.match_info["username"]
    if not is_storable(username):
        raise InvalidArgument("username", "must be text without NUL characters or lone surrogates")
    return username


def _deeper_than(value: Any, limit: int) -> bool:
    """Whether parsed JSON nests containers more than ``limit`` deep (level by level, no recursion:
    ~50 ms for 1 MiB of empty lists)."""
    level = [value]
    depth = 0
    while level:
        containers = [item for item in level if isinstance(item, dict | list)]
        if not containers:
            return False
        depth += 1
        if depth > limit:
            return True
        level = [child for item in containers for child in (item.values() if isinstance(item, dict) else item)]
    return False


async def json_body(request: web.Request, max_bytes: int = MAX_BODY_BYTES) -> dict[str, Any]:
    """The request's JSON object, read the one way every route reads one: at most ``max_bytes``
    (413 beyond), UTF-8 (415 for another charset), at most MAX_JSON_DEPTH levels deep."""
    charset = request.charset
    if charset is not None and charset.lower().replace("-", "").replace("_", "") != "utf8":
        raise web.HTTPUnsupportedMediaType(reason="Content-Type: the charset must be utf-8")
    size, raw = request.content_length or 0, b""
    if size <= max_bytes:  # else refused unread
        raw = await request.read()  # a chunked body: read up to client_max_size
        size = len(raw)
    if size > max_bytes:
        raise web.HTTPRequestEntityTooLarge(max_size=max_bytes, actual_size=size,
                                            reason=f"body: larger than {max_bytes} bytes")
    try:
        text = raw.decode("utf-8")
        body = json.loads(text)
    except UnicodeDecodeError:
        raise InvalidArgument("body", "is not UTF-8") from None
    except RecursionError:
        raise InvalidArgument("body", f"JSON nested deeper than {MAX_JSON_DEPTH} levels") from None
    except ValueError:  # also a number of more than 4,300 digits, which is no JSONDecodeError
        raise InvalidArgument("body", "is not valid JSON") from None
    # Counting brackets first spares the walk for every ordinary (flat) body.
    if text.count("[") + text.count("{") > MAX_JSON_DEPTH and _deeper_than(body, MAX_JSON_DEPTH):
        raise InvalidArgument("body", f"JSON nested deeper than {MAX_JSON_DEPTH} levels")
    if not isinstance(body, dict):
        raise InvalidArgument("body", "must be a JSON object")
    return body


def text_field(body: dict[str, Any], field: str, *, required: bool = True) -> str:
    value = body.get(field, "")
    if not isinstance(value, str):
        raise InvalidArgument(field, "must be a string")
    if required and not value:
        raise InvalidArgument(field, "is required")
    if not is_storable(value):  # JSON's \ud800 escapes make lone surrogates, which cannot be encoded
        raise InvalidArgument(field, "must be text without NUL characters or lone surrogates")
    return value
