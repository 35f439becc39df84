"""The release workflow (.github/workflows/release.yml) builds every platform with build.py on a
native runner, smoke-tests each executable and attaches them with their checksums to the release.

It cannot run here; these tests read it and hold it to what build.py and the README promise."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

import build

ROOT = Path(__file__).resolve().parent.parent
WORKFLOW = ROOT / ".github" / "workflows" / "release.yml"

pytestmark = pytest.mark.timeout(30)


def runner_platform(runner: str) -> tuple[str, str]:
    """(os, arch) of a GitHub-hosted runner label."""
    if re.fullmatch(r"ubuntu-[\d.]+-arm", runner):
        return "linux", "arm64"
    if re.fullmatch(r"ubuntu-([\d.]+|latest)", runner):
        return "linux", "amd64"
    if re.fullmatch(r"macos-13(-large)?", runner) or runner.endswith("-intel"):
        return "darwin", "amd64"
    if re.fullmatch(r"macos-(1[4-9]|latest)", runner):
        return "darwin", "arm64"
    if re.fullmatch(r"windows-([\d]+|latest)", runner):
        return "windows", "amd64"
    raise AssertionError(f"unknown runner {runner!r}")


@pytest.fixture(scope="module")
def workflow() -> dict[str, Any]:
    data: dict[Any, Any] = yaml.safe_load(WORKFLOW.read_text())
    return data


def steps_running(job: dict[str, Any]) -> list[str]:
    return [" ".join(str(step.get("run", "")).split()) for step in job["steps"]]


def test_runs_on_version_tags(workflow: dict[Any, Any]) -> None:
    # YAML 1.1 reads the key `on` as True.
    trigger = workflow.get("on", workflow.get(True))
    assert trigger == {"push": {"tags": ["v*"]}}


def test_builds_every_platform_on_its_own_native_runner(workflow: dict[str, Any]) -> None:
    matrix = workflow["jobs"]["build"]["strategy"]["matrix"]["include"]
    targets = [(entry["os"], entry["arch"]) for entry in matrix]
    assert sorted(targets) == sorted(build.TARGETS)
    for entry in matrix:
        assert runner_platform(entry["runner"]) == (entry["os"], entry["arch"]), entry
    assert workflow["jobs"]["build"]["runs-on"] == "${{ matrix.runner }}"
    assert workflow["jobs"]["build"]["strategy"]["fail-fast"] is False


def test_each_runner_builds_with_build_py_then_smoke_tests_before_uploading(workflow: dict[str, Any]) -> None:
    job = workflow["jobs"]["build"]
    runs = steps_running(job)
    build_step = runs.index("python build.py ${{ matrix.os }} ${{ matrix.arch }}")
    install = next(i for i, run in enumerate(runs) if "pip install" in run and ".[dev]" in run)
    smoke = next(i for i, run in enumerate(runs) if run.startswith("python packaging/smoke.py dist/orisun-"))
    upload = next(i for i, step in enumerate(job["steps"]) if "actions/upload-artifact" in str(step.get("uses")))
    assert install < build_step < smoke < upload
    assert (ROOT / "packaging" / "smoke.py").is_file()
    # The smoke test gets the file build.py wrote, .exe included on Windows.
    assert "dist/orisun-${{ matrix.os }}-${{ matrix.arch }}${{ matrix.os == 'windows' && '.exe' || '' }}" in runs[smoke]
    uploaded = job["steps"][upload]["with"]
    assert uploaded["path"] == "dist/orisun-*"  # the executable and its .sha256
    assert uploaded["if-no-files-found"] == "error"


def test_release_job_attaches_executables_and_checksums(workflow: dict[str, Any]) -> None:
    job = workflow["jobs"]["release"]
    assert job["needs"] == "build"
    assert job["permissions"] == {"contents": "write"}
    assert workflow["permissions"] == {"contents": "read"}  # only the release job may write
    download = next(step for step in job["steps"] if "actions/download-artifact" in str(step.get("uses")))
    assert download["with"] == {"path": "dist", "merge-multiple": True}
    runs = " ".join(steps_running(job))
    assert 'gh release upload "$GITHUB_REF_NAME" dist/*' in runs


def test_build_py_names_match_the_release_names() -> None:
    names = {build.executable_name(*target) for target in build.TARGETS}
    assert names == {"orisun-linux-amd64", "orisun-linux-arm64", "orisun-darwin-arm64", "orisun-darwin-amd64",
                     "orisun-windows-amd64.exe"}
