"""Request bodies in /openapi.json and /docs for routes that read their body themselves.

The inference, admin and batch routes parse their JSON with a size limit and a clear 400 (``api/bodies.py``),
uploads stream their multipart parts to disk, and the inference routes skip FastAPI's routing altogether
(``api/direct.py``): FastAPI cannot see any of these bodies. ``request_body(...)`` is the ``openapi_extra`` that
documents one, from the same pydantic models that validate it, their definitions inlined so that each operation
stands alone.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel

FILE = {"type": "string", "format": "binary"}


def request_body(json: type[BaseModel] | None = None, form: dict[str, Any] | None = None) -> dict[str, Any]:
    """A JSON body validated by ``json``, and/or a ``multipart/form-data`` one described by ``form``."""
    content: dict[str, Any] = {}
    if json is not None:
        content["application/json"] = {"schema": schema_of(json)}
    if form is not None:
        content["multipart/form-data"] = {"schema": form}
    return {"requestBody": {"required": True, "content": content}}


def upload_form(fields: type[BaseModel] | dict[str, Any], *, file: str = "file") -> dict[str, Any]:
    """A multipart form: a ``file`` part plus the fields of a model (or a JSON schema of them)."""
    schema = schema_of(fields) if isinstance(fields, type) else dict(fields)
    schema["properties"] = {**schema.get("properties", {}), file: FILE}
    schema["required"] = [*schema.get("required", []), file]
    return schema


def schema_of(model: type[BaseModel]) -> dict[str, Any]:
    schema = model.model_json_schema()
    defs = schema.pop("$defs", {})
    inlined: dict[str, Any] = _inline(schema, defs, ())
    return inlined


def _inline(node: Any, defs: dict[str, Any], seen: tuple[str, ...]) -> Any:
    if isinstance(node, list):
        return [_inline(item, defs, seen) for item in node]
    if not isinstance(node, dict):
        return node
    ref = node.get("$ref")
    if isinstance(ref, str) and ref.startswith("#/$defs/"):
        name = ref.rsplit("/", 1)[1]
        if name in seen:
            raise ValueError(f"schema {name} refers to itself: it cannot be inlined")
        rest = {k: _inline(v, defs, seen) for k, v in node.items() if k != "$ref"}
        return {**_inline(defs[name], defs, (*seen, name)), **rest}
    return {key: _inline(value, defs, seen) for key, value in node.items()}
