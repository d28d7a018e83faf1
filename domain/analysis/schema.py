"""The analysis result every provider must produce, validated before anything touches the database.

The shape is the original system's JSON (reference section 2.3). Unlike the original, validation is
lenient where a model's answer is unambiguous ("EN", "en-US", "english" are all English; a sentiment in
lower case is still a sentiment; six questions are cut to five) and strict where it is not (an unknown
category, a summary of three characters, a boolean written as "maybe"). Every rejection is an
:class:`InvalidAnalysis` whose message starts with the field it is about, so a FAILED stage says why.
"""

from __future__ import annotations

import json
import re
from typing import Any

from pydantic import BaseModel, ConfigDict, StrictBool, ValidationError, field_validator

from domain.model import Category, Sentiment

MAX_QUESTIONS = 5
MAX_QUESTION_CHARS = 512  # questions.content
SUMMARY_MIN, SUMMARY_MAX = 10, 300
FIELDS = ("language", "sentiment", "escalated", "forwarded_hr", "category", "questions", "summary", "session_id")


def _words(text: str) -> frozenset[str]:
    return frozenset(text.split())


# Every ISO 639-1 code: two letters alone would accept "xx" or "zz", which no language has.
ISO_639_1 = _words(
    "aa ab ae af ak am an ar as av ay az ba be bg bh bi bm bn bo br bs ca ce ch co cr cs cu cv cy da de dv dz ee "
    "el en eo es et eu fa ff fi fj fo fr fy ga gd gl gn gu gv ha he hi ho hr ht hu hy hz ia id ie ig ii ik io is "
    "it iu ja jv ka kg ki kj kk kl km kn ko kr ks ku kv kw ky la lb lg li ln lo lt lu lv mg mh mi mk ml mn mr ms "
    "mt my na nb nd ne ng nl nn no nr nv ny oc oj om or os pa pi pl ps pt qu rm rn ro ru rw sa sc sd se sg si sk "
    "sl sm sn so sq sr ss st su sv sw ta te tg th ti tk tl tn to tr ts tt tw ty ug uk ur uz ve vi vo wa wo xh yi "
    "yo za zh zu"
)
# Language names a model sometimes writes instead of the code (and the CSV feeds use): name -> ISO 639-1.
_LANGUAGE_NAMES = {
    "english": "en", "german": "de", "deutsch": "de", "dutch": "nl", "nederlands": "nl", "french": "fr",
    "francais": "fr", "français": "fr", "spanish": "es", "espanol": "es", "español": "es", "italian": "it",
    "italiano": "it", "portuguese": "pt", "polish": "pl", "turkish": "tr", "arabic": "ar", "russian": "ru",
    "bosnian": "bs", "croatian": "hr", "serbian": "sr", "romanian": "ro", "danish": "da", "swedish": "sv",
    "norwegian": "no", "finnish": "fi", "czech": "cs", "greek": "el", "hungarian": "hu", "ukrainian": "uk",
    "chinese": "zh", "japanese": "ja", "korean": "ko", "hindi": "hi",
}  # fmt: skip
_FENCE = re.compile(r"^\s*```[A-Za-z0-9_-]*[ \t]*\r?\n(?P<body>.*?)\r?\n?```\s*$", re.DOTALL)


class InvalidAnalysis(ValueError):
    """The provider's output is not a usable analysis; the message names the field and says what is wrong."""

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(f"{field}: {reason}")
        self.field = field
        self.reason = reason


def normalize_language(value: object) -> str:
    """An ISO 639-1 code from "en", "EN", "en-US", "en_GB" or "English"; ValueError for anything else."""
    if not isinstance(value, str):
        raise ValueError(f"expected an ISO 639-1 code such as 'en', got {_short(value)}")
    text = value.strip().lower()
    primary = re.split(r"[-_]", text, maxsplit=1)[0]
    if primary in ISO_639_1:
        return primary
    if text in _LANGUAGE_NAMES:
        return _LANGUAGE_NAMES[text]
    raise ValueError(f"expected an ISO 639-1 code such as 'en', got {_short(value)}")


def _short(value: object, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _enum_value(value: object, names: frozenset[str], what: str) -> str:
    if isinstance(value, str):
        text = value.strip().upper().replace(" ", "_").replace("-", "_")
        if text in names:
            return text
    raise ValueError(f"expected one of {', '.join(sorted(names))} ({what}), got {_short(value)}")


_SENTIMENTS = frozenset(s.value for s in Sentiment)
_CATEGORIES = frozenset(c.value for c in Category)


class SessionAnalysis(BaseModel):
    """One session's analysis: what the model (or the local analyzer) concluded, validated."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    language: str
    sentiment: Sentiment
    escalated: StrictBool
    forwarded_hr: StrictBool
    category: Category
    questions: list[str]
    summary: str
    session_id: str

    @field_validator("language", mode="before")
    @classmethod
    def _language(cls, value: object) -> str:
        return normalize_language(value)

    @field_validator("sentiment", mode="before")
    @classmethod
    def _sentiment(cls, value: object) -> str:
        return _enum_value(value, _SENTIMENTS, "sentiment")

    @field_validator("category", mode="before")
    @classmethod
    def _category(cls, value: object) -> str:
        return _enum_value(value, _CATEGORIES, "category")

    @field_validator("questions", mode="before")
    @classmethod
    def _questions(cls, value: object) -> list[str]:
        """Stripped, empties and case-insensitive duplicates dropped, at most five (extra ones are cut)."""
        if value is None:
            return []
        if not isinstance(value, list | tuple):
            raise ValueError(f"expected a list of strings, got {_short(value)}")
        kept: list[str] = []
        seen: set[str] = set()
        for index, item in enumerate(value):
            if not isinstance(item, str):
                raise ValueError(f"item {index} is not a string: {_short(item)}")
            text = " ".join(item.split())[:MAX_QUESTION_CHARS].strip()
            key = text.casefold()
            if text and key not in seen:
                seen.add(key)
                kept.append(text)
        return kept[:MAX_QUESTIONS]

    @field_validator("summary", mode="before")
    @classmethod
    def _summary(cls, value: object) -> str:
        if not isinstance(value, str):
            raise ValueError(f"expected a string, got {_short(value)}")
        text = value.strip()
        if not SUMMARY_MIN <= len(text) <= SUMMARY_MAX:
            raise ValueError(f"must be {SUMMARY_MIN} to {SUMMARY_MAX} characters, got {len(text)}")
        return text

    @field_validator("session_id", mode="before")
    @classmethod
    def _session_id(cls, value: object) -> str:
        if not isinstance(value, str) or not value.strip():
            raise ValueError(f"expected a non-empty string, got {_short(value)}")
        return value.strip()


def validate_analysis(data: object, *, session_id: str) -> SessionAnalysis:
    """A decoded JSON object -> SessionAnalysis; InvalidAnalysis (naming the field) otherwise.

    A missing ``session_id`` is filled in with the session being analysed; a different one is rejected, so an
    answer can never be applied to a session it was not written for.
    """
    if not isinstance(data, dict):
        raise InvalidAnalysis("content", f"expected a JSON object, got {type(data).__name__}")
    missing = [name for name in FIELDS if name not in data and name != "session_id"]
    if missing:
        raise InvalidAnalysis(
            missing[0], "missing" + (f" (also missing: {', '.join(missing[1:])})" if missing[1:] else "")
        )
    claimed = data.get("session_id", session_id)
    if isinstance(claimed, str) and claimed.strip() and claimed.strip() != session_id:
        raise InvalidAnalysis("session_id", f"the answer is for session {_short(claimed)}, not {session_id!r}")
    try:
        return SessionAnalysis.model_validate({**data, "session_id": claimed})
    except ValidationError as exc:
        error = exc.errors(include_url=False)[0]
        field = str(error["loc"][0]) if error["loc"] else "content"
        message = str(error["msg"]).removeprefix("Value error, ")
        raise InvalidAnalysis(field, message) from None


def parse_analysis(content: str, *, session_id: str) -> SessionAnalysis:
    """A model's answer (JSON text, optionally in a ```json fence) -> SessionAnalysis; never raises anything
    but :class:`InvalidAnalysis`."""
    try:
        if not isinstance(content, str):
            raise InvalidAnalysis("content", f"expected text, got {type(content).__name__}")
        text = content.strip()
        fenced = _FENCE.match(text)
        if fenced:
            text = fenced.group("body").strip()
        if not text:
            raise InvalidAnalysis("content", "empty answer")
        try:
            data: Any = json.loads(text)
        except ValueError as exc:
            raise InvalidAnalysis("content", f"not valid JSON: {exc}") from None
        return validate_analysis(data, session_id=session_id)
    except InvalidAnalysis:
        raise
    except RecursionError:
        raise InvalidAnalysis("content", "JSON nested too deeply") from None
    except Exception as exc:  # the contract: callers only ever handle InvalidAnalysis
        raise InvalidAnalysis("content", f"unusable answer: {type(exc).__name__}: {exc}") from None


def to_json(analysis: SessionAnalysis) -> dict[str, Any]:
    """The analysis in the original JSON shape (enums as their values)."""
    return analysis.model_dump(mode="json")
