"""Prices per model and the cost of a request.

A price is dollars per 1M input and output tokens, given directly or, for a self-hosted
model, derived from what its GPUs cost per hour and the throughput measured on them:
``$ per 1M tokens = gpu_hour_usd / (tokens_per_second * 3600) * 1e6``; an image model's price is
dollars per generated image.
"""

from __future__ import annotations

from dataclasses import dataclass

from lmops.config import PriceConfig


@dataclass(frozen=True)
class Price:
    input_per_1m: float = 0.0
    output_per_1m: float = 0.0
    per_image: float = 0.0

    def cost(self, prompt_tokens: int, completion_tokens: int, images: int = 0) -> float:
        tokens = (prompt_tokens * self.input_per_1m + completion_tokens * self.output_per_1m) / 1e6
        return tokens + images * self.per_image if images else tokens

    @classmethod
    def from_gpu(cls, gpu_hour_usd: float, output_tokens_per_second: float,
                 input_tokens_per_second: float | None = None) -> "Price":
        def per_1m(rate: float) -> float:
            return gpu_hour_usd / (rate * 3600.0) * 1e6

        return cls(per_1m(input_tokens_per_second) if input_tokens_per_second else 0.0,
                   per_1m(output_tokens_per_second))

    @classmethod
    def from_config(cls, cfg: PriceConfig) -> "Price":
        if cfg.gpu_hour_usd is not None:
            assert cfg.output_tokens_per_second is not None  # checked by PriceConfig
            tokens = cls.from_gpu(cfg.gpu_hour_usd, cfg.output_tokens_per_second, cfg.input_tokens_per_second)
            return cls(tokens.input_per_1m, tokens.output_per_1m, cfg.image or 0.0)
        return cls(cfg.input or 0.0, cfg.output or 0.0, cfg.image or 0.0)


class PriceBook:
    """Price of each model by its public name; a model without a price costs nothing."""

    def __init__(self, prices: dict[str, PriceConfig]):
        self._prices = {name: Price.from_config(cfg) for name, cfg in prices.items()}
        self._free = Price()

    def price(self, model: str | None) -> Price:
        return self._prices.get(model or "", self._free)

    def cost(self, model: str | None, prompt_tokens: int, completion_tokens: int, images: int = 0) -> float:
        return self.price(model).cost(prompt_tokens, completion_tokens, images)
