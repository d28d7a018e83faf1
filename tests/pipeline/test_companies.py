"""Companies from YAML: validation errors that name the company and field, secrets as references only,
relative feed paths, and an idempotent upsert by name."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from domain.companies import CompanyFileError, CompanySpec, list_companies, load_companies_file, upsert_companies
from domain.model import CompanyStatus

NOW = datetime(2025, 5, 1, 12, 0, tzinfo=UTC)
DEMO = Path(__file__).resolve().parents[2] / "demo" / "companies.yaml"


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "conf" / "companies.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def test_a_full_entry_and_defaults(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
- name: Acme
  csv_url: https://feeds.example/acme.csv
  csv_username: acme
  csv_password: env:ACME_CSV_PASSWORD
  status: suspended
  timezone: Europe/Berlin
  default_model: gpt-4o-mini
- name: Local
  csv_url: feeds/local/sessions.csv
""",
    )
    acme, local = load_companies_file(path)
    assert acme == CompanySpec(
        name="Acme",
        csv_url="https://feeds.example/acme.csv",
        csv_username="acme",
        csv_password_ref="env:ACME_CSV_PASSWORD",
        status=CompanyStatus.SUSPENDED,
        timezone="Europe/Berlin",
        default_model="gpt-4o-mini",
    )
    # A relative path becomes an absolute file:// URL next to the YAML file, whatever the working directory.
    assert local.csv_url == (tmp_path / "conf" / "feeds" / "local" / "sessions.csv").as_uri()
    assert (local.status, local.timezone, local.csv_password_ref) == (CompanyStatus.ACTIVE, "UTC", None)


def test_a_literal_password_is_refused_without_repeating_it(tmp_path: Path) -> None:
    path = write(tmp_path, "- name: Acme\n  csv_url: https://x.example/a.csv\n  csv_password: hunter2-Secret\n")
    with pytest.raises(CompanyFileError) as info:
        load_companies_file(path)
    message = str(info.value)
    assert "'Acme'" in message and "csv_password" in message and "env:" in message
    assert "hunter2" not in message


@pytest.mark.parametrize(
    ("entry", "field", "detail"),
    [
        ("- name: Acme\n  csv_url: a.csv\n  timezone: Mars/Olympus\n", "timezone", "Mars/Olympus"),
        ("- name: Acme\n  csv_url: a.csv\n  status: DELETED\n", "status", "DELETED"),
        ("- name: Acme\n", "csv_url", "required"),
        ("- name: Acme\n  csv_url: ftp://x/a.csv\n", "csv_url", "ftp"),
        ("- name: Acme\n  csv_url: a.csv\n  csv_pasword: env:X\n", "unknown field", "csv_pasword"),
        ("- name: Acme\n  csv_url: a.csv\n  csv_password: 'file:relative/path'\n", "csv_password", "reference"),
        ("- name: Acme\n  csv_url: a.csv\n- name: Acme\n  csv_url: b.csv\n", "name", "more than once"),
    ],
)
def test_errors_name_the_company_and_the_field(tmp_path: Path, entry: str, field: str, detail: str) -> None:
    with pytest.raises(CompanyFileError) as info:
        load_companies_file(write(tmp_path, entry))
    message = str(info.value)
    assert "company 'Acme'" in message and field in message and detail in message


@pytest.mark.parametrize(
    ("text", "detail"),
    [
        ("- csv_url: a.csv\n", "company #1: name"),
        ("name: Acme\n", "expected a YAML list"),
        ("- [1, 2]\n", "company #1: expected a mapping"),
        ("- name: [unclosed\n", "not valid YAML"),
    ],
)
def test_malformed_files(tmp_path: Path, text: str, detail: str) -> None:
    with pytest.raises(CompanyFileError, match=r"companies\.yaml") as info:
        load_companies_file(write(tmp_path, text))
    assert detail in str(info.value)


def test_a_missing_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(CompanyFileError, match="cannot read"):
        load_companies_file(tmp_path / "nope.yaml")


def test_the_demo_companies_load_and_their_feeds_exist() -> None:
    specs = load_companies_file(DEMO)
    assert len(specs) == 3 and all(s.status is CompanyStatus.ACTIVE for s in specs)
    assert len({s.timezone for s in specs}) == 3
    for spec in specs:
        assert spec.csv_url.startswith("file:///")
        assert Path(spec.csv_url.removeprefix("file://")).is_file()


@pytest.mark.anyio
async def test_upsert_is_idempotent_by_name_and_list_orders_by_creation(engine: AsyncEngine) -> None:
    a = CompanySpec(name="A", csv_url="file:///a.csv", timezone="Europe/Amsterdam")
    b = CompanySpec(name="B", csv_url="file:///b.csv", status=CompanyStatus.TRIAL)
    first = await upsert_companies(engine, [a], NOW)
    assert (first.inserted, first.updated, first.unchanged) == (1, 0, 0)
    second = await upsert_companies(engine, [a, b], NOW + timedelta(minutes=1))
    assert (second.inserted, second.updated, second.unchanged) == (1, 0, 1)
    again = await upsert_companies(engine, [a, b], NOW + timedelta(hours=1))
    assert (again.inserted, again.updated, again.unchanged) == (0, 0, 2)
    c = CompanySpec(name="C", csv_url="file:///c.csv", csv_username="u", csv_password_ref="env:C_PASSWORD")
    moved = CompanySpec(name="A", csv_url="file:///a2.csv", timezone="America/New_York")
    changed = await upsert_companies(engine, [moved, c], NOW + timedelta(hours=2))
    assert (changed.inserted, changed.updated, changed.unchanged) == (1, 1, 0)

    stored = await list_companies(engine)
    assert [x.name for x in stored] == ["A", "B", "C"]  # A keeps its original created_at
    assert stored[0].csv_url == "file:///a2.csv" and stored[0].timezone == "America/New_York"
    assert stored[0].created_at == NOW and stored[0].updated_at == NOW + timedelta(hours=2)
    assert stored[1].updated_at == NOW + timedelta(minutes=1)  # untouched rows keep their updated_at
    assert stored[2].csv_password_ref == "env:C_PASSWORD"
    active = await list_companies(engine, statuses=[CompanyStatus.ACTIVE])
    assert [x.name for x in active] == ["A", "C"]
