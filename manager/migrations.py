"""Whether the database is migrated to what this code needs: every command that opens it asks first."""

from __future__ import annotations

from sqlalchemy.ext.asyncio import AsyncEngine

from storage import revision
from storage.settings import StorageSettings


async def schema_problem(engine: AsyncEngine, storage: StorageSettings) -> str | None:
    """None when the database is at the code's migration head, else what to do about it."""
    try:
        at = await revision.database_revision(engine)
    except Exception as exc:
        return storage.explain(exc)
    wanted = revision.HEAD
    if at != wanted:
        return (f"the database is at migration {at or '(none)'} but this version needs {wanted}: "
                "run `python -m manager migrate` (or `make migrate`)")
    return None
