"""``InvalidArgument`` carries the field it is about (#16): the message still starts with it
("field: problem", as clients read it), and the dashboard answers the field from the attribute
instead of parsing it out of the text."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

from orisun.errors import InvalidArgument

pytestmark = pytest.mark.timeout(30)

ORISUN = Path(__file__).resolve().parent.parent / "orisun"
# A request field or a path into one: "subject", "placement.namespace", "events[3].event_id".
FIELD = re.compile(r"[A-Za-z_][\w.\[\]]*")


def test_the_field_is_an_attribute_and_starts_the_message() -> None:
    error = InvalidArgument("events[3].event_id", "'x' is not a UUID")
    assert error.field == "events[3].event_id"
    assert error.problem == "'x' is not a UUID"
    assert str(error) == "events[3].event_id: 'x' is not a UUID"


def _raise_sites() -> list[tuple[str, ast.Call]]:
    """Every ``InvalidArgument(...)`` the server builds (the client's own class is another one)."""
    sites = []
    for path in sorted(ORISUN.rglob("*.py")):
        if {"client", "_proto"} & set(path.relative_to(ORISUN).parts):
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "InvalidArgument":
                sites.append((f"{path.relative_to(ORISUN.parent)}:{node.lineno}", node))
    return sites


def test_every_raise_site_passes_the_field_apart() -> None:
    sites = _raise_sites()
    assert len(sites) > 40, "the scan found too few InvalidArgument calls to be looking at the right files"
    for where, call in sites:
        assert len(call.args) == 2 and not call.keywords, f"{where}: InvalidArgument(field, problem)"
        field, problem = call.args
        if isinstance(field, ast.Constant):
            assert isinstance(field.value, str) and FIELD.fullmatch(field.value), f"{where}: {field.value!r}"
        # The field is not repeated at the start of the problem ("name: name: ...").
        text = problem.values[0] if isinstance(problem, ast.JoinedStr) and problem.values else problem
        if isinstance(text, ast.Constant) and isinstance(text.value, str):
            assert not re.match(r"[\w.\[\]]+: ", text.value), f"{where}: the problem repeats a field"
