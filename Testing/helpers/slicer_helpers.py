"""Helpers for the Slicer-module tests on slicer-core: module paths, a fresh scene."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from repo_paths import REPO  # noqa: E402
MODULES = ("RADASegmentation", "RADATrainer")


def require_slicer_core():
    """Skip unless `slicer-core` (MRML in Python, no Qt) is installed; put the modules on sys.path."""
    slicer = pytest.importorskip("slicer", reason="slicer-core not installed (pip install slicer-core)")
    if not hasattr(slicer, "vtkMRMLScene"):  # another package named 'slicer' (shap's dependency)
        pytest.skip("the installed 'slicer' package is not slicer-core")
    for module in MODULES:
        path = str(REPO / module)
        if path not in sys.path:
            sys.path.insert(0, path)
    return slicer


def new_scene():
    from RADASegmentationLib import selftest

    slicer = require_slicer_core()
    scene = slicer.vtkMRMLScene()
    selftest.prepare_scene(scene)
    return scene
