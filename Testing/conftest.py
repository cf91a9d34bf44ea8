"""Shared pytest fixtures: real data from ../shared/data and small synthetic volumes."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

# One torch thread: tests share 2 cores with ANTs, and contention slows tiny models ~20x.
try:
    import torch

    torch.set_num_threads(1)
except ImportError:  # pragma: no cover - torch is a hard dependency, kept import-safe for clarity
    pass

from repo_paths import REPO, SHARED_DATA  # noqa: E402  (Testing/helpers is on pytest's pythonpath)

LA_DIR = SHARED_DATA / "la2018"
CT_DIR = SHARED_DATA / "ct_abdomen_liver"


def _require(path: Path) -> Path:
    if not path.exists():
        pytest.skip(f"real data not found at {path} (expected ../shared/data beside the repository)")
    return path


@pytest.fixture(scope="session")
def la_dir() -> Path:
    return _require(LA_DIR)


@pytest.fixture(scope="session")
def la_case_ids(la_dir: Path) -> list[str]:
    return (la_dir / "cases.list").read_text(encoding="utf-8").split()


@pytest.fixture(scope="session")
def ct_dir() -> Path:
    return _require(CT_DIR)


@pytest.fixture(scope="session")
def structures_dir() -> Path:
    return _require(SHARED_DATA / "structures")


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(0)
