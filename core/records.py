"""The one record type that flows from seed to trainer, with lineage.

Every stage reads and writes `Example`s as JSON lines. Lineage fields make the
collapse guard checkable: an example whose `source` is "student" must never reach
training (see `trainers.data.build_training_pool`).
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterable, Iterator

# traffic_relabel: a served input (any lane) the teacher labelled with the run's audited option (flows/traffic_context.py).
SOURCES = ("human", "teacher", "traffic", "student", "traffic_relabel")
# Sources whose output the teacher wrote: its audit's per-label thresholds apply to them (filters/confidence.py).
TEACHER_LABELLED = frozenset({"teacher", "traffic_relabel"})


class DataError(ValueError):
    """Bad input data; the message names the file and line."""


def now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def parse_instant(value: Any) -> datetime | None:
    """A timestamp as an aware UTC datetime, or None when it is not one. Accepts ISO-8601 text
    (a trailing Z too) and datetimes; naive ones are read as UTC (documented contract).
    Timestamps are compared as instants, never as strings: "10:00+05:00" is before "06:00Z"."""
    if isinstance(value, datetime):
        ts = value
    else:
        try:
            ts = datetime.fromisoformat(str(value).strip())
        except (TypeError, ValueError):
            return None
    return (ts if ts.tzinfo else ts.replace(tzinfo=timezone.utc)).astimezone(timezone.utc)


EARLIEST = datetime.min.replace(tzinfo=timezone.utc)


def instant_key(value: Any) -> datetime:
    """Sort key for timestamps: `parse_instant(value)`, or the earliest instant when it is not one
    (a record without a valid time sorts first)."""
    return parse_instant(value) or EARLIEST


def content_id(skill: str, input: Any, output: Any = None) -> str:
    """A stable id from content, so a re-run produces the same ids."""
    payload = json.dumps([skill, input, output], sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


@dataclass
class Example:
    id: str
    skill: str
    input: str
    output: str | None
    source: str  # human | teacher | traffic | student | traffic_relabel
    teacher: str | None = None  # model id that wrote `output` (or `input`), None for people
    parent_ids: list[str] = field(default_factory=list)  # seeds shown to the teacher
    confidence: float | None = None
    created_at: str = field(default_factory=now_iso)
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.source not in SOURCES:
            raise ValueError(f"source must be one of {SOURCES}, got {self.source!r}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Example":
        return cls(**d)


@dataclass
class Rejected:
    """An example a stage dropped, and why (snake_case reason)."""

    example: Example
    stage: str
    reason: str
    detail: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"stage": self.stage, "reason": self.reason, "detail": self.detail, "example": self.example.to_dict()}


# A JSONL file is split on "\n" only: json.dumps(ensure_ascii=False) writes U+2028, U+2029, U+0085
# and other characters str.splitlines() breaks on raw inside strings. Each line is decoded on its own,
# so one line with invalid UTF-8 costs that line, named, and a UTF-8 byte-order mark costs nothing.
_UTF16_BOMS = (b"\xff\xfe", b"\xfe\xff")


def _decode_line(lineno: int, line: str | bytes) -> tuple[str | None, str | None]:
    if isinstance(line, str):
        return (line.removeprefix("\ufeff") if lineno == 1 else line), None
    if lineno == 1:
        if line.startswith(_UTF16_BOMS):
            return None, "the file is UTF-16 (byte-order mark); save it as UTF-8"
        line = line.removeprefix(b"\xef\xbb\xbf")
    try:
        return line.decode("utf-8"), None
    except UnicodeDecodeError as e:
        return None, f"invalid UTF-8 (byte 0x{line[e.start]:02X} at byte {e.start + 1} of the line); save the file as UTF-8"


def parse_jsonl_lines(lines: Iterable[str | bytes]) -> Iterator[tuple[int, dict[str, Any] | None, str | None]]:
    """(line number, object, None) for each non-blank line that is a JSON object, else
    (line number, None, problem); never stops early, so a caller can report every bad line.
    `lines` are str or raw bytes (decoded per line, see `iter_jsonl`); a BOM on line 1 is ignored."""
    for lineno, raw in enumerate(lines, 1):
        line, problem = _decode_line(lineno, raw)
        if problem:
            yield lineno, None, problem
            if lineno == 1 and isinstance(raw, bytes) and raw.startswith(_UTF16_BOMS):
                return  # every later line of a UTF-16 file is garbage too: one problem says it
            continue
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            yield lineno, None, f"invalid JSON ({e.msg} at column {e.colno})"
            continue
        if not isinstance(obj, dict):
            yield lineno, None, f"expected a JSON object, got {type(obj).__name__}"
            continue
        yield lineno, obj, None


def split_jsonl(text: str | bytes) -> list:
    """The lines of a whole JSONL text, split on "\n" only (never str.splitlines)."""
    return text.split(b"\n" if isinstance(text, bytes) else "\n")


def iter_jsonl(path: str | Path) -> Iterator[tuple[int, dict[str, Any] | None, str | None]]:
    """parse_jsonl_lines over a file read as bytes, streamed line by line (binary files split on
    b"\n" only), so invalid UTF-8 or an odd separator never stops the read."""
    with Path(path).open("rb") as f:
        yield from parse_jsonl_lines(f)


def read_jsonl(path: str | Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """Yield (line number, object) for each non-blank line; a bad line raises DataError naming
    file and line."""
    path = Path(path)
    for lineno, obj, problem in iter_jsonl(path):
        if problem:
            raise DataError(f"{path}:{lineno}: {problem}")
        yield lineno, obj


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write a file so readers see the old content or the new, never half of it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_jsonl(path: str | Path, rows: Iterable[dict[str, Any]]) -> int:
    lines = [json.dumps(r, ensure_ascii=False) + "\n" for r in rows]
    atomic_write_text(path, "".join(lines))
    return len(lines)


def write_examples(path: str | Path, examples: Iterable[Example]) -> int:
    return write_jsonl(path, (e.to_dict() for e in examples))


def read_examples(path: str | Path) -> list[Example]:
    out = []
    for lineno, obj in read_jsonl(path):
        try:
            out.append(Example.from_dict(obj))
        except (TypeError, ValueError) as e:
            raise DataError(f"{path}:{lineno}: not an Example record ({e})") from None
    return out


def write_json(path: str | Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, ensure_ascii=False, sort_keys=False) + "\n")


def hash_examples(examples: Iterable[Example]) -> str:
    """Order-independent hash of (input, output) pairs: the dataset hash in lineage."""
    h = hashlib.sha256()
    for key in sorted(json.dumps([e.input, e.output], ensure_ascii=False) for e in examples):
        h.update(key.encode())
        h.update(b"\n")
    return h.hexdigest()
