"""Token usage and its price: what one AI call cost, in USD and EUR.

Prices live in ``ai_model_pricing`` as USD per million tokens with a validity window, so a price change is a
new row and old calls keep the price they were made at. Dated model names ("gpt-4o-2024-08-06", which the
API answers with) are priced by the longest priced prefix ("gpt-4o"); a model with no price at all gets the
original system's fallback and a warning, once per model and process.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import or_, select
from sqlalchemy.ext.asyncio import AsyncConnection

from domain.tables import ai_model_pricing

logger = logging.getLogger(__name__)

FALLBACK_PROMPT_USD_PER_TOKEN = 0.00001
FALLBACK_COMPLETION_USD_PER_TOKEN = 0.00003
_warned: set[str] = set()


def _count(data: Mapping[str, Any] | None, key: str) -> int:
    """A token count from an API answer: a non-negative int, 0 for anything missing or odd."""
    if not isinstance(data, Mapping):
        return 0
    value = data.get(key)
    if isinstance(value, bool) or not isinstance(value, int | float):
        return 0
    return max(0, int(value))


@dataclass(frozen=True)
class Usage:
    """Token counts of one call, as the API reports them (details default to 0)."""

    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0
    cached_tokens: int = 0
    reasoning_tokens: int = 0
    audio_tokens_prompt: int = 0
    audio_tokens_completion: int = 0
    accepted_prediction_tokens: int = 0
    rejected_prediction_tokens: int = 0

    @classmethod
    def from_openai(cls, usage: Mapping[str, Any] | None) -> Usage:
        """From an OpenAI ``usage`` object (dict); None or garbage gives zeros, never an exception."""
        if not isinstance(usage, Mapping):
            return cls()
        prompt_details = usage.get("prompt_tokens_details")
        completion_details = usage.get("completion_tokens_details")
        prompt = _count(usage, "prompt_tokens")
        completion = _count(usage, "completion_tokens")
        return cls(
            prompt_tokens=prompt,
            completion_tokens=completion,
            total_tokens=_count(usage, "total_tokens") or prompt + completion,
            cached_tokens=_count(prompt_details, "cached_tokens"),
            reasoning_tokens=_count(completion_details, "reasoning_tokens"),
            audio_tokens_prompt=_count(prompt_details, "audio_tokens"),
            audio_tokens_completion=_count(completion_details, "audio_tokens"),
            accepted_prediction_tokens=_count(completion_details, "accepted_prediction_tokens"),
            rejected_prediction_tokens=_count(completion_details, "rejected_prediction_tokens"),
        )

    def columns(self) -> dict[str, int]:
        """The ``ai_processing_requests`` token columns."""
        return {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": self.total_tokens,
            "cached_tokens": self.cached_tokens,
            "reasoning_tokens": self.reasoning_tokens,
            "audio_tokens_prompt": self.audio_tokens_prompt,
            "audio_tokens_completion": self.audio_tokens_completion,
            "accepted_prediction_tokens": self.accepted_prediction_tokens,
            "rejected_prediction_tokens": self.rejected_prediction_tokens,
        }


@dataclass(frozen=True)
class Price:
    """USD per token."""

    prompt_usd_per_token: float
    completion_usd_per_token: float


FALLBACK_PRICE = Price(FALLBACK_PROMPT_USD_PER_TOKEN, FALLBACK_COMPLETION_USD_PER_TOKEN)


def pick_price(model: str, prices: Mapping[str, Price]) -> Price | None:
    """The exact model's price, else the longest priced prefix that ends at a name boundary
    ("gpt-4o-2024-08-06" -> "gpt-4o", never "gpt-4" for "gpt-4o"); None when nothing matches."""
    if model in prices:
        return prices[model]
    best: str | None = None
    for name in prices:
        boundary = model.startswith(name) and model[len(name) : len(name) + 1] in ("-", ":", "@", "/", ".")
        if boundary and (best is None or len(name) > len(best)):
            best = name
    return prices[best] if best is not None else None


async def price_for(conn: AsyncConnection, model: str, at: datetime) -> Price:
    """The price in effect at ``at`` for ``model`` (see :func:`pick_price`); the fallback when none is."""
    rows = await conn.execute(
        select(
            ai_model_pricing.c.model,
            ai_model_pricing.c.prompt_usd_per_million,
            ai_model_pricing.c.completion_usd_per_million,
        )
        .where(
            ai_model_pricing.c.effective_from <= at,
            or_(ai_model_pricing.c.effective_until.is_(None), ai_model_pricing.c.effective_until > at),
        )
        .order_by(ai_model_pricing.c.effective_from)  # a later row of the same model overrides an earlier one
    )
    prices = {
        str(name): Price(float(prompt) / 1_000_000, float(completion) / 1_000_000) for name, prompt, completion in rows
    }
    price = pick_price(model, prices)
    if price is not None:
        return price
    if model not in _warned:
        _warned.add(model)
        logger.warning(
            "no price for model %r in ai_model_pricing at %s: using the fallback %s / %s USD per token",
            model,
            at.isoformat(),
            FALLBACK_PROMPT_USD_PER_TOKEN,
            FALLBACK_COMPLETION_USD_PER_TOKEN,
        )
    return FALLBACK_PRICE


def cost_of(usage: Usage, price: Price, *, usd_to_eur: float, discount: float = 0.0) -> tuple[float, float]:
    """(USD, EUR) of a call: prompt and completion tokens at their prices, less ``discount`` (the Batch API
    passes 0.5). Cached-token discounts are not modelled: the pricing table has no cached price."""
    if not 0.0 <= discount <= 1.0:
        raise ValueError(f"discount must be between 0 and 1, got {discount!r}")
    usd = (
        usage.prompt_tokens * price.prompt_usd_per_token + usage.completion_tokens * price.completion_usd_per_token
    ) * (1.0 - discount)
    return usd, usd * usd_to_eur
