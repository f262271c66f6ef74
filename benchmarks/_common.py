"""Shared set-up for benchmark scripts: quiet libraries, work dir, skill loading, and recording.

Every benchmark takes `--record` (or runs with `DISTILL_BENCH_RECORD=1`): its last JSON line is then also
appended to `benchmarks/results.jsonl` with the date, commit, machine and command, and `docs/results.md`
is re-rendered from that file (benchmarks/_results.py). The flag is taken out of `sys.argv` here, when a
script imports this module, so no script's own argument parser has to know it; the variable is taken out
of the environment, so a benchmark's child processes never record a second line.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

RECORD_FLAG = "--record"
RECORD_ENV = "DISTILL_BENCH_RECORD"


def take_record_request(argv: list[str], environ=os.environ) -> bool:
    """True when this run should be recorded; removes `--record` from `argv` and the variable from `environ`
    (in place), so the script's parser and its child processes see neither."""
    flagged = RECORD_FLAG in argv
    while RECORD_FLAG in argv:
        argv.remove(RECORD_FLAG)
    env = environ.pop(RECORD_ENV, "")
    return flagged or env.strip().lower() not in ("", "0", "false", "no")


RECORD = take_record_request(sys.argv)


def setup() -> None:
    """Run from the repository root with the CLI's environment defaults (offline, quiet, work dir)."""
    os.chdir(REPO)
    from flows.cli import _environment

    _environment()


def emit(result: dict) -> None:
    """The last line a benchmark prints: one JSON object; with --record, also appended to
    benchmarks/results.jsonl (and docs/results.md re-rendered)."""
    print(json.dumps(result, default=str), flush=True)
    if RECORD:
        import _results

        page = _results.record(json.loads(json.dumps(result, default=str)))
        print(f"recorded in {_results.RESULTS}; {page} re-rendered ({_results.RENDER_COMMAND})", file=sys.stderr,
              flush=True)
