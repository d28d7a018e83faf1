"""Query-string parsing shared by every HTTP route: a bad value is a 400 naming the parameter, never a 500."""

from __future__ import annotations

from starlette.exceptions import HTTPException
from starlette.requests import Request


def query_int(request: Request, name: str, default: int, low: int, high: int) -> int:
    raw = request.query_params.get(name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise HTTPException(400, f"{name} must be an integer, got {raw!r}") from None
    if not low <= value <= high:
        raise HTTPException(400, f"{name} must be between {low} and {high}, got {value}")
    return value
