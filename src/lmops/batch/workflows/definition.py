"""Versions of workflow definitions: a content hash of a step's (or a workflow's) canonical definition.

A step's canonical definition is its kind and every field of its dataclass: prompts (version and templates),
model, adapter, params, schema, policies, and, for Python callables (``fn``, ``parse``, ``rule``), their
qualified name and a digest of their compiled code (bytecode, constants and names; not line numbers, so moving a
function in its file is no change; not the values a closure captures). The hash is the same in every process
that runs the same code, so workers, the gateway and ``lmops replay`` agree on it.
"""

from __future__ import annotations

import dataclasses
import hashlib
from types import CodeType
from typing import Any

import orjson

HASH_CHARS = 16  # 64 bits: enough to tell versions apart (a hash tells what changed, it is no signature)


def digest(value: Any) -> str:
    """A short hex digest of ``value``'s canonical JSON (keys sorted)."""
    data = orjson.dumps(canonical(value), option=orjson.OPT_SORT_KEYS | orjson.OPT_NON_STR_KEYS)
    return hashlib.sha256(data).hexdigest()[:HASH_CHARS]


def canonical(value: Any) -> Any:
    """``value`` as plain JSON data that is the same for the same definition in any process."""
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    if isinstance(value, dict):
        return {str(k): canonical(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [canonical(v) for v in value]
    if isinstance(value, (set, frozenset)):
        return sorted((canonical(v) for v in value), key=repr)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        fields = {f.name: canonical(getattr(value, f.name)) for f in dataclasses.fields(value) if f.init}
        return {"kind": _name(type(value)), **fields}
    if callable(value):
        return _callable(value)
    return {"kind": _name(type(value)), "repr": repr(value) if type(value).__repr__ is not object.__repr__ else None}


def _name(obj: Any) -> str:
    return f"{getattr(obj, '__module__', '?')}.{getattr(obj, '__qualname__', type(obj).__qualname__)}"


def _callable(fn: Any) -> Any:
    func = getattr(fn, "__func__", fn)  # a bound method: its function
    code = getattr(func, "__code__", None)
    if code is None:
        code = getattr(type(fn).__call__, "__code__", None)  # a callable object: its class's __call__
        func = fn if code is None else type(fn)
    return {"callable": _name(func), "code": _code(code) if code is not None else None,
            "defaults": canonical(getattr(func, "__defaults__", None))}


def _code(code: CodeType) -> str:
    parts = [code.co_code.hex(), [_const(c) for c in code.co_consts], list(code.co_names)]
    return hashlib.sha256(orjson.dumps(parts)).hexdigest()[:HASH_CHARS]


def _const(c: Any) -> Any:
    if isinstance(c, CodeType):
        return _code(c)
    if isinstance(c, tuple):
        return [_const(x) for x in c]
    if isinstance(c, frozenset):  # e.g. ``x in {"a", "b"}``: its order varies with string hashing
        return sorted((_const(x) for x in c), key=repr)
    return repr(c)
