"""One source for each default (#16): the ``VARIABLES`` table in orisun/config.py. ``Settings``,
``load_settings``, the README's configuration table and the client's default target all agree
with it, so that none of them can drift."""

from __future__ import annotations

import dataclasses
import inspect
import os
from pathlib import Path

import pytest

from orisun.client import AsyncClient, Client
from orisun.client._channel import MAX_RECEIVE_MESSAGE_LENGTH
from orisun.config import VARIABLES, Settings, load_settings

pytestmark = pytest.mark.timeout(30)

README = (Path(__file__).resolve().parent.parent / "README.md").read_text(encoding="utf-8")
DEFAULTS = {v.name: v.default for v in VARIABLES}


def _readme_table() -> list[tuple[str, str]]:
    """(variable, default) of each row of the README's configuration table, backticks dropped."""
    rows = []
    for line in README.splitlines():
        if line.startswith("| `ORISUN_"):
            cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
            rows.append((cells[0].strip("`"), cells[1].replace("`", "")))
    return rows


def test_the_readme_table_lists_every_variable_with_the_code_s_default() -> None:
    rows = _readme_table()
    assert [name for name, _ in rows] == [v.name for v in VARIABLES], "the README's table and VARIABLES differ"
    for name, default in rows:
        assert default == DEFAULTS[name], f"{name}: the README says {default!r}, the code {DEFAULTS[name]!r}"


def test_settings_defaults_are_what_an_empty_environment_gives(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith("ORISUN_"):
            monkeypatch.delenv(name)
    loaded = load_settings()
    # Two defaults differ on purpose: the data dir depends on the user, and Settings built in code
    # (tests, embedding) run one process while the command line uses every CPU.
    assert Settings(data_dir=loaded.data_dir) == dataclasses.replace(loaded, workers=1)


def test_the_clients_default_target_is_the_server_s_default_port() -> None:
    for client in (Client, AsyncClient):
        target = inspect.signature(client).parameters["target"].default
        assert target == f"localhost:{DEFAULTS['ORISUN_GRPC_PORT']}", client


def test_the_client_accepts_the_largest_message_the_server_sends_by_default() -> None:
    # A page of GetEvents up to the limit, plus room for one event (64 KiB).
    assert int(DEFAULTS["ORISUN_GRPC_MAX_MESSAGE_SIZE"]) + 64 * 1024 == MAX_RECEIVE_MESSAGE_LENGTH
