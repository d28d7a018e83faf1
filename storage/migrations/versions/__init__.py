"""Alembic revisions; file name = revision id."""
