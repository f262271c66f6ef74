"""The cost of scrubbing captured traffic (core/privacy.py): rows/s of the scrubber alone and of the gateway's
traffic writer with and without it, on one thread (the writer is one background thread).

Rows are gateway rows of a ticket skill (request, answer, slm_answer, slm_raw, reference): `pii` rows carry an
e-mail address, a card number and a phone number in the request; `plain` rows are ticket text with digits
(versions, amounts) and no personal data; labels skip the analyzer (no digit, '@' or ':').

    .venv/bin/python benchmarks/privacy.py [--quick]
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import emit  # noqa: E402

PII = ("Ticket {i}: my card 4111 1111 1111 1111 was charged twice for the team plan, mail me at user{i}@example.com "
       "or call +1 415 555 {p:04d} before Friday")
PLAIN = ("Ticket {i}: after upgrading to version 2.{i}.1 the export button does nothing and the invoice total shows "
         "$49.99 instead of $39.99 for order #{p}")


def rows(n: int, template: str) -> list[dict]:
    rnd = random.Random(0)
    out = []
    for i in range(n):
        label = rnd.choice(["billing", "bug", "account"])
        out.append({"id": f"r{i}", "request": template.format(i=i, p=rnd.randrange(10_000)), "answer": label,
                    "slm_answer": label, "slm_raw": f" {label}", "reference": label, "lane": "keep",
                    "skill": "ticket-triage", "reference_source": "student"})
    return out


def scrub_rate(scrub, batch: list[dict]) -> float:
    t = time.perf_counter()
    for r in batch:
        scrub.row(r)
    return len(batch) / (time.perf_counter() - t)


def writer_rate(batch: list[dict], scrub) -> float:
    from gateway.traffic import TrafficWriter

    with tempfile.TemporaryDirectory() as tmp:
        w = TrafficWriter(f"sqlite:///{tmp}/t.db", lambda s: "traffic_bench", flush_ms=20,
                          scrub_for=(lambda s: scrub) if scrub else None)
        w.write("ticket-triage", dict(batch[0], id="warm"))
        w.flush(60)
        t = time.perf_counter()
        for r in batch:
            w.write("ticket-triage", dict(r))
        w.flush(600)
        rate = len(batch) / (time.perf_counter() - t)
        w.close()
    return rate


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--rows", type=int, default=None)
    args = ap.parse_args()
    n = args.rows or (300 if args.quick else 2000)
    from core.config import PrivacyConfig
    from core.privacy import scrubber_for

    t = time.perf_counter()
    scrub = scrubber_for(PrivacyConfig())
    build_s = time.perf_counter() - t
    scrub_rate(scrub, rows(50, PII))  # warm-up
    result = {"benchmark": "privacy", "rows": n, "engine_build_s": round(build_s, 2),
              "scrub_rows_per_s_pii": round(scrub_rate(scrub, rows(n, PII)), 1),
              "scrub_rows_per_s_plain": round(scrub_rate(scrub, rows(n, PLAIN)), 1),
              "writer_rows_per_s_pii_scrubbed": round(writer_rate(rows(n, PII), scrub), 1),
              "writer_rows_per_s_pii_unscrubbed": round(writer_rate(rows(n, PII), None), 1)}
    emit(result)


if __name__ == "__main__":
    main()
