"""Every reference to a docs/ page resolves (issue #16): code, SQL, tests, benchmarks, build and
packaging files, the proto and the README cite the pages as ``docs/contract.md §5`` (or a list,
``docs/contract.md §2, §4 and §7``, or a range, ``§3 to §5``); each cited page must exist and have a
heading numbered like the section (``## 5. …``). Inside a docs page a bare ``§5`` is that page's.
A citation in the old unchecked form ("contract section 5") fails too. Public classes of the
package say what they are for (ruff's D101 checks only public modules; this covers the rest)."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCANNED = ("orisun", "tests", "bench", "packaging", "proto", "docs", "build.py", "README.md")
SUFFIXES = {".py", ".sql", ".md", ".proto", ".toml", ".txt", ".spec", ".sh", ".cfg", ".ini", ".yml", ".yaml"}

SECTION = r"§(\d+)"
# A page, then optionally one or more sections joined by commas, "and", "to" or a dash.
CITATION = re.compile(r"\bdocs/([\w./-]+\.md)((?:(?:\s*,\s*|\s+and\s+|\s+to\s+|\s*[-\u2013]\s*|\s+)§\d+)*)")
BARE_SECTION = re.compile(r"(?<![\w/.])" + SECTION)
# The form the code used before the pages existed: it names no file, so nothing could check it.
STALE = re.compile(r"\bcontract(?:'s)?\s*\(?\s*sections?\s+\d", re.IGNORECASE)


def scanned_files() -> list[Path]:
    files: list[Path] = []
    for name in SCANNED:
        path = ROOT / name
        if path.is_file():
            files.append(path)
        elif path.is_dir():
            files.extend(p for p in sorted(path.rglob("*"))
                         if p.is_file() and p.suffix in SUFFIXES and "_proto" not in p.parts)
    # This file cites missing pages on purpose, to show that the check fails on them.
    return [file for file in files if file != Path(__file__).resolve()]


def headings(page: Path) -> set[int]:
    """The section numbers of a page: its headings that start with a number (``## 5. Pub/sub``)."""
    return {int(m[1]) for m in re.finditer(r"^#{1,6}\s+(\d+)\.\s", page.read_text(encoding="utf-8"), re.MULTILINE)}


def citations(text: str, here: Path) -> list[tuple[Path, int | None, str]]:
    """(page, section or None for the page itself, the citation as written) found in ``text``."""
    found: list[tuple[Path, int | None, str]] = []
    for match in CITATION.finditer(text):
        page = ROOT / "docs" / match[1]
        sections = [int(n) for n in re.findall(SECTION, match[2])]
        found += [(page, n, match[0]) for n in sections] or [(page, None, match[0])]
    if here.parent == ROOT / "docs":
        # A bare § inside a docs page is that page's own section; those of citations are counted above.
        for match in BARE_SECTION.finditer(CITATION.sub(lambda m: " " * len(m[0]), text)):
            found.append((here, int(match[1]), match[0]))
    return found


def dangling(files: list[Path]) -> list[str]:
    problems = []
    for file in files:
        text = file.read_text(encoding="utf-8", errors="replace")
        for page, section, written in citations(text, file):
            where = f"{file.relative_to(ROOT)}: {written!r}"
            if not page.is_file():
                problems.append(f"{where}: no page {page.relative_to(ROOT)}")
            elif section is not None and section not in headings(page):
                problems.append(f"{where}: {page.relative_to(ROOT)} has no section {section}")
        for match in STALE.finditer(text):
            line = text.count("\n", 0, match.start()) + 1
            problems.append(f"{file.relative_to(ROOT)}:{line}: {match[0]!r} names no page: cite docs/contract.md §N")
    return problems


def test_every_docs_reference_resolves() -> None:
    files = scanned_files()
    assert len(files) > 50, files  # the scan found the tree
    assert not dangling(files), "\n".join(dangling(files))


def test_the_code_cites_the_contract() -> None:
    """The references the code had before the pages existed are still there, in the checked form."""
    cited = [(file, c) for file in scanned_files() if file.parent != ROOT / "docs"
             for c in citations(file.read_text(encoding="utf-8", errors="replace"), file)]
    sections = {section for _, (page, section, _) in cited if page.name == "contract.md"}
    assert sections >= {2, 3, 4, 5, 6, 7}, sections
    assert any(file.suffix == ".sql" for file, _ in cited)


@pytest.mark.parametrize("text, problem", [
    ("see docs/contract.md §5", None),
    ("docs/contract.md §2, §4 and §7", None),
    ("docs/contract.md §3 to §5", None),
    ("docs/contract.md §3-§5", None),
    ("docs/contract.md §1 to §42", "has no section 42"),
    ("docs/contract.md", None),
    ("see docs/contract.md §42", "has no section 42"),
    ("docs/contract.md §2 and §42", "has no section 42"),
    ("see docs/nowhere.md §1", "no page docs/nowhere.md"),
    ("# the contract (section 5)", "names no page"),
    ("-- contract section 2", "names no page"),
    ("Contract sections 2 and 4", "names no page"),
])
def test_the_check_fails_on_a_dangling_reference(tmp_path: Path, text: str, problem: str | None) -> None:
    file = ROOT / "tests" / f"_docs_probe_{tmp_path.name}.py"  # inside the tree, for relative names
    file.write_text(text + "\n", encoding="utf-8")
    try:
        problems = dangling([file])
    finally:
        file.unlink()
    if problem is None:
        assert not problems, problems
    else:
        assert len(problems) == 1 and problem in problems[0], problems


def test_public_classes_have_docstrings() -> None:
    missing = []
    for file in sorted((ROOT / "orisun").rglob("*.py")):
        if "_proto" in file.parts:
            continue
        for node in ast.walk(ast.parse(file.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ClassDef) and not node.name.startswith("_") and not ast.get_docstring(node):
                missing.append(f"{file.relative_to(ROOT)}:{node.lineno} {node.name}")
    assert not missing, "public classes without a docstring:\n" + "\n".join(missing)


def test_the_readme_lists_the_docs_pages() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    section = readme.split("\n## Documentation\n", 1)
    assert len(section) == 2, "README.md has no '## Documentation' section"
    listed = section[1].split("\n## ", 1)[0]
    for page in sorted((ROOT / "docs").glob("*.md")):
        assert f"](docs/{page.name})" in listed, f"docs/{page.name} is not linked from README's Documentation list"
