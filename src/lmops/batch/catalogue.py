"""A synthetic product catalogue for demos, tests and benchmarks (deterministic for a seed)."""

from __future__ import annotations

import random
from collections.abc import Iterator
from typing import Any

CATEGORIES = {
    "t-shirt": ("cotton", "linen", "polyester"), "sneakers": ("leather", "canvas", "mesh"),
    "sofa": ("velvet", "linen", "leather"), "backpack": ("nylon", "canvas", "leather"),
    "lamp": ("brass", "glass", "ceramic"), "dress": ("silk", "cotton", "viscose"),
}
COLOURS = ("black", "white", "navy", "olive", "red", "beige", "grey", "mustard")
STYLES = ("classic", "modern", "minimalist", "vintage", "sporty", "boho")
BRANDS = ("Nordlys", "Acme", "Verde", "Kumo", "Atelier 9")


def products(n: int, seed: int = 0) -> Iterator[dict[str, Any]]:
    rng = random.Random(seed)
    for i in range(n):
        category = rng.choice(list(CATEGORIES))
        material, colour, style = rng.choice(CATEGORIES[category]), rng.choice(COLOURS), rng.choice(STYLES)
        brand = rng.choice(BRANDS)
        yield {
            "sku": f"SKU-{seed:02d}-{i:07d}",
            "title": f"{brand} {style} {colour} {material} {category}",
            "category": category,
            "brand": brand,
            "description": f"A {style} {category} in {colour}, made of {material}.",
            "price": round(rng.uniform(5, 500), 2),
        }


def batch_lines(n: int, model: str, seed: int = 0, max_tokens: int = 16) -> Iterator[dict[str, Any]]:
    """OpenAI batch input lines (chat completions) asking for a title for each product."""
    for p in products(n, seed):
        yield {"custom_id": p["sku"], "method": "POST", "url": "/v1/chat/completions",
               "body": {"model": model, "max_tokens": max_tokens, "temperature": 0,
                        "messages": [{"role": "user", "content": f"Write a product title for: {p['description']}"}]}}
