"""The analysis validator: what a model may answer, what is normalised, and that every rejection names a field."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from domain.analysis.costs import Price, Usage, cost_of, pick_price
from domain.analysis.prompt import SYSTEM_PROMPT, Transcript, chat_body
from domain.analysis.schema import FIELDS, InvalidAnalysis, SessionAnalysis, parse_analysis
from domain.analysis.settings import OpenAISettings
from domain.model import Category, Sentiment

SID = "7d3c1b1e-0000-4000-8000-000000000001"


def answer(**overrides: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "language": "en",
        "sentiment": "POSITIVE",
        "escalated": False,
        "forwarded_hr": True,
        "category": "LEAVE_VACATION",
        "questions": ["How many vacation days do I have?"],
        "summary": "The employee asked about remaining vacation days.",
        "session_id": SID,
    }
    base.update(overrides)
    return {k: v for k, v in base.items() if v is not ...}


def test_valid_answer_parses_to_the_model() -> None:
    result = parse_analysis(json.dumps(answer()), session_id=SID)
    assert result == SessionAnalysis(
        language="en",
        sentiment=Sentiment.POSITIVE,
        escalated=False,
        forwarded_hr=True,
        category=Category.LEAVE_VACATION,
        questions=["How many vacation days do I have?"],
        summary="The employee asked about remaining vacation days.",
        session_id=SID,
    )


def test_fenced_json_block_is_accepted() -> None:
    content = "```json\n" + json.dumps(answer()) + "\n```"
    assert parse_analysis(content, session_id=SID).category is Category.LEAVE_VACATION


@pytest.mark.parametrize(
    ("given_language", "expected"),
    [("EN", "en"), ("en-US", "en"), ("de_DE", "de"), (" nl ", "nl"), ("French", "fr"), ("Dutch", "nl")],
)
def test_language_is_normalised(given_language: str, expected: str) -> None:
    assert parse_analysis(json.dumps(answer(language=given_language)), session_id=SID).language == expected


@pytest.mark.parametrize("bad", ["xx", "english-ish", "e", "123", "", None, 5, ["en"]])
def test_garbage_language_is_rejected_naming_the_field(bad: object) -> None:
    with pytest.raises(InvalidAnalysis) as info:
        parse_analysis(json.dumps(answer(language=bad)), session_id=SID)
    assert info.value.field == "language"
    assert str(info.value).startswith("language: ")


def test_questions_are_cleaned_deduplicated_and_capped() -> None:
    questions = ["  Where is my payslip? ", "", "where is my PAYSLIP?", "A?", "B?", "C?", "D?", "E?", "   "]
    result = parse_analysis(json.dumps(answer(questions=questions)), session_id=SID)
    assert result.questions == ["Where is my payslip?", "A?", "B?", "C?", "D?"]


def test_enums_accept_any_letter_case_but_not_unknown_values() -> None:
    result = parse_analysis(json.dumps(answer(sentiment="negative", category="sick leave recovery")), session_id=SID)
    assert result.sentiment is Sentiment.NEGATIVE and result.category is Category.SICK_LEAVE_RECOVERY
    with pytest.raises(InvalidAnalysis, match=r"^category: .*HOLIDAYS"):
        parse_analysis(json.dumps(answer(category="HOLIDAYS")), session_id=SID)


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"summary": "short"}, "summary"),
        ({"summary": "x" * 301}, "summary"),
        ({"escalated": "yes"}, "escalated"),
        ({"forwarded_hr": 1}, "forwarded_hr"),
        ({"questions": "What?"}, "questions"),
        ({"questions": ["ok?", 3]}, "questions"),
        ({"sentiment": ...}, "sentiment"),
        ({"session_id": "another-session"}, "session_id"),
        ({"session_id": 12}, "session_id"),
    ],
)
def test_rejections_name_the_field(overrides: dict[str, Any], field: str) -> None:
    with pytest.raises(InvalidAnalysis) as info:
        parse_analysis(json.dumps(answer(**overrides)), session_id=SID)
    assert info.value.field == field, str(info.value)


def test_missing_session_id_is_filled_in() -> None:
    assert parse_analysis(json.dumps(answer(session_id=...)), session_id=SID).session_id == SID


@pytest.mark.parametrize("content", ["", "not json", "[1, 2]", "null", '{"language": "en"', "```json\n```", "[" * 5000])
def test_non_objects_are_rejected_as_content(content: str) -> None:
    with pytest.raises(InvalidAnalysis) as info:
        parse_analysis(content, session_id=SID)
    assert info.value.field in FIELDS or info.value.field == "content"


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text(max_size=40),
    lambda children: st.lists(children, max_size=6) | st.dictionaries(st.text(max_size=12), children, max_size=8),
    max_leaves=30,
)
field_values = {
    "language": st.sampled_from(["en", "EN", "de-AT", "xx", "", "French"]) | json_values,
    "sentiment": st.sampled_from([s.value for s in Sentiment] + ["happy"]) | json_values,
    "escalated": st.booleans() | json_values,
    "forwarded_hr": st.booleans() | json_values,
    "category": st.sampled_from([c.value for c in Category] + ["OTHER"]) | json_values,
    "questions": st.lists(st.text(max_size=80), max_size=8) | json_values,
    "summary": st.text(min_size=0, max_size=320) | json_values,
    "session_id": st.just(SID) | json_values,
}
near_valid = st.fixed_dictionaries({}, optional=field_values)


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.text(max_size=200), json_values.map(json.dumps), near_valid.map(json.dumps)))
def test_any_text_gives_an_analysis_or_a_named_rejection(content: str) -> None:
    rejection: InvalidAnalysis | None = None
    try:
        result = parse_analysis(content, session_id=SID)
    except InvalidAnalysis as exc:
        rejection = exc
    if rejection is not None:
        assert rejection.field in (*FIELDS, "content")
        assert str(rejection).startswith(f"{rejection.field}: ") and rejection.reason
        return
    assert result.session_id == SID
    assert 10 <= len(result.summary) <= 300 and len(result.questions) <= 5
    assert len({q.casefold() for q in result.questions}) == len(result.questions)
    assert all(q and q == q.strip() for q in result.questions)
    assert len(result.language) == 2 and result.language.islower()


# ---------------------------------------------------------------------------------------------- prompt and costs


def test_chat_body_asks_for_json_with_the_company_model() -> None:
    transcript = Transcript(SID, "c1", "gpt-4o-mini", ["[2025-04-30T11:38:14Z] user: hello"])
    body = chat_body(transcript)
    assert body["model"] == "gpt-4o-mini" and body["temperature"] == 0.3
    assert body["response_format"] == {"type": "json_object"}
    assert [m["role"] for m in body["messages"]] == ["system", "user"]
    assert body["messages"][0]["content"] == SYSTEM_PROMPT
    assert SID in body["messages"][1]["content"] and "2025-04-30T11:38:14Z" in body["messages"][1]["content"]


def test_usage_from_openai_reads_details_and_tolerates_garbage() -> None:
    usage = Usage.from_openai(
        {
            "prompt_tokens": 100,
            "completion_tokens": 20,
            "total_tokens": 120,
            "prompt_tokens_details": {"cached_tokens": 64, "audio_tokens": None},
            "completion_tokens_details": {"reasoning_tokens": 5, "accepted_prediction_tokens": -3},
        }
    )
    assert (usage.prompt_tokens, usage.completion_tokens, usage.total_tokens) == (100, 20, 120)
    assert (usage.cached_tokens, usage.reasoning_tokens, usage.accepted_prediction_tokens) == (64, 5, 0)
    assert Usage.from_openai(None) == Usage() == Usage.from_openai({"prompt_tokens": "many"})


def test_prices_match_exact_names_then_the_longest_prefix_at_a_boundary() -> None:
    prices = {"gpt-4o": Price(1, 2), "gpt-4o-mini": Price(3, 4), "gpt-4": Price(5, 6)}
    assert pick_price("gpt-4o-2024-08-06", prices) == Price(1, 2)
    assert pick_price("gpt-4o-mini-2024-07-18", prices) == Price(3, 4)
    assert pick_price("gpt-4omni", prices) is None
    assert pick_price("gpt-4", prices) == Price(5, 6)


def test_cost_applies_prices_rate_and_discount() -> None:
    usage = Usage(prompt_tokens=1_000_000, completion_tokens=100_000)
    price = Price(2.5 / 1e6, 10 / 1e6)
    assert cost_of(usage, price, usd_to_eur=0.85) == pytest.approx((3.5, 2.975))
    assert cost_of(usage, price, usd_to_eur=0.85, discount=0.5) == pytest.approx((1.75, 1.4875))


def test_openai_settings_keep_the_key_secret(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-very-secret")
    monkeypatch.setenv("OPENAI_TIMEOUT", "1500")
    monkeypatch.delenv("OPENAI_MODEL", raising=False)
    loaded = OpenAISettings()
    assert loaded.require_key() == "sk-test-very-secret"
    assert "sk-test-very-secret" not in repr(loaded) and "sk-test-very-secret" not in str(loaded.model_dump())
    assert loaded.openai_timeout == 1.5 and loaded.openai_model == "gpt-4o" and loaded.ai_usd_to_eur_rate == 0.85
    monkeypatch.setenv("OPENAI_API_KEY", " ")
    with pytest.raises(ValueError, match="OPENAI_API_KEY"):
        OpenAISettings().require_key()
