"""``{{ <JMESPath> }}`` templates inside step configuration values.

Templates are evaluated against a context shaped like
``{"input": ..., "steps": {"<id>": {"output": ..., "status": ...}}}``. A string that is
exactly one template evaluates to the raw JMESPath result (keeping its JSON type); a
string with templates inside other text is interpolated into a string.
"""

from __future__ import annotations

import functools
import json
import re
import warnings
from collections.abc import Iterable, Mapping
from typing import Any

import jmespath
from jmespath.exceptions import JMESPathError
from jmespath.parser import ParsedResult

__all__ = [
    "TEMPLATE_RE",
    "TemplateError",
    "compile_expression",
    "find_templates",
    "is_whole_template",
    "json_pointer",
    "render",
]

# Lazy match so several templates in one string stay separate. DOTALL lets an expression
# span lines (multi-line text areas in the editor).
TEMPLATE_RE = re.compile(r"\{\{\s*(.*?)\s*\}\}", re.DOTALL)


class TemplateError(ValueError):
    """A template expression failed to parse or to evaluate."""

    def __init__(self, expression: str, reason: str) -> None:
        super().__init__(f"template {{{{ {expression} }}}}: {reason}")
        self.expression = expression
        self.reason = reason


@functools.lru_cache(maxsize=2048)
def compile_expression(expression: str) -> ParsedResult:
    """Compile a JMESPath expression once; raises ``JMESPathError`` when it does not parse.

    The deprecated JEP-12 literal form (`` `foo` `` meaning the string "foo") is refused
    too: jmespath only warns about it, and a warning turned into an error elsewhere would
    surface as an unexpected exception instead of a validation message.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("error", PendingDeprecationWarning)
        try:
            return jmespath.compile(expression)
        except PendingDeprecationWarning as exc:
            reason = f"{exc}; quote a raw string as 'foo' or a JSON literal as `\"foo\"`"
            raise JMESPathError(reason) from exc


def json_pointer(parts: Iterable[str | int]) -> str:
    """Build an RFC 6901 JSON pointer from path segments (``[]`` is the root, ``""``)."""
    return "".join("/" + str(p).replace("~", "~0").replace("/", "~1") for p in parts)


def is_whole_template(s: str) -> bool:
    """Whether ``s`` is exactly one template and nothing else (no surrounding text)."""
    return _whole_match(s) is not None


def _whole_match(s: str) -> re.Match[str] | None:
    # A plain fullmatch would accept "{{ a }} {{ b }}" as one template with expression
    # "a }} {{ b", so insist that the first template found spans the whole string.
    match = TEMPLATE_RE.match(s)
    return match if match is not None and match.end() == len(s) else None


def find_templates(value: object) -> list[tuple[str, str]]:
    """Every template in a nested JSON value as ``(json_pointer, expression)``.

    Only string values are searched (object keys are never templates). The walk is
    iterative so deeply nested input cannot exhaust the interpreter stack.
    """
    found: list[tuple[str, str]] = []
    stack: list[tuple[tuple[str | int, ...], object]] = [((), value)]
    while stack:
        path, current = stack.pop()
        if isinstance(current, str):
            pointer = json_pointer(path)
            found.extend((pointer, m.group(1)) for m in TEMPLATE_RE.finditer(current))
        elif isinstance(current, Mapping):
            children = [((*path, str(k)), v) for k, v in current.items()]
            stack.extend(reversed(children))
        elif isinstance(current, list):
            stack.extend(reversed([((*path, i), v) for i, v in enumerate(current)]))
    return found


def render(value: Any, context: Any) -> Any:
    """Resolve every template in ``value`` against ``context``.

    Dicts and lists are rebuilt with rendered members; other non-string values are
    returned unchanged. A whole-template string becomes the JMESPath result as-is (``None``
    when the path is missing); embedded templates are interpolated, JSON-encoding objects,
    arrays and booleans and turning ``null`` into an empty string.

    Raises ``TemplateError`` when an expression fails to parse or to evaluate.
    """
    if isinstance(value, str):
        return _render_string(value, context)
    if isinstance(value, Mapping):
        return {k: render(v, context) for k, v in value.items()}
    if isinstance(value, list):
        return [render(v, context) for v in value]
    return value


def _render_string(value: str, context: Any) -> Any:
    if "{{" not in value:
        return value
    whole = _whole_match(value)
    if whole is not None:
        return _evaluate(whole.group(1), context)
    return TEMPLATE_RE.sub(lambda m: _stringify(_evaluate(m.group(1), context)), value)


def _evaluate(expression: str, context: Any) -> Any:
    try:
        return compile_expression(expression).search(context)
    except JMESPathError as exc:
        raise TemplateError(expression, str(exc)) from exc


def _stringify(result: Any) -> str:
    if result is None:
        return ""
    if isinstance(result, str):
        return result
    # Booleans and containers are written as JSON ("true", not Python's "True") so the
    # text reads the same as the value would in the API.
    if isinstance(result, bool | dict | list):
        return json.dumps(result, ensure_ascii=False)
    return str(result)
