"""Where the tests find the repository and the shared real data (one definition for all tests)."""

from __future__ import annotations

import os
from pathlib import Path

#: The repository root (this file is Testing/helpers/repo_paths.py).
REPO = Path(__file__).resolve().parents[2]
#: Real data beside the repository (``../shared/data``), or ``$RADA_SHARED_DATA``.
SHARED_DATA = Path(os.environ.get("RADA_SHARED_DATA", REPO.parent / "shared" / "data"))
