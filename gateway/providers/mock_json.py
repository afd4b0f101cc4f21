"""A deterministic JSON value that fits a JSON schema: what the mock answers structured output
and tool calls with.

Covers what structured-output helpers send: pydantic's `model_json_schema()`, zod's and the AI
SDK's JSON schemas, OpenAI strict schemas. `type` (one or a list), `properties`, `required`,
`additionalProperties`, `minProperties`, `items`, `prefixItems`, `minItems`, `maxItems`,
`uniqueItems`, `enum`, `const`, `anyOf`, `oneOf`, `allOf`, `$ref` (into `$defs`, `definitions`
or any JSON pointer of the document), string `minLength`, `maxLength`, `format` (date-time,
date, time, email, uri, uuid, ipv4, ipv6, hostname...) and `pattern` (tried against a few
candidates), number and integer bounds (inclusive and exclusive) and `multipleOf`. Keywords
it does not know are ignored, so a value can miss those.

The same schema and seed always give the same value. Recursive schemas end: past a depth,
objects get only their required properties, arrays their minimum length and unions their
`null` branch when they have one.
"""

from __future__ import annotations

import math
import random
import re
from decimal import Decimal
from typing import Any, TypeVar

from gateway.providers.mock_regex import regex_example

_WORDS = (
    "alpha",
    "amber",
    "river",
    "stone",
    "cedar",
    "harbor",
    "lumen",
    "maple",
    "orbit",
    "pixel",
    "quartz",
    "signal",
    "tundra",
    "velvet",
    "willow",
    "zephyr",
)

_TYPES = ("object", "array", "string", "integer", "number", "boolean", "null")
_SHALLOW_DEPTH = 6  # past it: only what the schema requires
_MAX_DEPTH = 24  # past it: null, whatever the schema says (a schema that cannot end)
_DEFAULT_ITEMS = 2
_INT_SPAN = 100


def sample_json(schema: Any, seed: int) -> Any:
    """A value for `schema` (a JSON schema document, `$defs` and all), chosen by `seed`."""
    return _Sampler(schema, seed).value(schema, 0)


class _Sampler:
    def __init__(self, root: Any, seed: int) -> None:
        self._root = root
        self._rng = random.Random(seed)

    # --- dispatch ----------------------------------------------------------------------

    def value(self, schema: Any, depth: int) -> Any:
        if schema is True or schema is None or schema == {}:
            return self._word()
        if schema is False or not isinstance(schema, dict) or depth > _MAX_DEPTH:
            return None
        schema = self._resolved(schema, depth)
        if "const" in schema:
            return schema["const"]
        enum = schema.get("enum")
        if isinstance(enum, list) and enum:
            choices = [v for v in enum if v is not None] or enum
            return choices[self._rng.randrange(len(choices))]
        for union in ("anyOf", "oneOf"):
            branches = schema.get(union)
            if isinstance(branches, list) and branches:
                rest = {k: v for k, v in schema.items() if k != union}
                if union == "oneOf":
                    # A whole number is also a number: it would match two branches.
                    types = [b.get("type") if isinstance(b, dict) else None for b in branches]
                    if "number" in types:
                        branches = [
                            b for b, t in zip(branches, types, strict=True) if t != "integer"
                        ]
                return self.value(_merged(rest, self._branch(branches, depth)), depth)
        kind = self._type_of(schema, depth)
        if kind == "object":
            return self._object(schema, depth)
        if kind == "array":
            return self._array(schema, depth)
        if kind == "string":
            return self._string(schema)
        if kind == "integer":
            return self._integer(schema)
        if kind == "number":
            return self._number(schema)
        if kind == "boolean":
            return self._rng.random() < 0.5
        return None

    def _resolved(self, schema: dict[str, Any], depth: int) -> dict[str, Any]:
        """`$ref` and `allOf` folded into one schema."""
        for _ in range(_MAX_DEPTH):
            ref = schema.get("$ref")
            if not isinstance(ref, str):
                break
            rest = {k: v for k, v in schema.items() if k != "$ref"}
            target = self._pointer(ref)
            schema = _merged(target if isinstance(target, dict) else {}, rest)
        parts = schema.get("allOf")
        if isinstance(parts, list):
            merged = {k: v for k, v in schema.items() if k != "allOf"}
            for part in parts:
                if isinstance(part, dict):
                    merged = _merged(merged, self._resolved(part, depth))
            schema = merged
        return schema

    def _pointer(self, ref: str) -> Any:
        if not ref.startswith("#"):
            return {}  # a remote reference: nothing to follow offline
        node = self._root
        for raw in ref[1:].split("/")[1:]:
            key = raw.replace("~1", "/").replace("~0", "~")
            if isinstance(node, dict) and key in node:
                node = node[key]
            elif isinstance(node, list) and key.isdigit() and int(key) < len(node):
                node = node[int(key)]
            else:
                return {}
        return node

    def _branch(self, branches: list[Any], depth: int) -> Any:
        """The first branch that is not null; the null one once deep, when there is one (so
        recursive schemas end)."""
        nulls = [b for b in branches if _is_null(b)]
        others = [b for b in branches if not _is_null(b)]
        if depth >= _SHALLOW_DEPTH and nulls:
            return nulls[0]
        return (others or nulls)[0]

    def _type_of(self, schema: dict[str, Any], depth: int) -> str:
        declared = schema.get("type")
        if isinstance(declared, list):
            known = [t for t in declared if t in _TYPES]
            if depth >= _SHALLOW_DEPTH and "null" in known:
                return "null"
            return next((t for t in known if t != "null"), "null")
        if isinstance(declared, str):
            return declared
        if any(k in schema for k in ("properties", "required", "additionalProperties")):
            return "object"
        if any(k in schema for k in ("items", "prefixItems", "minItems", "maxItems")):
            return "array"
        if any(k in schema for k in ("minimum", "maximum", "exclusiveMinimum", "multipleOf")):
            return "number"
        return "string"

    # --- containers --------------------------------------------------------------------

    def _object(self, schema: dict[str, Any], depth: int) -> dict[str, Any]:
        properties = schema.get("properties")
        properties = properties if isinstance(properties, dict) else {}
        required = [r for r in schema.get("required") or [] if isinstance(r, str)]
        extra = schema.get("additionalProperties", True)
        names = list(properties) if depth < _SHALLOW_DEPTH else []
        names += [name for name in required if name not in names]
        out: dict[str, Any] = {}
        for name in names:
            out[name] = self.value(properties.get(name, extra), depth + 1)
        wanted = schema.get("minProperties")
        if isinstance(wanted, int) and extra is not False:
            while len(out) < wanted:
                out[f"{self._word()}_{len(out)}"] = self.value(extra, depth + 1)
        return out

    def _array(self, schema: dict[str, Any], depth: int) -> list[Any]:
        prefix = schema.get("prefixItems")
        items = schema.get("items", True)
        if isinstance(items, list):  # draft 7's tuple form
            prefix, items = items, schema.get("additionalItems", True)
        prefix = prefix if isinstance(prefix, list) else []
        low = _int(schema.get("minItems"), 0)
        high = _int(schema.get("maxItems"), None)
        count = max(low, len(prefix) if depth < _SHALLOW_DEPTH else 0)
        if depth < _SHALLOW_DEPTH:
            count = max(count, _DEFAULT_ITEMS)
        if high is not None:
            count = min(count, high)
        if items is False:
            count = min(count, len(prefix))
        out: list[Any] = []
        unique = schema.get("uniqueItems") is True
        tries = 0
        while len(out) < count and tries < count * 8:
            tries += 1
            item_schema = prefix[len(out)] if len(out) < len(prefix) else items
            item = self.value(item_schema, depth + 1)
            if unique and any(_same(item, seen) for seen in out):
                continue
            out.append(item)
        return out

    # --- scalars -----------------------------------------------------------------------

    def _word(self) -> str:
        return _WORDS[self._rng.randrange(len(_WORDS))]

    def _string(self, schema: dict[str, Any]) -> str:
        fmt = schema.get("format")
        text = self._formatted(fmt) if isinstance(fmt, str) else None
        if text is None:
            text = " ".join(self._word() for _ in range(self._rng.randint(1, 3)))
        pattern = schema.get("pattern")
        if isinstance(pattern, str):
            text = self._matching(pattern, text)
        low = _int(schema.get("minLength"), 0)
        high = _int(schema.get("maxLength"), None)
        while len(text) < low:
            text += " " + self._word()
        return text if high is None else text[:high]

    def _formatted(self, fmt: str) -> str | None:
        rng = self._rng
        day = f"2025-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}"
        clock = f"{rng.randint(0, 23):02d}:{rng.randint(0, 59):02d}:{rng.randint(0, 59):02d}"
        host = f"{self._word()}.example.com"
        formats = {
            "date-time": f"{day}T{clock}Z",
            "date": day,
            "time": clock,
            "duration": f"P{rng.randint(1, 30)}D",
            "email": f"{self._word()}@{host}",
            "idn-email": f"{self._word()}@{host}",
            "hostname": host,
            "idn-hostname": host,
            "uri": f"https://{host}/{self._word()}",
            "url": f"https://{host}/{self._word()}",
            "iri": f"https://{host}/{self._word()}",
            "uri-reference": f"/{self._word()}",
            "iri-reference": f"/{self._word()}",
            "uuid": _uuid(rng),
            "ipv4": f"192.0.2.{rng.randint(1, 254)}",
            "ipv6": f"2001:db8::{rng.randint(1, 0xFFFF):x}",
            "byte": "bW9jaw==",
            "base64": "bW9jaw==",
            "regex": "^[a-z]+$",
            "json-pointer": f"/{self._word()}",
        }
        return formats.get(fmt)

    def _matching(self, pattern: str, text: str) -> str:
        """`text` when the pattern finds a match in it, else a string built from the
        pattern itself, else `text` (a pattern this cannot follow)."""
        try:
            compiled = re.compile(pattern)
        except re.error:
            return text  # ECMA syntax Python's `re` lacks (`\p{L}`...)
        if compiled.search(text):
            return text
        built = regex_example(pattern)
        return built if built is not None and compiled.search(built) else text

    def _integer(self, schema: dict[str, Any]) -> int:
        low, high = _int_range(*_bounds(schema))
        step = _int(schema.get("multipleOf"), None)
        if step is not None and step > 0:
            first, last = -(-low // step), high // step
            if first <= last:
                return int(step * self._rng.randint(first, last))
        return self._rng.randint(low, high) if low <= high else low

    def _number(self, schema: dict[str, Any]) -> float | int:
        bounds = _bounds(schema)
        low, low_open, high, high_open = bounds
        step = _num(schema.get("multipleOf"))
        if step is not None and step > 0:
            first, last = _int_range(
                None if low is None else low / step,
                low_open,
                None if high is None else high / step,
                high_open,
            )
            if first <= last:
                # Through Decimal: 3 * 0.1 is 0.30000000000000004 in floats.
                return float(Decimal(repr(step)) * self._rng.randint(first, last))
        first, last = _int_range(*bounds)
        if first <= last:
            # A halfway point rather than a whole number where it fits, so that the value is
            # a number and not also an integer (which matters to `oneOf: [integer, number]`).
            whole = self._rng.randint(first, last)
            half = whole + 0.5
            inside_low = low is None or half > low or (half == low and not low_open)
            inside_high = high is None or half < high or (half == high and not high_open)
            return half if inside_low and inside_high else whole
        if low is not None and high is not None:
            return (low + high) / 2  # a range narrower than one
        return 0.5


def _bounds(schema: dict[str, Any]) -> tuple[float | None, bool, float | None, bool]:
    """(low, low exclusive, high, high exclusive), drafts 4 to 2020-12."""
    low, high = _num(schema.get("minimum")), _num(schema.get("maximum"))
    low_open = high_open = False
    ex_low, ex_high = schema.get("exclusiveMinimum"), schema.get("exclusiveMaximum")
    if ex_low is True:  # draft 4: a flag on `minimum`
        low_open = True
    elif (value := _num(ex_low)) is not None and (low is None or value >= low):
        low, low_open = value, True
    if ex_high is True:
        high_open = True
    elif (value := _num(ex_high)) is not None and (high is None or value <= high):
        high, high_open = value, True
    return low, low_open, high, high_open


def _int_range(
    low: float | None, low_open: bool, high: float | None, high_open: bool
) -> tuple[int, int]:
    """The whole numbers inside the bounds (empty when first > last); a span of
    `_INT_SPAN` on a side with no bound."""
    first = None if low is None else math.floor(low) + 1 if low_open else math.ceil(low)
    last = None if high is None else math.ceil(high) - 1 if high_open else math.floor(high)
    if first is None and last is None:
        return 1, _INT_SPAN
    if first is None:
        assert last is not None
        return last - _INT_SPAN, last
    if last is None:
        return first, first + _INT_SPAN
    return first, last


def _merged(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    """Two schemas that must both hold, merged the way the generator needs: properties and
    required united, the rest from `extra`."""
    if not isinstance(extra, dict):
        return base
    out = {**base, **extra}
    if isinstance(base.get("properties"), dict) and isinstance(extra.get("properties"), dict):
        out["properties"] = {**base["properties"], **extra["properties"]}
    if isinstance(base.get("required"), list) and isinstance(extra.get("required"), list):
        out["required"] = [
            *base["required"],
            *(r for r in extra["required"] if r not in base["required"]),
        ]
    return out


def _is_null(schema: Any) -> bool:
    return isinstance(schema, dict) and (
        schema.get("type") == "null" or schema.get("const", 0) is None
    )


def _same(a: Any, b: Any) -> bool:
    return type(a) is type(b) and a == b


_Default = TypeVar("_Default", int, None)


def _int(value: Any, default: _Default) -> int | _Default:
    return value if isinstance(value, int) and not isinstance(value, bool) else default


def _num(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)


def _uuid(rng: random.Random) -> str:
    """A version-4 UUID (the variant and version bits set, as validators check), from `rng`."""
    digits = f"{rng.getrandbits(128):032x}"
    variant = "89ab"[int(digits[16], 16) % 4]
    return f"{digits[:8]}-{digits[8:12]}-4{digits[13:16]}-{variant}{digits[17:20]}-{digits[20:32]}"
