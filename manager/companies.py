"""`python -m manager companies load FILE | list`: the companies whose feeds the pipeline imports.

Companies live in the database (every replica sees the same list); a YAML file is how operators declare
them (see domain.companies for its format). Loading is idempotent, so `make run` loads the demo file on
every start and a deployment can load its own file from a one-shot job next to the migrations.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import anyio

from manager.config import Config
from manager.migrations import schema_problem
from storage.engine import create_engine

EXIT_OK, EXIT_FAILED, EXIT_CONFIG = 0, 1, 2


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser],
               common: Callable[[argparse.ArgumentParser], None]) -> None:
    companies = sub.add_parser("companies", help="load or list the companies whose CSV feeds are imported")
    actions = companies.add_subparsers(dest="action", required=True)
    load = actions.add_parser("load", help="insert or update the companies of a YAML file (idempotent)")
    load.add_argument("file", type=Path, help="YAML list of companies (see demo/companies.yaml)")
    common(load)
    listing = actions.add_parser("list", help="print the stored companies")
    listing.add_argument("--json", action="store_true", help="machine-readable output")
    common(listing)


def run(args: argparse.Namespace, config: Config) -> int:
    from domain.companies import CompanyFileError, list_companies, load_companies_file, upsert_companies
    from domain.fetch import display_url  # feed URLs may carry user info; never print it

    storage = config.storage
    if args.action == "load":
        try:
            specs = load_companies_file(args.file)
        except CompanyFileError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return EXIT_CONFIG

    async def main() -> int:
        engine = create_engine(storage.url(), **storage.engine_options())
        try:
            problem = await schema_problem(engine, storage)
            if problem:
                print(f"error: {problem}", file=sys.stderr)
                return EXIT_FAILED
            if args.action == "load":
                result = await upsert_companies(engine, specs, datetime.now(UTC))
                print(f"companies from {args.file}: {result.inserted} added, {result.updated} updated, "
                      f"{result.unchanged} unchanged")
                return EXIT_OK
            stored = await list_companies(engine)
        finally:
            await engine.dispose()
        if args.json:
            print(json.dumps([
                {"id": c.id, "name": c.name, "status": str(c.status), "csv_url": display_url(c.csv_url),
                 "timezone": c.timezone, "default_model": c.default_model,
                 "has_credentials": bool(c.csv_username and c.csv_password_ref)}
                for c in stored
            ], indent=2))
        else:
            for c in stored:
                print(f"{c.name:<30} {c.status!s:<10} {c.timezone:<20} {display_url(c.csv_url)}")
            print(f"{len(stored)} compan{'y' if len(stored) == 1 else 'ies'}")
        return EXIT_OK

    try:
        return anyio.run(main)
    except Exception as exc:
        print(f"error: {storage.explain(exc)}", file=sys.stderr)
        return EXIT_FAILED
