"""Regenerate Testing/data/slicer_widget_api.json: what each widget class in the modules' .ui
files offers to Python (methods, slots, signals, Q_PROPERTY names), read from the headers of
the Slicer version RADA supports (and the CTK and Qt it builds with).

A module calling a method that does not exist in the real application (e.g.
``qMRMLPlotWidget.setMRMLPlotChartNode``) fails only inside Slicer; the test
Testing/test_slicer_real_app.py checks every ``self.ui.<widget>.<name>`` against this list.

Usage (git checkouts; the refs are read with ``git show``, nothing is built)::

    git clone https://github.com/Slicer/Slicer  && git clone https://github.com/commontk/CTK
    apt-get install qtbase5-dev    # Qt 5.15 headers: Slicer 5.10 builds with Qt 5.15
    python Testing/tools/slicer_widget_api.py --slicer Slicer --slicer-ref v5.10.0 \\
        --ctk CTK --qt-include /usr/include/x86_64-linux-gnu/qt5

The CTK commit is the one Slicer's SuperBuild/External_CTK.cmake pins at that ref. The output
holds each class's own public members and its base class; the test flattens the chain.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
MODULES = ("RADASegmentation", "RADATrainer")
OUT = REPO / "Testing" / "data" / "slicer_widget_api.json"
#: Where the chain of bases stops (PythonQt adds nothing RADA relies on above QObject).
ROOT = "QObject"

_CLASS = re.compile(r"class\s+(?:\w+_EXPORT\s+)?(\w+)\s*(?:final\s*)?(?::\s*public\s+([\w:]+)[^{;]*)?\{")
_PROPERTY = re.compile(r"Q_PROPERTY\(\s*[\w:<>*&\s]+?\s+[*&]?(\w+)\s+(?:READ|MEMBER)")
_ACCESS = re.compile(r"^\s*(public|protected|private)\s*(?:Q_SLOTS|slots)?\s*:|^\s*(Q_SIGNALS|signals)\s*:")
_METHOD = re.compile(r"(?:^|[\s*&~])(\w+)\s*\([^;{]*\)[\w\s]*?(?:=\s*(?:0|default|delete)\s*)?[;{]")
_SKIP = {"Q_OBJECT", "Q_PROPERTY", "Q_DECLARE_PRIVATE", "Q_DISABLE_COPY", "Q_ENUM", "Q_ENUMS", "Q_FLAGS",
         "Q_FLAG", "Q_DECLARE_PUBLIC", "Q_INVOKABLE", "Q_D", "Q_Q", "if", "for", "while", "return", "switch",
         "sizeof", "Q_DECL_DEPRECATED", "QT_DEPRECATED", "QT_DEPRECATED_X", "QT_DEPRECATED_VERSION_X_5_15",
         "QT_DEPRECATED_VERSION_5_15", "Q_REVISION", "Q_PRIVATE_SLOT", "Q_DECLARE_FLAGS"}


@dataclass
class Sources:
    """Where headers come from: Slicer and CTK git checkouts at a ref, Qt's include folder."""

    slicer: Path
    slicer_ref: str
    ctk: Path
    ctk_ref: str
    qt_include: Path
    _trees: dict[str, list[str]] = field(default_factory=dict)

    def _tree(self, repo: Path, ref: str) -> list[str]:
        key = f"{repo}@{ref}"
        if key not in self._trees:
            out = subprocess.run(["git", "-C", str(repo), "ls-tree", "-r", "--name-only", ref],
                                 check=True, capture_output=True, text=True).stdout
            self._trees[key] = out.splitlines()
        return self._trees[key]

    def header(self, cls: str) -> tuple[str, str]:
        """(origin, header text) for a class name."""
        for repo, ref, origin in ((self.slicer, self.slicer_ref, "Slicer"), (self.ctk, self.ctk_ref, "CTK")):
            paths = [p for p in self._tree(repo, ref) if p.endswith(f"/{cls}.h")]
            if paths:
                text = subprocess.run(["git", "-C", str(repo), "show", f"{ref}:{sorted(paths, key=len)[0]}"],
                                      check=True, capture_output=True, text=True).stdout
                return f"{origin} {ref}", text
        for module in ("QtWidgets", "QtCore", "QtGui"):
            path = self.qt_include / module / f"{cls.lower()}.h"
            if path.is_file():
                return f"Qt {module}", path.read_text(errors="replace")
        raise FileNotFoundError(f"no header for {cls}")


def parse_class(cls: str, text: str) -> tuple[str | None, list[str]]:
    """(base class, public member names: methods, slots, signals, properties) of ``cls``."""
    text = re.sub(r"//[^\n]*|/\*.*?\*/", "", text, flags=re.DOTALL)
    start = None
    base = None
    for match in _CLASS.finditer(text):
        if match.group(1) == cls:
            start, base = match.end() - 1, (match.group(2) or "").split("::")[-1] or None
            break
    if start is None:
        raise ValueError(f"class {cls} not found in its header")
    body_start = text.index("{", start) + 1
    depth, i = 1, body_start
    while depth and i < len(text):
        depth += {"{": 1, "}": -1}.get(text[i], 0)
        i += 1
    body = text[body_start:i - 1]
    members = set(_PROPERTY.findall(body))
    access = "private"  # class default
    statement = ""
    for line in body.splitlines():
        marker = _ACCESS.match(line)
        if marker:
            access = marker.group(1) or "public"  # signals are public
            line = line[marker.end():]
        if access != "public":
            continue
        statement += " " + line.strip()
        if statement.rstrip().endswith((";", "{", "}")):
            for name in _METHOD.findall(statement):
                if name not in _SKIP and name != cls and not re.fullmatch(r"[A-Z0-9_]+|__\w+|defined", name):
                    members.add(name)
            statement = ""
    return (None if cls == ROOT else base), sorted(members)


def ui_classes() -> set[str]:
    classes = set()
    for module in MODULES:
        root = ET.parse(REPO / module / "Resources" / "UI" / f"{module}.ui").getroot()
        classes |= {w.get("class") for w in root.iter("widget")}
    return classes


def generate(sources: Sources) -> dict:
    """The API list for every .ui widget class and its bases up to QObject."""
    classes: dict[str, dict] = {}
    todo = sorted(ui_classes())
    while todo:
        cls = todo.pop()
        if cls in classes:
            continue
        origin, text = sources.header(cls)
        base, members = parse_class(cls, text)
        classes[cls] = {"base": base, "from": origin, "members": members}
        if base and base not in classes:
            todo.append(base)
    cmake = subprocess.run(["git", "-C", str(sources.slicer), "show", f"{sources.slicer_ref}:CMakeLists.txt"],
                           check=True, capture_output=True, text=True).stdout
    python = re.search(r'set\(Slicer_REQUIRED_PYTHON_VERSION "([0-9.]+)"\)', cmake)
    return {"generated_by": "Testing/tools/slicer_widget_api.py",
            "slicer": sources.slicer_ref, "slicer_python": python.group(1) if python else None,
            "ctk": sources.ctk_ref, "qt": "Qt 5.15 headers",
            "classes": dict(sorted(classes.items()))}


def _pinned_ctk(slicer: Path, ref: str) -> str:
    text = subprocess.run(["git", "-C", str(slicer), "show", f"{ref}:SuperBuild/External_CTK.cmake"],
                          check=True, capture_output=True, text=True).stdout
    match = re.search(r'Slicer_\$\{proj\}_GIT_TAG\s*\n?\s*"([0-9a-f]{40})"', text)
    if not match:
        raise ValueError("CTK commit not found in SuperBuild/External_CTK.cmake")
    return match.group(1)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--slicer", type=Path, required=True, help="Slicer git checkout (or bare repository)")
    parser.add_argument("--slicer-ref", default="v5.10.0", help="the oldest Slicer RADA supports")
    parser.add_argument("--ctk", type=Path, required=True, help="CTK git checkout (or bare repository)")
    parser.add_argument("--ctk-ref", default=None, help="default: the commit Slicer pins")
    parser.add_argument("--qt-include", type=Path, default=Path("/usr/include/x86_64-linux-gnu/qt5"))
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args(argv)
    ctk_ref = args.ctk_ref or _pinned_ctk(args.slicer, args.slicer_ref)
    api = generate(Sources(args.slicer, args.slicer_ref, args.ctk, ctk_ref, args.qt_include))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(api, indent=1) + "\n", encoding="utf-8")
    print(f"{args.out}: {len(api['classes'])} classes")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
