"""Read a feed or transcript from an ``http(s)://`` or ``file://`` URL, with Basic auth, a timeout and a size cap.

Errors say whether trying again may help (``FetchError.transient``): connection problems, timeouts, 408,
429 and 5xx are transient; 4xx, a missing file and an oversized body are permanent. An empty body is returned
as it is: an empty feed is valid, an empty transcript is the caller's call.
Credentials never appear in an error message (URLs are shown without their user info).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urljoin, urlsplit, urlunsplit

import anyio
import httpx

USER_AGENT = "livedash-schedulers/0.1 (+pipeline fetcher)"
DEFAULT_MAX_BYTES = 50 * 1024 * 1024
_TRANSIENT_STATUS = {408, 425, 429, 500, 502, 503, 504}


class FetchError(Exception):
    def __init__(self, message: str, *, transient: bool) -> None:
        super().__init__(message)
        self.transient = transient


@dataclass(frozen=True)
class BasicAuth:
    username: str
    password: str

    def __repr__(self) -> str:  # never show the password, even in a debugger or a log of locals
        return f"BasicAuth(username={self.username!r}, password='***')"


def display_url(url: str) -> str:
    """The URL without user info or query string, safe for logs and error messages."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    return urlunsplit((parts.scheme, host, parts.path, "", ""))


def resolve(base: str, reference: str) -> str:
    """A transcript URL relative to its feed's URL (``transcripts/a.txt`` next to ``file:///data/feed.csv``)."""
    return urljoin(base, reference)


async def fetch_bytes(
    url: str,
    *,
    client: httpx.AsyncClient | None = None,
    auth: BasicAuth | None = None,
    time_limit: float = 30.0,
    max_bytes: int = DEFAULT_MAX_BYTES,
) -> bytes:
    """The body at ``url``; raises FetchError. ``client`` lets callers share connections across many fetches."""
    scheme = urlsplit(url).scheme.lower()
    if scheme == "file":
        return await _read_file(url, max_bytes)
    if scheme not in ("http", "https"):
        raise FetchError(
            f"unsupported URL scheme {scheme!r} in {display_url(url)} (use http, https or file)", transient=False
        )
    if client is None:
        async with httpx.AsyncClient() as own:
            return await _get(own, url, auth, time_limit, max_bytes)
    return await _get(client, url, auth, time_limit, max_bytes)


async def fetch_text(
    url: str,
    *,
    client: httpx.AsyncClient | None = None,
    auth: BasicAuth | None = None,
    time_limit: float = 30.0,
    max_bytes: int = DEFAULT_MAX_BYTES,
) -> str:
    """Like fetch_bytes, decoded as UTF-8 (a BOM is dropped; undecodable bytes become U+FFFD)."""
    body = await fetch_bytes(url, client=client, auth=auth, time_limit=time_limit, max_bytes=max_bytes)
    return body.decode("utf-8-sig", errors="replace")


async def _get(client: httpx.AsyncClient, url: str, auth: BasicAuth | None, time_limit: float, max_bytes: int) -> bytes:
    shown = display_url(url)
    basic = httpx.BasicAuth(auth.username, auth.password) if auth else None
    try:
        with anyio.fail_after(time_limit):
            async with client.stream(
                "GET", url, auth=basic, headers={"User-Agent": USER_AGENT}, timeout=time_limit, follow_redirects=True
            ) as response:
                if response.status_code >= 400:
                    raise FetchError(
                        f"GET {shown} answered {response.status_code} {response.reason_phrase}",
                        transient=response.status_code in _TRANSIENT_STATUS,
                    )
                declared = response.headers.get("content-length")
                if declared and declared.isdigit() and int(declared) > max_bytes:
                    raise FetchError(
                        f"GET {shown}: body of {declared} bytes exceeds the {max_bytes}-byte limit", transient=False
                    )
                chunks: list[bytes] = []
                size = 0
                async for chunk in response.aiter_bytes():
                    size += len(chunk)
                    if size > max_bytes:
                        raise FetchError(f"GET {shown}: body exceeds the {max_bytes}-byte limit", transient=False)
                    chunks.append(chunk)
    except TimeoutError:
        raise FetchError(f"GET {shown} timed out after {time_limit:g} s", transient=True) from None
    except httpx.TimeoutException:
        raise FetchError(f"GET {shown} timed out after {time_limit:g} s", transient=True) from None
    except httpx.HTTPError as exc:
        raise FetchError(f"GET {shown} failed: {type(exc).__name__}: {_no_url(exc, url)}", transient=True) from None
    return b"".join(chunks)


async def _read_file(url: str, max_bytes: int) -> bytes:
    path = Path(unquote(urlsplit(url).path))
    try:
        size = (await anyio.Path(path).stat()).st_size
        if size > max_bytes:
            raise FetchError(f"{url}: file of {size} bytes exceeds the {max_bytes}-byte limit", transient=False)
        return await anyio.Path(path).read_bytes()
    except FileNotFoundError:
        raise FetchError(f"{url}: no such file", transient=False) from None
    except IsADirectoryError:
        raise FetchError(f"{url}: is a directory", transient=False) from None
    except PermissionError:
        raise FetchError(f"{url}: permission denied", transient=False) from None


def _no_url(exc: Exception, url: str) -> str:
    """httpx sometimes repeats the full URL (with credentials) in its message; show the safe form instead."""
    return str(exc).replace(url, display_url(url)) or "no detail"
