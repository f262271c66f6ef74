"""Name rules: how every name the project turns into a path, a key or a table is checked.

A rule matches the WHOLE string (`re.fullmatch`). `re.match` with `^...$` does not: `$` also
matches before a final newline, so "r1\\n" passed `^[A-Za-z0-9]+$` and became a run folder named
"r1\\n". Run ids (core.workdir), skill names (core.config), registry skill/alias names and version
folders (registry.store), function names (core.structured) and vLLM tensor names (registry.serving)
are all `NameRule`s; the pydantic `pattern=` fields (flow parameters, table names) are checked by
pydantic-core's Rust regex engine, where `$` is the end of the text.
"""

from __future__ import annotations

import re
from typing import Any


class NameRule:
    """A whole-string name rule: `pattern` (no anchors needed) must match all of a `str`.

    `rule` is the human text of the rule, used in error messages ("1-128 ASCII letters, ...")."""

    def __init__(self, pattern: str, rule: str):
        # Ends in \Z as well, so even `.regex.match` (a caller's, later) cannot stop before the end.
        self.regex = re.compile(rf"(?:{pattern})\Z")
        self.rule = rule

    def match(self, name: Any) -> re.Match[str] | None:
        """The whole-string match of `name` (its groups), None when `name` is not a str or does not match."""
        return self.regex.fullmatch(name) if isinstance(name, str) else None

    def ok(self, name: Any) -> bool:
        """True when `name` is a str matching the rule from its first to its last character."""
        return self.match(name) is not None

    def problem(self, kind: str, name: Any) -> str | None:
        """Why `name` cannot be a `kind` ("run id", "skill name"...), or None: "<kind> '<name>' is not
        allowed: use <rule>" (repr shows a trailing newline or NUL)."""
        return None if self.ok(name) else f"{kind} {name!r} is not allowed: use {self.rule}"
