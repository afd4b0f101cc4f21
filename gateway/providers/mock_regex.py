"""A string that a regular expression matches: what the mock's JSON generator gives a string
with a `pattern`.

Built by walking the pattern as Python's own regex parser reads it, for the subset JSON
schemas use: literals, classes (`[A-Z0-9_]`, `[^,]`, `\\d`, `\\w`), `.`, quantifiers, groups,
alternatives (the first is taken) and anchors. Back references and conditionals are not
followed. The caller checks the result against the pattern.
"""

from __future__ import annotations

import importlib
import re
from typing import Any

# Python's own regex parser (private, but stable since 3.11 and the one `re` uses): the pattern
# as a tree of opcodes, walked below to build a string it matches.
try:
    _REGEX_PARSER: Any = importlib.import_module("re._parser")
except ImportError:  # pragma: no cover - a Python without it: patterns are not followed
    _REGEX_PARSER = None

_CATEGORY_CHAR = {
    "CATEGORY_DIGIT": "7",
    "CATEGORY_NOT_DIGIT": "a",
    "CATEGORY_WORD": "a",
    "CATEGORY_NOT_WORD": "-",
    "CATEGORY_SPACE": " ",
    "CATEGORY_NOT_SPACE": "a",
}

_CATEGORY_REGEX = {
    "CATEGORY_DIGIT": r"\d",
    "CATEGORY_NOT_DIGIT": r"\D",
    "CATEGORY_WORD": r"\w",
    "CATEGORY_NOT_WORD": r"\W",
    "CATEGORY_SPACE": r"\s",
    "CATEGORY_NOT_SPACE": r"\S",
}


def regex_example(pattern: str) -> str | None:
    """A string the pattern matches, for the common subset: literals, classes, `.`,
    quantifiers, groups, alternatives, anchors. None for what it cannot build."""
    if _REGEX_PARSER is None:
        return None
    try:
        tree = _REGEX_PARSER.parse(pattern)
    except Exception:
        return None
    out: list[str] = []
    return "".join(out) if _emit(tree, out) else None


def _emit(items: Any, out: list[str]) -> bool:
    for op, arg in items:
        name = str(op)
        if name == "LITERAL":
            out.append(chr(arg))
        elif name == "NOT_LITERAL":
            out.append("a" if arg != ord("a") else "b")
        elif name == "ANY":
            out.append("a")
        elif name in ("IN", "CATEGORY"):
            char = _class_char(arg if name == "IN" else [(op, arg)])
            if char is None:
                return False
            out.append(char)
        elif name in ("MAX_REPEAT", "MIN_REPEAT", "POSSESSIVE_REPEAT"):
            low, high, sub = arg
            for _ in range(low if low > 0 else min(high, 1)):
                if not _emit(sub, out):
                    return False
        elif name == "SUBPATTERN":
            if not _emit(arg[-1], out):
                return False
        elif name == "BRANCH":
            if not _emit(arg[1][0], out):
                return False
        elif name not in ("AT", "ASSERT", "ASSERT_NOT"):
            return False  # back references, conditionals: not followed
    return True


def _class_char(items: list[Any]) -> str | None:
    """A character of a `[...]` class (or a lone `\\d`, `\\w`...)."""
    if items and str(items[0][0]) == "NEGATE":
        for char in "aA0_-. ":
            if not _in_class(char, items[1:]):
                return char
        return None
    for op, arg in items:
        name = str(op)
        if name == "LITERAL":
            return chr(arg)
        if name == "RANGE":
            return chr(arg[0])
        if name == "CATEGORY":
            return _CATEGORY_CHAR.get(str(arg))
    return None


def _in_class(char: str, items: list[Any]) -> bool:
    for op, arg in items:
        name = str(op)
        if name == "LITERAL" and chr(arg) == char:
            return True
        if name == "RANGE" and arg[0] <= ord(char) <= arg[1]:
            return True
        if name == "CATEGORY":
            category = _CATEGORY_REGEX.get(str(arg))
            if category is not None and re.fullmatch(category, char):
                return True
    return False
