"""Render docs/results.md from benchmarks/results.jsonl (the records benchmarks append with --record).

    python benchmarks/render_results.py           # rewrite docs/results.md
    python benchmarks/render_results.py --check   # exit 1 if docs/results.md is not what the records give
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _results import PAGE, REPO, RESULTS, load, render, write_page  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    """Write (or with --check, compare) the generated results page; returns the exit status."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--check", action="store_true", help="do not write; exit 1 if the page is stale")
    ap.add_argument("--results", type=Path, default=RESULTS, help="the records (default: benchmarks/results.jsonl)")
    ap.add_argument("--out", type=Path, default=PAGE, help="the page (default: docs/results.md)")
    args = ap.parse_args(argv)
    if args.check:
        want = render(load(args.results), REPO)
        have = args.out.read_text(encoding="utf-8") if args.out.is_file() else None
        if have != want:
            print(f"{args.out} is stale: run python benchmarks/render_results.py", file=sys.stderr)
            return 1
        print(f"{args.out} matches {args.results}")
        return 0
    page = write_page(args.results, args.out, REPO)
    print(f"wrote {page} from {len(load(args.results))} records in {args.results}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
