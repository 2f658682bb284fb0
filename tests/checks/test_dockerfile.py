"""docker/Dockerfile: hadolint's rules, plus what this project asks of its images that hadolint
does not check: bases pinned by digest, a non-root user, and installs only from toolchain.lock."""

from __future__ import annotations

import re

from checkrun import ROOT, replace_once, run, tool
from lane_consistency import DOCKERFILE, text_of_stage

FROM = re.compile(r"^FROM\s+(\S+)(?:\s+AS\s+(\S+))?\s*$", re.IGNORECASE | re.MULTILINE)
STAGE_IMAGES = re.compile(r"^(export|convert-.+|loadtest)$")


def hadolint(path):
    return run(tool("hadolint"), "--no-color", path)


def image_problems(text: str) -> list[str]:
    """Bases not pinned by digest, stage images that would run as root, pip installs outside the lock."""
    problems = []
    aliases = {alias for _, alias in FROM.findall(text) if alias}
    for base, alias in FROM.findall(text):
        if base not in aliases and "@sha256:" not in base:
            problems.append(f"FROM {base}: pin the base image by digest (name:tag@sha256:...)")
        if STAGE_IMAGES.match(alias or "") and base != "runtime":
            problems.append(f"target {alias} is FROM {base}: build it FROM runtime, which runs as the non-root user")
    users = re.findall(r"^USER\s+(\S+)", text_of_stage(text, "runtime"), re.MULTILINE)
    if not users or users[-1].split(":")[0] in ("root", "0"):
        problems.append("stage runtime: its last USER must be a non-root user")
    for line in re.findall(r"^RUN .*pip3? install.*$", text, re.MULTILINE):
        problems.append(f"{line!r}: install through `python -m pt2tf_toolchain install ENV` (hashes from the lock)")
    return problems


def test_hadolint_passes_the_dockerfile():
    result = hadolint(ROOT / DOCKERFILE)
    assert result.code == 0, result.output


def test_hadolint_fails_unpinned_apt_and_pip_installs(copy_of):
    path = copy_of(str(DOCKERFILE)) / DOCKERFILE
    replace_once(
        path,
        "FROM base AS builder\n",
        "FROM base AS builder\nRUN apt-get update && apt-get install -y gcc && pip install numpy\n",
    )
    result = hadolint(path)
    assert result.code != 0, result.output
    for rule in ("DL3008", "DL3013"):  # apt package versions not pinned; pip package versions not pinned
        assert rule in result.output, result.output


def test_images_are_pinned_non_root_and_installed_from_the_lock():
    assert image_problems((ROOT / DOCKERFILE).read_text()) == []


def test_a_tag_only_base_a_root_image_and_a_pip_install_are_refused(copy_of):
    text = (ROOT / DOCKERFILE).read_text()
    base = re.search(r"^FROM (python:3\.11-slim)@sha256:[0-9a-f]{64} AS base$", text, re.MULTILINE)
    assert base, "docker/Dockerfile: the base stage is no longer python:3.11-slim@sha256:..."
    broken = text.replace(base.group(0), f"FROM {base.group(1)} AS base")
    broken = broken.replace("USER 10001:10001\n", "USER root\n")
    broken = broken.replace(
        "RUN python -m pt2tf_toolchain install loadtest /opt/venv",
        "RUN pip install --no-cache-dir locust==2.47.0",
    )
    problems = image_problems(broken)
    assert any("FROM python:3.11-slim: pin the base image by digest" in p for p in problems), problems
    assert "stage runtime: its last USER must be a non-root user" in problems, problems
    assert any("pip install --no-cache-dir locust" in p for p in problems), problems
