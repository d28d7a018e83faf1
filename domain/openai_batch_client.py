"""The OpenAI Batch API as the batch flow needs it: upload a JSONL file, create, retrieve, find and cancel
batches, download result files.

Built on the ``openai`` SDK (``AsyncOpenAI`` with ``base_url``) rather than raw httpx because the SDK already
does what the original hand-built around fetch: multipart upload, list pagination, and retries of transient
failures (connection errors, timeouts, 408/409/429/5xx) with exponential backoff that honours
``Retry-After``; it is also what direct mode uses, so both paths share one key, base URL and timeout
(:class:`~domain.analysis.settings.OpenAISettings`). What still fails after the SDK's retries comes out as
:class:`BatchAPIError` with ``transient`` telling the caller whether to try again on a later poll (the
original failed a batch for good after a 7 s outage). The API key never appears in an error message.
"""

from __future__ import annotations

import io

import openai
from openai import AsyncOpenAI

from domain.batch_api import MAX_ERROR_CHARS, BatchAPIError, RemoteBatch

_TRANSIENT_STATUS = frozenset({408, 409, 429})
_LIST_PAGE = 100


class BatchClient:
    """One SDK client (connection pool) for a whole run; close it with :meth:`close` or ``async with``."""

    def __init__(
        self,
        *,
        api_key: str,
        base_url: str | None = None,
        timeout: float = 60.0,
        max_retries: int = 3,
        client: AsyncOpenAI | None = None,
    ) -> None:
        self._key = api_key
        self._client = client or AsyncOpenAI(
            api_key=api_key, base_url=base_url, timeout=timeout, max_retries=max_retries
        )

    async def __aenter__(self) -> BatchClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        await self._client.close()

    async def upload(self, filename: str, content: bytes) -> str:
        """Upload a JSONL input file (purpose ``batch``); returns its file id."""
        try:
            uploaded = await self._client.files.create(file=(filename, io.BytesIO(content)), purpose="batch")
        except openai.OpenAIError as exc:
            raise self._error("upload of the batch input file", exc) from None
        return str(uploaded.id)

    async def create(self, input_file_id: str, *, local_batch_id: str) -> RemoteBatch:
        """Create a chat-completions batch (24 h window) tagged ``metadata.local_batch_id`` for recovery."""
        try:
            batch = await self._client.batches.create(
                input_file_id=input_file_id,
                endpoint="/v1/chat/completions",
                completion_window="24h",
                metadata={"local_batch_id": local_batch_id},
            )
        except openai.OpenAIError as exc:
            raise self._error("batch creation", exc) from None
        return RemoteBatch.from_sdk(batch)

    async def retrieve(self, batch_id: str) -> RemoteBatch:
        try:
            return RemoteBatch.from_sdk(await self._client.batches.retrieve(batch_id))
        except openai.OpenAIError as exc:
            raise self._error(f"status of batch {batch_id}", exc) from None

    async def cancel(self, batch_id: str) -> RemoteBatch:
        try:
            return RemoteBatch.from_sdk(await self._client.batches.cancel(batch_id))
        except openai.OpenAIError as exc:
            raise self._error(f"cancel of batch {batch_id}", exc) from None

    async def find(self, local_ids: set[str], *, created_since: int) -> dict[str, RemoteBatch]:
        """Remote batches whose ``metadata.local_batch_id`` is one of ``local_ids`` (newest first wins).

        Lists newest first and stops once every id is found or the batches listed are older than
        ``created_since`` (unix seconds): the search costs a page or two, not the account's whole history.
        """
        found: dict[str, RemoteBatch] = {}
        try:
            page = await self._client.batches.list(limit=_LIST_PAGE)
            while True:
                oldest: int | None = None
                for item in page.data:
                    remote = RemoteBatch.from_sdk(item)
                    oldest = remote.created_at if oldest is None else min(oldest, remote.created_at)
                    local = remote.local_id
                    if local in local_ids and local not in found:
                        found[local] = remote
                if len(found) == len(local_ids) or not page.has_next_page():
                    return found
                if oldest is not None and oldest < created_since:
                    return found
                page = await page.get_next_page()
        except openai.OpenAIError as exc:
            raise self._error("listing batches", exc) from None

    async def content(self, file_id: str) -> bytes:
        """A result file's bytes (output or error JSONL)."""
        try:
            response = await self._client.files.content(file_id)
        except openai.OpenAIError as exc:
            raise self._error(f"download of file {file_id}", exc) from None
        return response.content

    def _error(self, what: str, exc: openai.OpenAIError) -> BatchAPIError:
        status = exc.status_code if isinstance(exc, openai.APIStatusError) else None
        transient = isinstance(exc, openai.APIConnectionError) or (
            status is not None and (status in _TRANSIENT_STATUS or status >= 500)
        )
        detail = str(exc).replace(self._key, "***") if self._key else str(exc)
        kind = f"HTTP {status}" if status is not None else type(exc).__name__
        return BatchAPIError(f"{what} failed ({kind}): {detail}"[:MAX_ERROR_CHARS], transient=transient, status=status)
