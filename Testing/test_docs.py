"""The documentation users and contributors are pointed to exists and matches the code."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest

from repo_paths import REPO  # noqa: E402


def test_readme_links_point_to_files_in_the_repository():
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    links = set(re.findall(r"\]\(([^)#]+)\)", readme)) | set(re.findall(r"\b(docs/[\w.-]+\.md)\b", readme))
    assert {"docs/method.md", "docs/architecture.md", "docs/service.md"} <= links
    missing = [link for link in links if not link.startswith("http") and not (REPO / link).exists()]
    assert not missing, missing
    assert "ARCHITECTURE.md" not in readme and "METHOD.md" not in readme  # not in this repository


def test_service_doc_covers_every_operation_option_and_status():
    pytest.importorskip("fastapi")
    from rada.service.app import create_app
    from rada.service.runners import SEGMENT_OPTIONS, TRAIN_OPTIONS
    from rada.service.settings import ServiceSettings

    doc = (REPO / "docs" / "service.md").read_text(encoding="utf-8")
    spec = create_app(ServiceSettings(token="t")).openapi()
    for path, operations in spec["paths"].items():
        for method in operations:
            assert f"`{method.upper()} {path}" in doc, (method, path)
    for option in [*SEGMENT_OPTIONS, *TRAIN_OPTIONS]:
        assert f"`{option}`" in doc, option
    for status in (400, 401, 404, 409, 413, 422, 503):
        assert f"| {status} |" in doc, status


def test_plain_install_is_enough_for_rada_serve():
    tomllib = pytest.importorskip("tomllib") if sys.version_info >= (3, 11) else pytest.importorskip("tomli")
    deps = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["project"]["dependencies"]
    names = {re.split(r"[<>=!\[ ]", d)[0].lower() for d in deps}
    assert {"fastapi", "uvicorn", "httpx", "python-multipart"} <= names


def test_demo_output_is_ignored_by_git():
    from rada.cli import build_parser

    default = build_parser().parse_args(["demo"]).out
    assert f"/{default}/" in (REPO / ".gitignore").read_text(encoding="utf-8").splitlines()
