"""The README keeps its promises: the two commands, every variable, and CI running the test command."""

from __future__ import annotations

from pathlib import Path

import pytest

from orisun.config import VARIABLES

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()
RUN_COMMAND = "pip install . && orisun"
TEST_COMMAND = "pip install -e '.[test]' && pytest"

pytestmark = pytest.mark.timeout(30)


def test_the_readme_opens_with_the_two_commands() -> None:
    head = README[: README.index("## Status")]
    assert RUN_COMMAND in head
    assert TEST_COMMAND in head


def test_ci_runs_exactly_the_readme_test_command() -> None:
    ci = (ROOT / ".ci" / "run").read_text()
    assert any(line.strip() == TEST_COMMAND for line in ci.splitlines())


def test_every_variable_is_documented_with_its_default() -> None:
    rows = {
        line.split("|")[1].strip().strip("`"): line for line in README.splitlines() if line.startswith("| `ORISUN_")
    }
    for variable in VARIABLES:
        assert variable.name in rows, f"{variable.name} is not in the README's table"
        default = rows[variable.name].split("|")[2]
        assert variable.default.split()[0].strip("()") in default.replace("`", ""), variable.name
