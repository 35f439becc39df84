"""LISTEN on a dedicated connection that is re-made whenever it drops."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from typing import Any

import psycopg
from loguru import logger
from psycopg import sql


async def listen(
    conninfo: str,
    channel: str,
    on_payload: Callable[[dict[str, Any] | None], None],
    *,
    ready: asyncio.Event | None = None,
) -> None:
    """Call ``on_payload`` with each notification's JSON payload on ``channel``, forever.

    ``on_payload(None)`` means "anything may have happened": it is called whenever the connection
    is (re)made, since notifications sent while it was down are lost, and for a payload that is not
    a JSON object. Cancel the task to stop.
    """
    delay = 0.2
    while True:
        try:
            async with await psycopg.AsyncConnection.connect(conninfo, autocommit=True) as conn:
                await conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(channel)))
                on_payload(None)
                if ready is not None:
                    ready.set()
                delay = 0.2
                async for notify in conn.notifies():
                    try:
                        payload = json.loads(notify.payload)
                    except ValueError:
                        payload = None
                    on_payload(payload if isinstance(payload, dict) else None)
        except psycopg.OperationalError as exc:
            logger.warning("Lost the connection listening on {} ({}); reconnecting", channel, exc)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5.0)
