"""Secret references: the database stores where a secret lives, never the secret.

``env:CSV_ACME_PASSWORD`` reads an environment variable, ``file:/run/secrets/acme`` a file (for Kubernetes
and Docker secrets). The original stored feed passwords in plain text in the companies table; here a
leaked database dump holds no credentials.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


class SecretError(ValueError):
    """A reference that is malformed or points at nothing; the message names the reference, never a value."""


def validate_reference(reference: str) -> str:
    """The reference unchanged if it is well-formed (``env:NAME`` or ``file:/abs/path``); SecretError otherwise."""
    kind, _, target = reference.partition(":")
    if kind == "env" and _ENV_NAME.match(target):
        return reference
    if kind == "file" and target.startswith("/"):
        return reference
    raise SecretError("a secret must be given as env:VARIABLE or file:/absolute/path, not as the secret itself")


def resolve_secret(reference: str) -> str:
    validate_reference(reference)
    kind, _, target = reference.partition(":")
    if kind == "env":
        value = os.environ.get(target)
        if value is None:
            raise SecretError(f"environment variable {target} (from {reference}) is not set")
        return value
    try:
        return Path(target).read_text(encoding="utf-8").rstrip("\r\n")
    except OSError as exc:
        raise SecretError(f"cannot read secret file {target}: {exc.strerror}") from None
