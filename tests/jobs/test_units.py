"""Pure parts of http-jobs: secret hashing, the callback target policy, validation errors, delivery retries."""

from __future__ import annotations

import ipaddress

import httpx
import pytest

from jobs.credentials import hash_secret, new_secret, verify_secret
from jobs.delivery import deliver
from jobs.model import FieldError, parse_jobs
from jobs.targets import TargetPolicy, TargetRefused
from services.http_jobs import check_schedule

pytestmark = pytest.mark.anyio


def test_secret_is_stored_only_as_a_salted_hash() -> None:
    secret = new_secret()
    first, second = hash_secret(secret, iterations=1000), hash_secret(secret, iterations=1000)
    assert secret not in first and first != second  # salted
    assert verify_secret(secret, first) and verify_secret(secret, second)
    assert not verify_secret(secret + "x", first)
    assert not verify_secret(secret, "garbage") and not verify_secret(secret, "pbkdf2_sha256$x$zz$zz")


@pytest.mark.parametrize(
    "url",
    ["http://169.254.169.254/latest/meta-data", "http://127.0.0.1:8080/cb", "http://[::1]/cb", "http://0.0.0.0/"],
)
def test_default_policy_refuses_metadata_and_loopback(url: str) -> None:
    with pytest.raises(TargetRefused, match="refused network"):
        TargetPolicy().check_url(url)


def test_allowlist_opens_loopback_and_is_exclusive() -> None:
    policy = TargetPolicy.from_entries(["127.0.0.1/32", "hooks.example.com"])
    assert policy.check_url("http://127.0.0.1:9/cb") == "127.0.0.1"
    assert policy.check_url("https://hooks.example.com/x") == "hooks.example.com"
    with pytest.raises(TargetRefused, match="not in the allowlist"):
        policy.check_url("http://10.0.0.1/")
    with pytest.raises(TargetRefused, match="not in the allowlist"):
        policy.check_address("evil.example.com", ipaddress.ip_address("169.254.169.254"))


@pytest.mark.parametrize(
    ("url", "message"),
    [("ftp://x/y", "http or https"), ("http:///nohost", "no host"), ("http://u:p@h/", "credentials")],
)
def test_bad_callback_urls_are_named(url: str, message: str) -> None:
    with pytest.raises(TargetRefused, match=message):
        TargetPolicy().check_url(url)


async def test_resolved_addresses_are_checked() -> None:
    async def to_metadata(host: str) -> list[str]:
        return ["169.254.169.254"]

    with pytest.raises(TargetRefused, match=r"169\.254\.169\.254"):
        await TargetPolicy().check_resolved("http://innocent.example/cb", to_metadata)


def test_validation_names_the_item_and_field() -> None:
    good = {"spec": "@every 1m", "callback_url": "http://h/cb"}
    with pytest.raises(FieldError) as info:
        parse_jobs(
            [good, {**good, "spec": "@every soon"}, {**good, "timezone": "Mars/Base"}, {"spec": 1}], check_schedule
        )
    fields = [e["field"] for e in info.value.errors]
    assert fields[:2] == ["[1].spec", "[2].timezone"]
    assert "[3].spec" in fields and "[3].callback_url" in fields
    jobs, many = parse_jobs(good, check_schedule)
    assert not many and jobs[0].timezone == "UTC"
    with pytest.raises(FieldError, match="at most 1000"):
        parse_jobs([good] * 1001, check_schedule)


async def test_delivery_retries_transient_failures_with_backoff() -> None:
    answers = [503, 500, 200]
    delays: list[float] = []

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(answers.pop(0))

    async def sleep(seconds: float) -> None:
        delays.append(seconds)

    async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as client:
        result = await deliver(
            client, "http://h/cb", b"[]", request_timeout=1, retry_max=3, retry_delay=0.5, sleep=sleep
        )
    assert result.ok and result.attempts == 3 and result.status_code == 200
    assert delays == [0.5, 1.0]


async def test_delivery_gives_up_at_once_on_a_client_error_and_after_retry_max_on_errors() -> None:
    async with httpx.AsyncClient(transport=httpx.MockTransport(lambda r: httpx.Response(404))) as client:
        result = await deliver(client, "http://h/cb", b"[]", request_timeout=1, retry_max=3, retry_delay=0)
    assert not result.ok and result.attempts == 1 and result.error == "HTTP 404"

    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused")

    async def no_sleep(seconds: float) -> None:
        pass

    async with httpx.AsyncClient(transport=httpx.MockTransport(refuse)) as client:
        result = await deliver(
            client, "http://h/cb", b"[]", request_timeout=1, retry_max=2, retry_delay=0, sleep=no_sleep
        )
    assert not result.ok and result.attempts == 3 and result.status_code is None
    assert result.error is not None and "ConnectError" in result.error
