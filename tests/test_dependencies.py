"""The README's test command installs everything the tests use.

`pip install -e '.[test]' && pytest` runs in a fresh venv (as `.ci/run` does): a module that the
tests, or the build steps they run, import from a distribution outside the runtime and `test`
dependencies fails there and nowhere else, because developers have the `dev` extras installed.
"""

from __future__ import annotations

import ast
import importlib.metadata
import sys
import tomllib
from pathlib import Path

from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parent.parent
# What the test suite runs: the tests themselves and build.py (tests/test_build.py runs its proto
# check, tests/test_executable.py its exe step, which reads packaging/).
SOURCES = [*sorted((ROOT / "tests").rglob("*.py")), ROOT / "build.py", *sorted((ROOT / "packaging").glob("*.py"))]
# The repo's own modules: packages, build.py and packaging's scripts (imported by their file names).
FIRST_PARTY = {"orisun", "tests", *(path.stem for path in [*ROOT.glob("*.py"), *(ROOT / "packaging").glob("*.py")])}


def imported_top_level_modules(path: Path) -> set[str]:
    """Every absolute import in ``path``, also inside functions (build steps import lazily)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name.partition(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module.partition(".")[0])
    return found


def installed_by_test_command() -> set[str]:
    """The distributions `pip install -e '.[test]'` brings (canonical names): the requirements that
    pyproject.toml declares, runtime and `test`, and theirs, transitively from what is installed."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    declared = [*project["dependencies"], *project["optional-dependencies"]["test"]]
    environment = default_environment()
    seen: set[str] = set()
    pending = [Requirement(line) for line in declared]
    while pending:
        requirement = pending.pop()
        name = canonicalize_name(requirement.name)
        if name in seen or (requirement.marker and not requirement.marker.evaluate({**environment, "extra": ""})):
            continue
        seen.add(name)
        for line in importlib.metadata.requires(requirement.name) or []:
            dependency = Requirement(line)
            marker = dependency.marker
            if marker is None or any(
                marker.evaluate({**environment, "extra": extra}) for extra in (requirement.extras or {""})
            ):
                dependency.marker = None  # evaluated here, for the extras that asked for it
                pending.append(dependency)
    return seen


def test_every_module_the_tests_import_is_installed_by_the_readme_test_command() -> None:
    providers = importlib.metadata.packages_distributions()
    installed = installed_by_test_command()
    missing: dict[str, list[str]] = {}
    for path in SOURCES:
        for module in imported_top_level_modules(path):
            if module in sys.stdlib_module_names or module in FIRST_PARTY or module == "__future__":
                continue
            distributions = {canonicalize_name(d) for d in providers.get(module, [])}
            where = path.relative_to(ROOT)
            assert distributions, f"{where} imports {module!r}, which no installed distribution provides"
            if not distributions & installed:
                missing.setdefault(f"{module} ({', '.join(sorted(distributions))})", []).append(
str(where))
    assert not missing, (
        "imported by the tests but not installed by `pip install -e '.[test]'` "
        f"(add to the test extras in pyproject.toml): {missing}"
    )


# What each import-light part of the package may import (besides the standard library): the client
# installs with grpcio and protobuf only (clients/python/pyproject.toml), so one import of the
# server's dependencies would break `pip install ./clients/python` users at import time.
CLIENT_ALLOWED = ("grpc", "google.protobuf", "orisun._proto", "orisun.client")
LIGHT_PARTS = {
    "orisun/client": CLIENT_ALLOWED,
    "orisun/_proto": ("grpc", "google.protobuf", "orisun._proto"),
    "orisun/__init__.py": ("orisun._version",),
}


def absolute_imports(path: Path) -> set[str]:
    """Every module ``path`` imports (dotted, relative ones resolved), also inside functions."""
    package = ".".join(path.relative_to(ROOT).with_suffix("").parts[:-1])
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = package.rsplit(".", node.level - 1)[0] if node.level else ""
            module = ".".join(part for part in (base, node.module or "") if part)
            found.add(module)
    return found


def test_the_client_imports_only_grpc_protobuf_and_the_generated_code() -> None:
    offending: dict[str, list[str]] = {}
    for part, allowed in LIGHT_PARTS.items():
        paths = [ROOT / part] if part.endswith(".py") else sorted((ROOT / part).rglob("*.py"))
        assert paths, part
        for path in paths:
            for module in absolute_imports(path):
                top = module.partition(".")[0]
                if top in sys.stdlib_module_names or top == "__future__":
                    continue
                if not any(module == ok or module.startswith(ok + ".") for ok in allowed):
                    offending.setdefault(str(path.relative_to(ROOT)), []).append(module)
    assert not offending, f"imports beyond what the client's distribution installs: {offending}"
