"""The offline analyzer on HR chats in English, German, Dutch and French: language, category, flags, questions."""

from __future__ import annotations

import csv
import time
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path

import pytest

from domain.analysis import local
from domain.analysis.prompt import Transcript, TranscriptMessage, format_line
from domain.analysis.schema import normalize_language
from domain.model import Category, Sentiment
from domain.transcripts import parse_transcript

T0 = datetime(2025, 4, 30, 11, 38, 14, tzinfo=UTC)


def transcript(*turns: tuple[str, str], session_id: str = "s-1") -> Transcript:
    messages = [TranscriptMessage(role, text, T0) for role, text in turns]
    return Transcript(session_id, "c-1", "local", [format_line(m) for m in messages], messages)


ENGLISH_VACATION = transcript(
    ("user", "Hi, how many vacation days do I have left this year?"),
    ("assistant", "You have 12 days of annual leave left."),
    ("user", "Great, thanks! Can I carry them over to next year?"),
    ("assistant", "Up to 5 days can be carried over."),
)
GERMAN_SICK = transcript(
    ("user", "Hallo, ich bin seit gestern krank. Muss ich eine Krankmeldung vom Arzt schicken?"),
    ("assistant", "Ja, ab dem dritten Tag brauchen Sie ein Attest."),
    ("user", "Das ist unverschämt, ich möchte eine Beschwerde einreichen und mit meinem Vorgesetzten sprechen."),
    ("assistant", "Bitte wenden Sie sich an die Personalabteilung: personal@example.com."),
)
DUTCH_SALARY = transcript(
    ("user", "Hoi, wanneer wordt mijn salaris uitbetaald?"),
    ("assistant", "Het loon wordt op de 25e uitbetaald."),
    ("user", "En waar kan ik mijn loonstrook vinden?"),
    ("assistant", "Je loonstrook staat in de app."),
)
FRENCH_LOGIN = transcript(
    ("user", "Bonjour, je ne peux pas me connecter. J'ai oublié mon mot de passe, que dois-je faire ?"),
    ("assistant", "Vous pouvez réinitialiser le mot de passe sur le portail."),
    ("user", "Merci, ça marche."),
)


@pytest.mark.parametrize(
    ("chat", "language", "category"),
    [
        (ENGLISH_VACATION, "en", Category.LEAVE_VACATION),
        (GERMAN_SICK, "de", Category.SICK_LEAVE_RECOVERY),
        (DUTCH_SALARY, "nl", Category.SALARY_COMPENSATION),
        (FRENCH_LOGIN, "fr", Category.ACCESS_LOGIN),
    ],
)
def test_language_and_category_in_four_languages(chat: Transcript, language: str, category: Category) -> None:
    result = local.analyze(chat)
    assert (result.language, result.category) == (language, category)
    assert result.session_id == chat.session_id
    assert 10 <= len(result.summary) <= 300


def test_questions_are_the_users_sentences_ending_in_a_question_mark() -> None:
    assert local.analyze(ENGLISH_VACATION).questions == [
        "Hi, how many vacation days do I have left this year?",
        "Can I carry them over to next year?",
    ]
    assert local.analyze(DUTCH_SALARY).questions == [
        "Hoi, wanneer wordt mijn salaris uitbetaald?",
        "En waar kan ik mijn loonstrook vinden?",
    ]
    assert local.analyze(FRENCH_LOGIN).questions == [
        "J'ai oublié mon mot de passe, que dois-je faire ?",
    ]


def test_escalation_hr_contact_and_sentiment() -> None:
    german = local.analyze(GERMAN_SICK)
    assert german.escalated and german.forwarded_hr and german.sentiment is Sentiment.NEGATIVE
    english = local.analyze(ENGLISH_VACATION)
    assert not english.escalated and not english.forwarded_hr and english.sentiment is Sentiment.POSITIVE
    dutch = local.analyze(DUTCH_SALARY)
    assert dutch.sentiment is Sentiment.NEUTRAL and not dutch.escalated


def test_escalation_in_english_and_hr_only_with_a_way_to_reach_it() -> None:
    chat = transcript(
        ("user", "This is ridiculous, I want to speak to a manager about my schedule."),
        ("assistant", "I understand. HR can help you: call them on +31 20 123 4567."),
    )
    result = local.analyze(chat)
    assert result.escalated and result.forwarded_hr and result.sentiment is Sentiment.NEGATIVE
    assert result.category is Category.SCHEDULE_HOURS
    mention_only = transcript(("user", "Does HR work on Fridays?"), ("assistant", "Yes."))
    assert not local.analyze(mention_only).forwarded_hr


def test_nothing_recognisable_is_unrecognized_other_and_short_chats_still_validate() -> None:
    result = local.analyze(transcript(("user", "ok")))
    assert result.category is Category.UNRECOGNIZED_OTHER
    assert result.language == "en" and 10 <= len(result.summary) <= 300
    long = local.analyze(transcript(("user", "vacation " * 200 + "?")))
    assert len(long.summary) <= 300 and len(long.questions) == 1


def test_at_most_five_questions() -> None:
    chat = transcript(("user", " ".join(f"Question number {n}?" for n in range(9))))
    assert local.analyze(chat).questions == [f"Question number {n}?" for n in range(5)]


def test_deterministic_and_fast() -> None:
    chats = [ENGLISH_VACATION, GERMAN_SICK, DUTCH_SALARY, FRENCH_LOGIN] * 500
    started = time.perf_counter()
    first = [local.analyze(c) for c in chats]
    elapsed = time.perf_counter() - started
    assert first == [local.analyze(c) for c in chats]
    assert elapsed < 2.0, f"{len(chats)} analyses took {elapsed:.2f}s"  # ~0.1 ms each here; a wide margin


def test_hr_contact_needs_hr_and_a_way_to_reach_it_in_one_message() -> None:
    assert local.mentions_hr_contact(["Please e-mail HR at hr@example.com"])
    assert local.mentions_hr_contact(["Bel personeelszaken op 020 123 4567"])
    assert not local.mentions_hr_contact(["Hr. Müller hat mich kontaktiert"])  # Herr Müller, not HR
    assert not local.mentions_hr_contact(["HR says hello", "call me later"])
    assert not local.mentions_hr_contact(["HR recalled the locally stored file"])  # "call" only as a word start


# The bundled demo feeds label each session (CSV columns 5, 8, 9, 14); the analyzer should mostly agree.
DEMO = Path(__file__).resolve().parents[2] / "demo" / "feeds"
DEMO_CATEGORIES = {
    "contract hours": Category.CONTRACT_HOURS, "login": Category.ACCESS_LOGIN, "onboarding": Category.ONBOARDING,
    "salary": Category.SALARY_COMPENSATION, "schedule": Category.SCHEDULE_HOURS,
    "sick leave": Category.SICK_LEAVE_RECOVERY, "vacation": Category.LEAVE_VACATION,
    "workwear": Category.WORKWEAR_STAFF_PASS,
}  # fmt: skip


def test_agrees_with_the_demo_feeds_labels() -> None:
    feeds = sorted(DEMO.glob("*/sessions.csv"))
    assert feeds, f"no demo feeds under {DEMO}"
    agree: Counter[str] = Counter()
    compared: Counter[str] = Counter()
    for feed in feeds:
        for row in csv.reader(feed.read_text(encoding="utf-8").splitlines()):
            if len(row) != 16 or not row[10]:
                continue  # the deliberately bad lines, and sessions without a transcript
            text = (feed.parent / row[10]).read_text(encoding="utf-8")
            turns = [(m.role, m.content) for m in parse_transcript(text, UTC)]
            result = local.analyze(transcript(*turns, session_id=row[0]))
            checks = {
                "language": result.language == normalize_language(row[5]),
                "escalated": result.escalated == (row[8].strip().lower() == "yes"),
                "forwarded_hr": result.forwarded_hr == (row[9].strip().lower() == "yes"),
            }
            if row[14].strip().lower() in DEMO_CATEGORIES:
                checks["category"] = result.category is DEMO_CATEGORIES[row[14].strip().lower()]
            for name, ok in checks.items():
                compared[name] += 1
                agree[name] += ok
    assert compared["language"] > 200
    rates = {name: agree[name] / compared[name] for name in compared}
    assert all(rate >= 0.9 for rate in rates.values()), rates
