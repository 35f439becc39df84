"""The house stays readable (issue #16): no test file and no module of the ``orisun`` package (the
generated ``orisun/_proto`` aside) grows past ``LINE_LIMIT`` lines. A file that does is split by
topic: tests into ``tests/test_<topic>_<subtopic>.py`` with their shared fixtures and helpers in
``tests/<topic>_support.py``, code into modules of its own concern.

The allow-lists name the files over the limit today; each entry must still exist and still be over
the limit, so that the lists only shrink.
"""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LINE_LIMIT = 600

# Test files over the limit today: none.
TESTS_OVER_THE_LIMIT: set[str] = set()
# Modules of the orisun package over the limit today: none.
MODULES_OVER_THE_LIMIT: set[str] = set()


def line_count(path: Path) -> int:
    with path.open("rb") as file:
        return sum(1 for _ in file)


def sources() -> dict[str, int]:
    """Every test file and every module of the package outside orisun/_proto, with its lines."""
    paths = [*(ROOT / "tests").rglob("*.py"), *(ROOT / "orisun").rglob("*.py")]
    proto = ROOT / "orisun" / "_proto"
    return {path.relative_to(ROOT).as_posix(): line_count(path) for path in sorted(paths)
            if proto not in path.parents}


def test_no_source_file_is_over_the_line_limit() -> None:
    allowed = TESTS_OVER_THE_LIMIT | MODULES_OVER_THE_LIMIT
    over = {name: lines for name, lines in sources().items() if lines > LINE_LIMIT and name not in allowed}
    assert not over, (
        f"over {LINE_LIMIT} lines: {over}; split the file by topic (tests: shared fixtures and helpers "
        f"in tests/<topic>_support.py) rather than raising the limit")


def test_the_allow_lists_only_name_files_still_over_the_limit() -> None:
    counts = sources()
    for name in sorted(TESTS_OVER_THE_LIMIT | MODULES_OVER_THE_LIMIT):
        assert name in counts, f"{name} is allow-listed but no longer exists: remove it from the list"
        assert counts[name] > LINE_LIMIT, (
            f"{name} has {counts[name]} lines, no longer over {LINE_LIMIT}: remove it from the allow-list")


def test_the_files_counted_are_the_right_ones() -> None:
    """Lines are counted as ``wc -l`` does; test files and the package's modules are seen, the
    generated protos are not."""
    counts = sources()
    assert counts["tests/test_layout.py"] == len((ROOT / "tests" / "test_layout.py").read_text().splitlines())
    assert "orisun/_proto/eventstore_pb2.py" not in counts
    assert "orisun/app.py" in counts
