"""The README's Python client examples ("### Python client") run as written against a real server,
with only the address replaced. Blocks that name no server address (the TLS one) are not run."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from orisun.client import Client
from orisun.runtime.postgres import EmbeddedPostgres
from tests.client_support import BOUNDARIES, Collector
from tests.support import ADMIN, CHANNEL_OPTIONS, running_server, wait_for

pytestmark = pytest.mark.timeout(120)
README = Path(__file__).resolve().parent.parent / "README.md"
ADDRESS = "localhost:50051"


def client_examples() -> list[str]:
    text = README.read_text(encoding="utf-8")
    section = text.split("\n### Python client\n", 1)[1].split("\n### ", 1)[0]
    return re.findall(r"```python\n(.*?)```", section, re.DOTALL)


def test_the_readme_has_the_examples() -> None:
    blocks = client_examples()
    assert len(blocks) >= 5
    joined = "\n".join(blocks)
    for needed in ("save_events", "get_events", "subscribe(", "publish(", "consume(", "create_user(", "AsyncClient",
                   "WrongExpectedVersion", "root_certificates"):
        assert needed in joined, needed


def test_the_readme_python_client_examples_run(postgres: EmbeddedPostgres) -> None:
    with running_server(postgres.conninfo, "test_readme_client", boundaries=BOUNDARIES) as server:
        # A new consumer name starts with what is published after it exists: make "mailer" exist,
        # as a deployed consumer would, before the examples publish and consume.
        client = Client(server.address, username=ADMIN[0], password=ADMIN[1], options=CHANNEL_OPTIONS)
        with client, client.consume("order.notifications", "mailer") as consumer:
            seen = Collector(consumer, lambda message: message.ack())

            def probed() -> bool:
                client.publish("order.notifications", {"probe": True})
                return bool(seen.items)

            wait_for(probed, 30, "the mailer consumer to exist")
        for block in client_examples():
            if ADDRESS not in block:
                continue
            exec(compile(block.replace(ADDRESS, server.address), "README.md", "exec"), {"__name__": "readme"})
