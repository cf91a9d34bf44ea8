"""What Slicer's Python needs for RADA, checked without Qt; installing is the widget's job.

Rules (the most common complaint about Slicer extensions is a broken Python after an install):

* torch comes from the PyTorch extension (PyTorchUtils picks the CUDA build), never from here;
* packages Slicer ships (numpy, SimpleITK, vtk, scipy, ...) are never upgraded or replaced:
  :func:`runtime_constraints` pins them at the installed versions, and they are passed to
  ``pip_ensure`` as ``skip_packages``;
* nothing is installed without the user's consent (``pip_ensure`` asks; self-tests skip).
"""

from __future__ import annotations

import os
import re
from importlib import metadata
from pathlib import Path

#: Packages Slicer ships or the PyTorch extension manages: never installed or upgraded by RADA.
SHIPPED = ("numpy", "SimpleITK", "vtk", "scipy", "torch", "torchvision", "requests", "packaging",
           "pip", "setuptools", "wheel", "pydicom", "Pillow", "matplotlib", "pandas")
#: The torch version the backend needs (asked of PyTorchUtils).
TORCH_REQUIREMENT = ">=2.4"
#: The oldest Slicer RADA supports, and the Python it ships (SuperBuild: Slicer_REQUIRED_PYTHON_VERSION).
#: Slicer 5.8 ships Python 3.9 (end of life, no current torch wheels); 5.10 and 5.12 ship 3.12.10.
#: Also in CMakeLists.txt (EXTENSION_DESCRIPTION), README.md, and .ci/run (service tests on 3.12).
MINIMUM_SLICER = (5, 10)
MINIMUM_SLICER_PYTHON = (3, 12)

_NAME = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)")


#: Where the dependency lists live, relative to a scripted module's ``Resources`` folder.
#: CMake installs ``MODULE_PYTHON_RESOURCES`` next to the module files (``qt-scripted-modules/
#: Resources/...``), which is what ``ScriptedLoadableModuleWidget.resourcePath`` resolves.
RESOURCE_SUBDIR = "Python"
REQUIREMENTS_FILE = "requirements.txt"                      # the client: enough for a remote server
LOCAL_SERVER_REQUIREMENTS_FILE = "requirements-local-server.txt"  # plus these for a local server
CONSTRAINTS_FILE = "constraints.txt"


def requirement_files(resources: str | os.PathLike, local_server: bool = True) -> tuple[list[Path], Path]:
    """The requirement files to install and the constraints file, in ``resources``.

    Args:
        resources: the folder given by ``self.resourcePath("Python")`` in the module (the same
            relative place in the source tree, the build tree and an installed extension).
        local_server: also what a local ``rada serve`` needs (False: a remote-only user gets
            only the client's packages, and no torch).

    Returns:
        ([requirements files], constraints file); raises ``FileNotFoundError`` naming the
        folder if one is missing.
    """
    folder = Path(resources)
    names = [REQUIREMENTS_FILE] + ([LOCAL_SERVER_REQUIREMENTS_FILE] if local_server else [])
    files = [folder / name for name in names] + [folder / CONSTRAINTS_FILE]
    for path in files:
        if not path.is_file():
            raise FileNotFoundError(f"RADA's {path.name} is missing from {folder}: the extension is incomplete, "
                                    f"reinstall it from the Extensions Manager")
    return files[:-1], files[-1]


def slicer_version_problem(version: tuple[int, int]) -> str | None:
    """None if RADA supports this Slicer (major, minor), else a one-line reason."""
    if tuple(version[:2]) < MINIMUM_SLICER:
        return (f"RADA needs 3D Slicer {MINIMUM_SLICER[0]}.{MINIMUM_SLICER[1]} or newer (this is "
                f"{version[0]}.{version[1]}): download the current release from https://download.slicer.org")
    return None


def read_requirements(path: str | os.PathLike) -> list[str]:
    """Requirement lines of a requirements file (comments, blanks and options dropped)."""
    out = []
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        line = line.split("#", 1)[0].strip()
        if line and not line.startswith("-"):
            out.append(line)
    return out


def requirement_name(requirement: str) -> str:
    match = _NAME.match(requirement)
    return match.group(1) if match else requirement


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def missing(requirements: list[str]) -> list[str]:
    """The requirements not satisfied in this Python (by installed distribution version)."""
    try:
        from packaging.requirements import Requirement
    except ImportError:  # pragma: no cover - packaging ships with Slicer and with pip
        Requirement = None
    out = []
    for line in requirements:
        name = requirement_name(line)
        try:
            version = metadata.version(name)
        except metadata.PackageNotFoundError:
            out.append(line)
            continue
        if Requirement is not None:
            req = Requirement(line)
            if req.marker is not None and not req.marker.evaluate():
                continue
            if req.specifier and not req.specifier.contains(version, prereleases=True):
                out.append(line)
    return out


def to_install(requirements: list[str]) -> list[str]:
    """Missing requirements, minus the ones Slicer ships (those are never touched)."""
    shipped = {_canonical(n) for n in SHIPPED}
    return [r for r in missing(requirements) if _canonical(requirement_name(r)) not in shipped]


def runtime_constraints(static_constraints: str | os.PathLike | None, out_path: str | os.PathLike) -> Path:
    """``constraints.txt`` plus ``name==installed`` for every shipped package present: pip may
    then add packages but cannot change any that Slicer ships."""
    lines = read_requirements(static_constraints) if static_constraints else []
    pinned = {_canonical(requirement_name(line)) for line in lines}
    for name in SHIPPED:
        try:
            version = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
        if _canonical(name) not in pinned:
            lines.append(f"{name}=={version}")
    path = Path(out_path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def torch_status() -> str | None:
    """None when a usable torch is importable, else a one-line reason."""
    try:
        version = metadata.version("torch")
    except metadata.PackageNotFoundError:
        return "PyTorch is not installed (it comes from the PyTorch extension)"
    try:
        from packaging.specifiers import SpecifierSet

        if not SpecifierSet(TORCH_REQUIREMENT).contains(version.split("+")[0], prereleases=True):
            return f"PyTorch {version} is too old: RADA needs torch{TORCH_REQUIREMENT}"
    except ImportError:  # pragma: no cover
        pass
    return None


def gpu_message() -> str:
    """One line on the local compute device (imports torch: call after torch is installed)."""
    try:
        import torch
    except Exception as exc:  # noqa: BLE001
        return f"PyTorch cannot be imported ({exc}); segmentation runs only on a remote server"
    if torch.cuda.is_available():
        return f"GPU: {torch.cuda.get_device_name(0)}"
    return ("No GPU found: RADA runs on the CPU (the 'fast' preset takes seconds; training needs a GPU, "
            "use a remote server for it)")
