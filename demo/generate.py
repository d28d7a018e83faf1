"""Write the bundled demo data: ``python -m demo.generate [--out DIR]`` (default: this package's directory).

Deterministic: one ``random.Random`` with a fixed seed, no clock, fixed iteration order, ``\\n`` line ends, so
re-running produces identical bytes (a test compares the committed files with a fresh run). Output:

* ``companies.yaml``: three ACTIVE companies in different time zones, feeds given as relative paths;
* ``feeds/<slug>/sessions.csv``: about 100 sessions per company, 16 columns, no header; times are the
  company's local wall-clock time (import-processing applies the zone); column 10 is a relative URL
  ``transcripts/<uuid>.txt`` (empty for a handful of sessions); one feed holds three deliberately bad lines;
* ``feeds/<slug>/transcripts/<uuid>.txt``: ``[DD.MM.YYYY HH:mm:ss] User: ...`` / ``Assistant: ...`` lines.
"""

from __future__ import annotations

import argparse
import csv
import io
import random
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

from demo.content import (
    ESCALATE,
    ESCALATE_REPLY,
    FRUSTRATED,
    GREETING,
    HR_FORWARD,
    LANGUAGE_NAMES,
    SENTIMENTS_BAD,
    SENTIMENTS_GOOD,
    THANKS,
    TOPICS,
    WELCOME,
)

SEED = 20250430
SESSIONS_PER_COMPANY = 100
TIME_FORMAT = "%d.%m.%Y %H:%M:%S"
HERE = Path(__file__).resolve().parent


@dataclass(frozen=True)
class DemoCompany:
    name: str
    slug: str
    timezone: str
    country: str
    languages: tuple[str, ...]  # weighted by repetition
    ip_prefix: str


COMPANIES = (
    DemoCompany("Amstel Retail", "amstel-retail", "Europe/Amsterdam", "NL", ("nl", "nl", "nl", "en"), "31.176"),
    DemoCompany("Spree Logistik", "spree-logistik", "Europe/Berlin", "DE", ("de", "de", "de", "en"), "85.214"),
    DemoCompany(
        "Hudson Hospitality", "hudson-hospitality", "America/New_York", "US", ("en", "en", "en", "fr"), "72.229"
    ),
)
BAD_FEED = "spree-logistik"
# Where the bad lines go: after this many good rows (so their line numbers are fixed; see demo/README.md).
BAD_AFTER = {10: "columns", 40: "date", 70: "number"}


def generate() -> dict[str, bytes]:
    """Every demo file, relative path -> bytes."""
    rng = random.Random(SEED)
    files: dict[str, bytes] = {"companies.yaml": _companies_yaml().encode()}
    for company in COMPANIES:
        rows: list[list[str]] = []
        for index in range(SESSIONS_PER_COMPANY):
            if company.slug == BAD_FEED and index in BAD_AFTER:
                rows.append(_bad_row(rng, company, BAD_AFTER[index]))
            row, transcript = _session(rng, company, index)
            rows.append(row)
            if transcript is not None:
                files[f"feeds/{company.slug}/{row[10]}"] = transcript.encode()
        files[f"feeds/{company.slug}/sessions.csv"] = _csv(rows).encode()
    return dict(sorted(files.items()))


def _companies_yaml() -> str:
    lines = ["# Demo companies (written by python -m demo.generate). Feeds are files next to this one.", ""]
    for company in COMPANIES:
        lines += [
            f"- name: {company.name}",
            f"  csv_url: feeds/{company.slug}/sessions.csv",
            "  status: ACTIVE",
            f"  timezone: {company.timezone}",
            "",
        ]
    return "\n".join(lines)


def _uuid(rng: random.Random) -> str:
    return str(uuid.UUID(int=rng.getrandbits(128), version=4))


def _session(rng: random.Random, company: DemoCompany, index: int) -> tuple[list[str], str | None]:
    session_id = _uuid(rng)
    lang = rng.choice(company.languages)
    topic = rng.choice(sorted(TOPICS))
    question, answer, follow_up, follow_answer = TOPICS[topic][lang]
    escalated = rng.random() < 0.1
    forwarded = rng.random() < 0.15
    frustrated = escalated or rng.random() < 0.1
    day = datetime(2025, 4, 1) + timedelta(days=rng.randrange(30))
    start = day.replace(hour=rng.randrange(7, 20), minute=rng.randrange(60), second=rng.randrange(60))

    turns: list[tuple[str, str]] = []
    if rng.random() < 0.5:
        turns.append(("User", GREETING[lang]))
    turns += [("User", question), ("Assistant", answer)]
    if rng.random() < 0.6:
        turns += [("User", follow_up), ("Assistant", follow_answer)]
    if frustrated:
        turns.append(("User", FRUSTRATED[lang]))
    if escalated:
        turns += [("User", ESCALATE[lang]), ("Assistant", ESCALATE_REPLY[lang])]
    if forwarded:
        turns.append(("Assistant", HR_FORWARD[lang]))
    if not frustrated:
        turns += [("User", THANKS[lang]), ("Assistant", WELCOME[lang])]

    at = start
    lines: list[str] = []
    gaps: list[int] = []
    for position, (role, text) in enumerate(turns):
        if position:
            gap = rng.randrange(3, 40) if role == "Assistant" else rng.randrange(15, 120)
            at += timedelta(seconds=gap)
            if role == "Assistant":
                gaps.append(gap)
        lines.append(f"[{at.strftime(TIME_FORMAT)}] {role}: {text}")
    end = at + timedelta(seconds=rng.randrange(5, 60))

    has_transcript = index % 33 != 7  # a handful of sessions come without a transcript
    user_messages = sum(1 for role, _ in turns if role == "User")
    tokens = 0 if not has_transcript else rng.randrange(300, 2500)
    avg_response = f"{sum(gaps) / len(gaps):.1f}" if gaps else "0"
    row = [
        session_id,
        start.strftime(TIME_FORMAT),
        end.strftime(TIME_FORMAT),
        f"{company.ip_prefix}.{rng.randrange(1, 255)}.{rng.randrange(1, 255)}",
        company.country if lang != "fr" or company.country != "US" else rng.choice(("US", "CA", "FR")),
        rng.choice(LANGUAGE_NAMES[lang]),
        str(user_messages),
        rng.choice(SENTIMENTS_BAD if frustrated else SENTIMENTS_GOOD),
        "yes" if escalated else "no",
        "yes" if forwarded else "no",
        f"transcripts/{session_id}.txt" if has_transcript else "",
        avg_response,
        str(tokens),
        f"{tokens * 0.00002:.4f}" if tokens else "0",
        topic,
        question,
    ]
    return row, ("\n".join(lines) + "\n") if has_transcript else None


def _bad_row(rng: random.Random, company: DemoCompany, kind: str) -> list[str]:
    """A deliberately broken row: one missing column, an impossible date, or a word where a number belongs."""
    row, _ = _session(rng, company, 7)  # index 7: no transcript file is written for it
    if kind == "columns":
        return row[:15]
    if kind == "date":
        row[1] = "31.02.2025 10:15:00"
        return row
    row[6] = "zwölf"
    return row


def _csv(rows: list[list[str]]) -> str:
    out = io.StringIO()
    csv.writer(out, lineterminator="\n").writerows(rows)
    return out.getvalue()


def write(out: Path) -> list[Path]:
    """Write every demo file under ``out``; returns the paths written."""
    written = []
    for relative, data in generate().items():
        path = out / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        written.append(path)
    return written


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--out", type=Path, default=HERE, help="directory to write into (default: %(default)s)")
    args = parser.parse_args(argv)
    written = write(args.out)
    total = sum(p.stat().st_size for p in written)
    print(f"wrote {len(written)} files, {total / 1024:.0f} KiB, under {args.out}")


if __name__ == "__main__":
    main()
