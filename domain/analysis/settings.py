"""OpenAI settings, from the environment: OPENAI_API_KEY, OPENAI_BASE_URL, OPENAI_MODEL, OPENAI_TIMEOUT,
OPENAI_MAX_RETRIES and AI_USD_TO_EUR_RATE.

The key is a SecretStr: it prints as ``**********`` in reprs, logs and validation errors. OPENAI_TIMEOUT
follows the project's rule for ``*_TIMEOUT``: a bare number is milliseconds (``60000``), a unit may be given
(``60s``, ``1500ms``, ``2m``).
"""

from __future__ import annotations

import re
from typing import Any

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

_DURATION = re.compile(r"^\s*(?P<n>\d+(?:\.\d+)?)\s*(?P<unit>ms|s|m)?\s*$")
_UNIT_SECONDS = {None: 0.001, "ms": 0.001, "s": 1.0, "m": 60.0}


class OpenAISettings(BaseSettings):
    model_config = SettingsConfigDict(extra="ignore", case_sensitive=False)

    openai_api_key: SecretStr | None = None
    openai_base_url: str | None = None  # any OpenAI-compatible server; None: the SDK's default (api.openai.com)
    openai_model: str = "gpt-4o"  # when the company has no default model
    openai_timeout: float = Field(default=60.0, gt=0)  # seconds per request (env: bare number = ms)
    openai_max_retries: int = Field(default=3, ge=0, le=10)  # SDK retries of transient errors (429, 5xx, network)
    ai_usd_to_eur_rate: float = Field(default=0.85, gt=0)

    @field_validator("openai_api_key", "openai_base_url", mode="before")
    @classmethod
    def _blank_is_unset(cls, value: Any) -> Any:
        return None if isinstance(value, str) and not value.strip() else value

    @field_validator("openai_model")
    @classmethod
    def _model(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("must not be empty")
        return value.strip()

    @field_validator("openai_timeout", mode="before")
    @classmethod
    def _timeout(cls, value: Any) -> Any:
        if isinstance(value, str):
            match = _DURATION.match(value)
            if not match:
                raise ValueError(f"expected a duration such as 60000 (ms), 60s or 2m, got {value!r}")
            return float(match["n"]) * _UNIT_SECONDS[match["unit"]]
        return value

    @property
    def api_key(self) -> str | None:
        return self.openai_api_key.get_secret_value() if self.openai_api_key else None

    def require_key(self) -> str:
        """The key; ValueError naming OPENAI_API_KEY when it is not set (the caller reports a config error)."""
        key = self.api_key
        if not key:
            raise ValueError("OPENAI_API_KEY is not set; the openai provider needs it (or use the local provider)")
        return key
