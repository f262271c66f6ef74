"""Shared set-up for benchmark scripts: quiet libraries, work dir, skill loading."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def setup() -> None:
    os.chdir(REPO)
    from flows.cli import _environment

    _environment()


def emit(result: dict) -> None:
    """The last line a benchmark prints: one JSON object."""
    print(json.dumps(result, default=str), flush=True)
