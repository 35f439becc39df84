"""Creating and updating the JetStream streams Orisun owns, replicated as the cluster allows."""

from __future__ import annotations

import dataclasses

import nats.js.errors
from loguru import logger
from nats.js import JetStreamContext
from nats.js.api import StreamConfig

# JetStream's error codes for "not enough servers for the replicas asked": 10023 (insufficient
# resources) when too few servers are known, 10005 ("no suitable peers for placement") while the
# cluster is still forming: the other servers are routed but not yet ready to hold a replica.
_TOO_FEW_SERVERS = frozenset({10023, 10005})


async def add_or_update_stream(js: JetStreamContext, config: StreamConfig, replicas: int, *, update: bool) -> None:
    """Create (or with ``update``, reconfigure) a stream with ``replicas`` copies, or fewer when
    fewer servers are up (a cluster starting with a node down): the stream then works at once,
    with a warning, instead of refusing service until every node is back."""
    for count in range(max(replicas, 1), 0, -1):
        try:
            candidate = dataclasses.replace(config, num_replicas=count)
            if update:
                await js.update_stream(candidate)
            else:
                await js.add_stream(candidate)
        except nats.js.errors.APIError as exc:
            if exc.err_code not in _TOO_FEW_SERVERS or count == 1:
                raise
            continue
        if count < replicas:
            logger.warning("JetStream stream {} has {} replica(s), not {}: not enough NATS servers are up",
                           config.name, count, replicas)
        return
