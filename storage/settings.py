"""Storage settings: the config file's ``storage:`` section and the ``DATABASE_*`` variables as one model.

The file looks like (``pool`` and ``ssl`` sit under ``connection``)::

    storage:
      driver: postgresql            # sqlite (default) | postgresql | mysql (MySQL 8 / MariaDB >= 10.6) | mssql
      connection:
        host: db.example.com
        port: 5432                  # default per driver: 5432, 3306, 1433
        database: scheduler
        user: scheduler
        password: ${DB_PASSWORD}
        ssl: true                   # or {enabled, ca, cert, key, reject_unauthorized}
        pool: {min: 0, max: 10, acquire_timeout: 30s}
        # connection_string: postgresql://user:pass@host:5432/db   (then the parts above are ignored)
        # filename: ./var/scheduler.db                              (sqlite)

Every field can also come from an environment variable (:data:`ENV_VARS`), which wins over the file. With nothing
set at all the database is SQLite at ``./var/scheduler.db``.

Pool mapping: SQLAlchemy's QueuePool opens connections lazily and has no "minimum", so ``pool.max`` becomes
``pool_size`` with ``max_overflow=0`` (never more than ``max`` connections, and the ones opened stay open for
reuse, recycled after 30 minutes and pre-pinged), ``acquire_timeout`` becomes ``pool_timeout``, and ``pool.min``
is validated (``0 <= min <= max``) but otherwise not used: the pool never opens a connection before it is needed,
which is what ``min: 0`` asks for, and nothing pre-opens ``min`` connections. (Mapping min to ``pool_size`` and
the rest to overflow would close every connection above ``min`` on check-in, i.e. a new TCP/TLS handshake per
use under load, and ``pool_size=0`` means *unlimited* in SQLAlchemy.)
"""

from __future__ import annotations

import re
import ssl as ssl_lib
from collections.abc import Mapping
from datetime import timedelta
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import quote, urlencode

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PrivateAttr,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import URL, make_url
from sqlalchemy.ext.asyncio import AsyncEngine

from storage import engine as storage_engine
from storage import errors
from storage.errors import StorageConfigError
from storage.url import async_url, redact

Driver = Literal["sqlite", "postgresql", "mysql", "mssql"]
DRIVERS: tuple[str, ...] = ("sqlite", "postgresql", "mysql", "mssql")
DEFAULT_SQLITE_FILE = "./var/scheduler.db"
DEFAULT_PORTS: dict[str, int] = {"postgresql": 5432, "mysql": 3306, "mssql": 1433}
# The ODBC driver named in mssql URLs built from parts (pyodbc needs one; 18 is current and encrypts by default).
MSSQL_ODBC_DRIVER = "ODBC Driver 18 for SQL Server"

# Environment variable -> field path in the model. The variables win over the file.
ENV_VARS: dict[str, str] = {
    "DATABASE_URL": "connection_string",
    "DATABASE_DRIVER": "driver",
    "DATABASE_HOST": "host",
    "DATABASE_PORT": "port",
    "DATABASE_NAME": "database",
    "DATABASE_USER": "user",
    "DATABASE_PASSWORD": "password",
    "DATABASE_SSL": "ssl.enabled",
    "DATABASE_SSL_CA": "ssl.ca",
    "DATABASE_SSL_CERT": "ssl.cert",
    "DATABASE_SSL_KEY": "ssl.key",
    "DATABASE_SSL_REJECT_UNAUTHORIZED": "ssl.reject_unauthorized",
    "DATABASE_POOL_MIN": "pool.min",
    "DATABASE_POOL_MAX": "pool.max",
    "DATABASE_POOL_ACQUIRE_TIMEOUT": "pool.acquire_timeout",
}
_ENV_OF = {path: name for name, path in ENV_VARS.items()}

_DRIVER_ALIASES = {"postgres": "postgresql", "mariadb": "mysql", "sqlserver": "mssql"}
_PARTS = ("host", "port", "database", "user", "password")
# Fields whose rejected value is echoed in messages; never a free-text field a password could be typed into.
_SHOWN = {
    "driver",
    "port",
    "ssl",
    "ssl.enabled",
    "ssl.reject_unauthorized",
    "pool.min",
    "pool.max",
    "pool.acquire_timeout",
}
_BOOL_WORDS = {"true": True, "yes": True, "on": True, "1": True, "false": False, "no": False, "off": False, "0": False}
_NUMBER = re.compile(r"\d+(?:\.\d+)?")
_DURATION = re.compile(r"(?:\d+(?:\.\d+)?(?:ms|s|m|h|d))+")
_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)")
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_MIN_SCRUB = 4  # secrets shorter than this are not scrubbed from messages (they would mangle ordinary words)


class _Problem(ValueError):
    """A cross-field error; ``template`` names the fields as {0}, {1}, ... so the loader can put in env/file names."""

    def __init__(self, template: str, *fields: str) -> None:
        super().__init__(template.format(*fields))
        self.template = template
        self.fields = fields


def _duration(value: Any) -> Any:
    """``30s``, ``1500ms``, ``2m``, ``1h30m`` or a bare number of seconds -> timedelta."""
    if isinstance(value, timedelta):
        return value
    seconds: float | None = None
    if isinstance(value, int | float) and not isinstance(value, bool):
        seconds = value
    elif isinstance(value, str):
        text = value.strip().lower()
        if _NUMBER.fullmatch(text):
            seconds = float(text)
        elif _DURATION.fullmatch(text):
            seconds = sum(float(n) * _UNITS[u] for n, u in _DURATION_PART.findall(text))
    try:
        if seconds is not None:
            return timedelta(seconds=seconds)
    except (OverflowError, ValueError):  # .inf, nan, or more days than timedelta holds
        pass
    raise ValueError("expected a duration such as 30s, 1500ms or 2m (a bare number means seconds)")


def _empty_to_none(value: Any) -> Any:
    return None if isinstance(value, str) and not value.strip() else value


class SSLSettings(BaseModel):
    """TLS to the server. ``ssl: true`` means this object with its defaults: TLS required, certificate verified."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    enabled: bool = True
    ca: Annotated[Path | None, BeforeValidator(_empty_to_none)] = None
    cert: Annotated[Path | None, BeforeValidator(_empty_to_none)] = None
    key: Annotated[Path | None, BeforeValidator(_empty_to_none)] = None
    reject_unauthorized: bool = True

    @model_validator(mode="after")
    def _cert_needs_key(self) -> SSLSettings:
        if self.enabled and (self.cert is None) != (self.key is None):
            raise _Problem(
                "{0} and {1} go together: give the client certificate and its key, or neither", "cert", "key"
            )
        return self


class PoolSettings(BaseModel):
    """Connection pool bounds, in the seed's terms; see the module docstring for how they map onto SQLAlchemy."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    min: int = Field(default=0, ge=0)
    max: int = Field(default=10, ge=1)
    acquire_timeout: Annotated[timedelta, BeforeValidator(_duration)] = timedelta(seconds=30)

    @field_validator("acquire_timeout")
    @classmethod
    def _positive(cls, value: timedelta) -> timedelta:
        if value <= timedelta(0):
            raise ValueError("expected a duration greater than zero, such as 30s")
        return value

    @model_validator(mode="after")
    def _min_le_max(self) -> PoolSettings:
        if self.min > self.max:
            raise _Problem(f"{{0}} ({self.min}) must not be greater than {{1}} ({self.max})", "min", "max")
        return self


class StorageSettings(BaseModel):
    """Which database the scheduler uses and how it connects.

    Either ``connection_string`` (a URL, also ``DATABASE_URL``) or the parts: ``filename`` for SQLite, ``host``,
    ``port``, ``database``, ``user`` and ``password`` for the servers. When ``connection_string`` is set the
    parts are ignored, as in the seed; ``ssl`` and ``pool`` still apply (``ssl``, when given, overrides an
    ``sslmode``/``ssl`` in the URL). Without a driver but with a connection string, the driver is the URL's.
    Build it with :func:`load_storage_settings` to get error messages that name the variable or file key.
    """

    model_config = ConfigDict(extra="forbid", frozen=True, coerce_numbers_to_str=True)

    driver: Driver = "sqlite"
    connection_string: SecretStr | None = None
    filename: str = DEFAULT_SQLITE_FILE
    host: str | None = None
    port: int | None = Field(default=None, ge=1, le=65535)
    database: str | None = None
    user: str | None = None
    password: SecretStr | None = None
    ssl: SSLSettings | None = None  # None: not configured, the driver's (or the URL's) default applies
    pool: PoolSettings = Field(default_factory=PoolSettings)

    # Where each field came from (env var or file key), for errors raised after loading (certificate files).
    _names: dict[str, str] = PrivateAttr(default_factory=dict)
    _where: str = PrivateAttr(default="config")

    @model_validator(mode="before")
    @classmethod
    def _infer_driver(cls, data: Any) -> Any:
        """No driver but a connection string: the driver is the URL's backend (``postgres://`` -> postgresql)."""
        if not isinstance(data, Mapping) or data.get("driver") not in (None, ""):
            return data
        given = data.get("connection_string")
        text = given.get_secret_value() if isinstance(given, SecretStr) else given
        if not isinstance(text, str) or not text.strip():
            return data
        try:
            backend = async_url(text).get_backend_name()
        except StorageConfigError:
            return data  # the connection_string validator reports it
        return {**data, "driver": backend}

    @field_validator("driver", mode="before")
    @classmethod
    def _driver_alias(cls, value: Any) -> Any:
        if value is None or (isinstance(value, str) and not value.strip()):
            return "sqlite"
        if isinstance(value, str):
            name = value.strip().lower()
            return _DRIVER_ALIASES.get(name, name)
        return value

    @field_validator("connection_string", "host", "database", "user", "password", "port", mode="before")
    @classmethod
    def _blank_is_unset(cls, value: Any) -> Any:
        return _empty_to_none(value)

    @field_validator("filename", mode="before")
    @classmethod
    def _default_file(cls, value: Any) -> Any:
        return DEFAULT_SQLITE_FILE if value is None or (isinstance(value, str) and not value.strip()) else value

    @field_validator("ssl", mode="before")
    @classmethod
    def _ssl_shorthand(cls, value: Any) -> Any:
        """``true``/``false`` (also as strings, e.g. from ``${VAR}``) or the object form."""
        if value is None or isinstance(value, SSLSettings | Mapping):
            return value
        if isinstance(value, bool):
            return {"enabled": value}
        if isinstance(value, str):
            if not value.strip():
                return None
            if value.strip().lower() in _BOOL_WORDS:
                return {"enabled": _BOOL_WORDS[value.strip().lower()]}
        raise ValueError("expected true, false or a mapping {enabled, ca, cert, key, reject_unauthorized}")

    @field_validator("connection_string")
    @classmethod
    def _usable_url(cls, value: SecretStr | None) -> SecretStr | None:
        if value is None:
            return None
        parsed = async_url(value.get_secret_value())  # StorageConfigError (a ValueError) names no password
        if parsed.host and "@" in parsed.host:
            raise ValueError(
                "the user name or password contains an unescaped '@'; percent-encode it (@ is %40, : is %3A)"
            )
        return value

    @model_validator(mode="after")
    def _consistent(self) -> StorageSettings:
        if self.connection_string is not None:
            backend = async_url(self.connection_string.get_secret_value()).get_backend_name()
            if backend != self.driver:
                raise _Problem(
                    f"{{0}} is {self.driver!r} but {{1}} is a {backend} URL; give one backend "
                    "(leave the driver out to take it from the URL)",
                    "driver",
                    "connection_string",
                )
        elif self.driver == "sqlite":
            for part in _PARTS:
                if getattr(self, part) is not None:
                    raise _Problem(
                        "{0} is set but the driver is sqlite, which only uses {1}; set {2} to postgresql, mysql "
                        "or mssql, or remove {0}",
                        part,
                        "filename",
                        "driver",
                    )
        else:
            for part in ("host", "database"):
                if getattr(self, part) is None:
                    raise _Problem(
                        f"{{0}} is required for driver {self.driver!r}; or give a connection string: {{1}}",
                        part,
                        "connection_string",
                    )
        tls = self.ssl
        if tls is not None and tls.enabled:
            if self.driver == "sqlite":
                raise _Problem("{0} is on but the driver is sqlite, a local file without TLS; remove it", "ssl")
            if self.driver == "mssql":
                for name in ("ca", "cert", "key"):
                    if getattr(tls, name) is not None:
                        raise _Problem(
                            "{0} is not supported for mssql: install the CA in the system trust store "
                            "(only encrypt/TrustServerCertificate are mapped)",
                            f"ssl.{name}",
                        )
        return self

    # -- what the engine gets -------------------------------------------------------------------------------

    def url(self) -> str:
        """The plain URL (password included, special characters percent-encoded) for storage.engine."""
        if self.connection_string is not None:
            text = self.connection_string.get_secret_value().strip()
            if self.driver == "mssql" and self.ssl is not None:
                parsed = make_url(text)
                text = parsed.set(query={**parsed.query, **self._mssql_tls()}).render_as_string(hide_password=False)
            return text
        if self.driver == "sqlite":
            # Only the characters that would end the path in a URL are escaped (make_url decodes them).
            name = self.filename.replace("%", "%25").replace("?", "%3F").replace("#", "%23")
            return f"sqlite:///{name}"
        return self._server_url()

    def redacted_url(self) -> str:
        """The URL with the password replaced by ``***``, for logs and ``--check-config``."""
        return redact(self.url())

    def engine_options(self) -> dict[str, Any]:
        """Keyword arguments for storage.engine.create_engine: pool bounds and the driver's TLS connect_args.

        Reads the certificate files now (so a missing one is reported at start-up, naming the setting).
        """
        return {
            "pool_size": self.pool.max,
            "max_overflow": 0,
            "pool_timeout": self.pool.acquire_timeout.total_seconds(),
            "connect_args": self._connect_args(),
        }

    def create_engine(self) -> AsyncEngine:
        """An AsyncEngine for these settings (does not connect; storage.engine.ping does)."""
        return storage_engine.create_engine(self.url(), **self.engine_options())

    def explain(self, exc: BaseException) -> str:
        """storage.errors.explain with this pool's size and timeout, for connect and pool failures."""
        return errors.explain(
            exc, self.url(), pool_size=self.pool.max, pool_timeout=self.pool.acquire_timeout.total_seconds()
        )

    def _server_url(self) -> str:
        user = quote(self.user or "", safe="")
        password = quote(self.password.get_secret_value(), safe="") if self.password is not None else None
        credentials = f"{user}:{password}@" if password is not None else (f"{user}@" if user else "")
        host = self.host or ""
        port = self.port or DEFAULT_PORTS[self.driver]
        query: dict[str, str] = {}
        if host.startswith("/"):  # a Unix socket directory/file (Cloud SQL proxy, local servers)
            if self.driver == "postgresql":
                query["host"] = host
                address = ""
            elif self.driver == "mysql":
                query["unix_socket"] = host
                address = "localhost"
            else:
                address = host
        else:
            address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        if self.driver == "mssql":
            query["driver"] = MSSQL_ODBC_DRIVER
            query.update(self._mssql_tls())
        rest = f"?{urlencode(query, quote_via=quote)}" if query else ""
        return f"{self.driver}://{credentials}{address}/{quote(self.database or '', safe='')}{rest}"

    def _mssql_tls(self) -> dict[str, str]:
        """SQL Server's ODBC keywords: Encrypt, and TrustServerCertificate = not reject_unauthorized."""
        if self.ssl is None:
            return {}
        if not self.ssl.enabled:
            return {"Encrypt": "no"}
        return {"Encrypt": "yes", "TrustServerCertificate": "no" if self.ssl.reject_unauthorized else "yes"}

    def _connect_args(self) -> dict[str, Any]:
        tls = self.ssl
        if tls is None or self.driver in ("sqlite", "mssql"):  # mssql: TLS is in the URL's query
            return {}
        driver = async_url(self.url()).get_driver_name()
        if driver not in ("asyncpg", "aiomysql", "asyncmy"):
            raise StorageConfigError(
                f"{self._name('ssl')}: ssl settings are mapped for asyncpg, aiomysql and asyncmy only, not "
                f"{driver}; put the TLS options in the connection string instead"
            )
        if not tls.enabled:
            return {"ssl": False} if driver == "asyncpg" else {}  # asyncpg's default is "prefer": try TLS
        return {"ssl": self._ssl_context(tls)}

    def _ssl_context(self, tls: SSLSettings) -> ssl_lib.SSLContext:
        """Verify the server against ``ca`` (or the system CAs), present ``cert``/``key`` when given."""
        for field in ("ca", "cert", "key"):
            path = getattr(tls, field)
            if path is not None:
                self._readable(f"ssl.{field}", path)
        try:
            context = ssl_lib.create_default_context(cafile=str(tls.ca) if tls.ca else None)
        except ssl_lib.SSLError as exc:
            raise StorageConfigError(
                f"{self._name('ssl.ca')}: {tls.ca} holds no usable PEM CA certificate ({_ssl_reason(exc)})"
            ) from None
        if tls.cert is not None and tls.key is not None:
            try:
                context.load_cert_chain(str(tls.cert), str(tls.key))
            except ssl_lib.SSLError as exc:
                raise StorageConfigError(self._cert_chain_problem(tls.cert, tls.key, exc)) from None
        if not tls.reject_unauthorized:
            context.check_hostname = False
            context.verify_mode = ssl_lib.CERT_NONE
        return context

    def _cert_chain_problem(self, cert: Path, key: Path, exc: ssl_lib.SSLError) -> str:
        """Blame the file that is wrong: the certificate if it does not parse as one, else the key."""
        try:
            ssl_lib.create_default_context().load_verify_locations(cafile=str(cert))
        except ssl_lib.SSLError:
            return f"{self._name('ssl.cert')}: {cert} holds no usable PEM certificate ({_ssl_reason(exc)})"
        return (
            f"{self._name('ssl.key')}: {key} is not a usable PEM private key for the certificate in {cert} "
            f"({_ssl_reason(exc)})"
        )

    def _readable(self, field: str, path: Path) -> None:
        try:
            with path.open("rb"):
                pass
        except OSError as exc:
            raise StorageConfigError(f"{self._name(field)}: cannot read {path}: {exc.strerror or exc}") from None

    def _name(self, path: str) -> str:
        return _name_of(path, self._names, self._where)


def _ssl_reason(exc: ssl_lib.SSLError) -> str:
    return str(exc.reason or exc.strerror or exc).strip() or type(exc).__name__


# -- loading ------------------------------------------------------------------------------------------------


def load_storage_settings(
    section: Mapping[str, Any] | None, env: Mapping[str, str], where: str = "config"
) -> StorageSettings:
    """Build StorageSettings from the file's ``storage:`` mapping and the environment (which wins).

    ``where`` names the file in messages. Empty variables count as unset. When ``DATABASE_URL`` is set and
    ``DATABASE_DRIVER`` is not, the driver comes from the URL (the file's driver is overridden with the rest of
    its connection). Raises StorageConfigError with one line naming the variable or file key; no password or
    URL password is ever in it.
    """
    values, names = _from_file(section, where)
    secrets = _secrets(values)
    try:
        _apply_env(values, names, env)
        secrets |= _secrets(values)
        settings = StorageSettings.model_validate(values)
    except ValidationError as exc:
        raise StorageConfigError(_scrub(_one_line(exc, names, where), secrets)) from None
    except StorageConfigError as exc:
        raise StorageConfigError(_scrub(str(exc), secrets)) from None
    settings._names = names
    settings._where = where
    return settings


def _from_file(section: Mapping[str, Any] | None, where: str) -> tuple[dict[str, Any], dict[str, str]]:
    values: dict[str, Any] = {}
    names: dict[str, str] = {}
    if section is None:
        return values, names
    if not isinstance(section, Mapping):
        raise StorageConfigError(f"storage in {where}: expected a mapping with driver and connection")
    for key, value in section.items():
        if key == "driver":
            values["driver"] = value
            names["driver"] = f"storage.driver in {where}"
        elif key == "connection":
            if value is None:
                continue
            if not isinstance(value, Mapping):
                raise StorageConfigError(
                    f"storage.connection in {where}: expected a mapping (host, port, database, user, password, "
                    "ssl, pool, connection_string, filename)"
                )
            for field, given in value.items():
                if isinstance(given, Mapping):  # ssl/pool objects: their keys are named, not the object
                    values[str(field)] = dict(given)
                    for sub in given:
                        names[f"{field}.{sub}"] = f"storage.connection.{field}.{sub} in {where}"
                else:
                    values[str(field)] = given
                    names[str(field)] = f"storage.connection.{field} in {where}"
        else:
            raise StorageConfigError(f"storage.{key} in {where}: unknown setting; expected driver or connection")
    return values, names


def _apply_env(values: dict[str, Any], names: dict[str, str], env: Mapping[str, str]) -> None:
    given = {name: env[name] for name in ENV_VARS if env.get(name, "").strip()}
    if "DATABASE_URL" in given and "DATABASE_DRIVER" not in given:
        values.pop("driver", None)  # inferred from the URL, which overrides the file's connection
        names.pop("driver", None)
    for name, value in given.items():
        path = ENV_VARS[name]
        head, _, leaf = path.partition(".")
        if not leaf:
            values[head] = value
        else:
            current = values.get(head)
            if head == "ssl" and current is not None and not isinstance(current, Mapping):
                current = {"enabled": current}  # the file's `ssl: true` shorthand, now refined by the env
            elif current is None:
                current = {}
            if not isinstance(current, Mapping):
                continue  # the file's value is malformed; validation reports it
            values[head] = {**current, leaf: value}
        names[path] = name


def _name_of(path: str, names: Mapping[str, str], where: str) -> str:
    """The env var or file key a field came from: exact, else ``ssl: true`` for ssl.enabled, else a child's, else
    both spellings (for a field nobody set)."""
    if path in names:
        return names[path]
    if path == "ssl.enabled" and "ssl" in names:
        return names["ssl"]
    children = [key for key in names if key.startswith(path + ".")]
    if children:
        env_first = sorted(children, key=lambda key: not names[key].startswith("DATABASE_"))
        return names[env_first[0]]
    key = "storage.driver" if path == "driver" else f"storage.connection.{path}"
    env = _ENV_OF.get(path)
    return f"{env} (or {key} in {where})" if env else f"{key} in {where}"


def _one_line(exc: ValidationError, names: Mapping[str, str], where: str) -> str:
    """The first error as ``<name>: <what was expected>``; cross-field errors put the names in the sentence."""
    error = exc.errors()[0]
    loc = [str(part) for part in error["loc"]]
    problem = (error.get("ctx") or {}).get("error")
    if isinstance(problem, _Problem):
        fields = [".".join([*loc, field]) for field in problem.fields]
        return problem.template.format(*(_name_of(field, names, where) for field in fields))
    path = ".".join(loc)
    message = _expected(error, loc)
    given = error.get("input")
    shown = f" (got {given!r})" if path in _SHOWN and isinstance(given, str | int | float) else ""
    return f"{_name_of(path, names, where)}: {message}{shown}"


def _expected(error: Any, loc: list[str]) -> str:
    kind = str(error["type"])
    msg = str(error["msg"]).removeprefix("Value error, ")
    field = loc[-1] if loc else ""
    if kind == "extra_forbidden":
        nested: dict[str, type[BaseModel]] = {"ssl": SSLSettings, "pool": PoolSettings}
        model = nested.get(loc[0], StorageSettings) if len(loc) > 1 else StorageSettings
        return f"unknown setting (expected one of: {', '.join(model.model_fields)})"
    if kind.startswith("bool_"):
        return "expected true or false"
    if kind == "literal_error" or field == "driver":
        return f"expected one of {', '.join(DRIVERS)} (mysql also means MariaDB)"
    if field == "port":
        return "expected a TCP port, a whole number from 1 to 65535"
    if kind.startswith("int_"):
        return "expected a whole number"
    if kind in ("greater_than_equal", "less_than_equal", "greater_than", "less_than"):
        return "expected a number " + msg.removeprefix("Input should be ")
    if kind in ("string_type", "path_type"):
        return "expected a text value"
    return msg


def _secrets(values: Mapping[str, Any]) -> set[str]:
    """Passwords that must not appear in a message: the password field and the URL's password."""
    found: set[str] = set()
    for key in ("password", "connection_string"):
        value = values.get(key)
        text = value.get_secret_value() if isinstance(value, SecretStr) else value
        if not isinstance(text, str | int) or isinstance(text, bool):
            continue
        text = str(text)
        if key == "password":
            found.add(text)
            continue
        try:
            parsed: URL | None = make_url(text.strip())
        except (sa_exc.ArgumentError, ValueError):
            parsed = None
        if parsed is not None and parsed.password:
            found.add(str(parsed.password))
        match = re.search(r"://[^:/@]*:([^/]*)@", text)  # unparseable or '@' inside: all up to the last '@'
        if match:
            found.add(match.group(1))
    return found


def _scrub(message: str, secrets: set[str]) -> str:
    for secret in sorted(secrets, key=len, reverse=True):
        if len(secret) >= _MIN_SCRUB:
            message = message.replace(secret, "***").replace(quote(secret, safe=""), "***")
    return message
