"""Named SQL queries loaded from ``sql/*.sql``.

Each block starts with ``-- name: <query_name>``; the following comment lines document the
positional parameters. Call sites say ``queries["get_workflow"]``, so every statement the code
runs can be read, searched and reviewed as SQL.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from types import MappingProxyType

SQL_DIR = Path(__file__).resolve().parent.parent / "sql"
_NAME = re.compile(r"^--\s*name:\s*(\w+)\s*$", re.MULTILINE)


class DuplicateQueryError(Exception):
    """Two SQL blocks share a name."""


def parse_queries(text: str, source: str = "<sql>") -> dict[str, str]:
    """Split one SQL file into its named blocks."""
    found: dict[str, str] = {}
    parts = _NAME.split(text)
    # parts = [preamble, name1, body1, name2, body2, ...]
    for name, body in zip(parts[1::2], parts[2::2], strict=True):
        if name in found:
            raise DuplicateQueryError(f"query {name!r} defined twice in {source}")
        statement = "\n".join(
            line for line in body.strip().splitlines() if not line.lstrip().startswith("--")
        ).strip()
        found[name] = statement
    return found


def load_queries(directory: Path = SQL_DIR) -> Mapping[str, str]:
    """Load every ``*.sql`` file in the directory into one read-only mapping."""
    merged: dict[str, str] = {}
    for path in sorted(directory.glob("*.sql")):
        for name, statement in parse_queries(path.read_text(), path.name).items():
            if name in merged:
                raise DuplicateQueryError(f"query {name!r} defined twice ({path.name})")
            merged[name] = statement
    return MappingProxyType(merged)


queries: Mapping[str, str] = load_queries()
