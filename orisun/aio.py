"""Small asyncio helpers shared by the layers."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

from loguru import logger


async def cancel_and_wait(tasks: Sequence[asyncio.Task[Any] | None], within: float = 5.0) -> None:
    """Cancel ``tasks`` and wait for them to end, cancelling again while they still run.

    One cancel is not always enough: a library that turns the cancellation into an error of its
    own (psycopg can, mid-query) lets a retrying loop swallow it and run on, and a plain ``await``
    of that task would then never return. Gives up, with a warning, after ``within`` seconds.
    """
    loop = asyncio.get_running_loop()
    pending = {task for task in tasks if task is not None and not task.done()}
    deadline = loop.time() + within
    while pending:
        for task in pending:
            task.cancel()
        left = deadline - loop.time()
        if left <= 0:
            logger.warning("Still running {:g}s after being cancelled: {}", within,
                           ", ".join(task.get_name() for task in pending))
            return
        _, pending = await asyncio.wait(pending, timeout=min(0.5, left))
