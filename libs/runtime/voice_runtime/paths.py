"""Where the platform keeps what it writes at run time (assembled models, the embedded dev stack's data)."""

from __future__ import annotations

import os
from pathlib import Path

# the repository root when the packages are installed editable (`make install`); images set STATE_DIR
REPO = Path(__file__).resolve().parents[3]


def state_dir() -> Path:
    """``STATE_DIR`` (default ``.state/`` in the repository, git-ignored), created if missing."""
    p = Path(os.environ.get("STATE_DIR", REPO / ".state")).resolve()
    p.mkdir(parents=True, exist_ok=True)
    return p
