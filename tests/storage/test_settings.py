"""StorageSettings: the seed's storage model, its env/file precedence, TLS and pool mapping, and real connections."""

from __future__ import annotations

import shutil
import ssl
import subprocess
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
import yaml
from sqlalchemy import exc, text
from sqlalchemy.engine import make_url

from storage.engine import create_engine, ping
from storage.errors import StorageConfigError, explain
from storage.settings import ENV_VARS, StorageSettings, load_storage_settings
from storage.url import async_url

pytestmark = pytest.mark.anyio

PASSWORD = "S3cr3t-P@ss:w/rd %+#?&="
SERVER_PARTS: dict[str, Any] = {"host": "db.example", "database": "app", "user": "app"}


def _load(section: dict[str, Any] | None = None, **env: str) -> StorageSettings:
    return load_storage_settings(section, env, where="scheduler.yaml")


def _error(section: dict[str, Any] | None = None, **env: str) -> str:
    with pytest.raises(StorageConfigError) as info:
        _load(section, **env)
    message = str(info.value)
    assert "\n" not in message
    return message


def _server(**connection: Any) -> dict[str, Any]:
    """A postgresql section for db.example with these connection fields added or replaced."""
    return {"driver": "postgresql", "connection": {**SERVER_PARTS, **connection}}


# -- defaults, precedence, every variable -------------------------------------------------------------------


def test_nothing_set_is_sqlite_in_var() -> None:
    settings = _load()
    assert settings.driver == "sqlite"
    assert settings.url() == "sqlite:///./var/scheduler.db"
    assert settings.engine_options() == {"pool_size": 10, "max_overflow": 0, "pool_timeout": 30.0, "connect_args": {}}
    assert _load({}) == _load({"connection": None}) == settings


def test_seed_shaped_yaml() -> None:
    document = yaml.safe_load(
        """
        scheduler:
          storage:
            driver: postgresql
            connection:
              host: mydb.abc123.us-east-1.rds.amazonaws.com
              port: 5432
              database: visor
              user: visor
              password: hunter2-secret
              ssl:
                reject_unauthorized: true
                ca: /etc/ssl/certs/rds-combined-ca-bundle.pem
              pool:
                min: 0
                max: 10
        """
    )
    settings = _load(document["scheduler"]["storage"])
    assert settings.url() == "postgresql://visor:hunter2-secret@mydb.abc123.us-east-1.rds.amazonaws.com:5432/visor"
    assert settings.redacted_url() == "postgresql://visor:***@mydb.abc123.us-east-1.rds.amazonaws.com:5432/visor"
    assert settings.ssl is not None
    assert settings.ssl.enabled
    assert settings.ssl.ca == Path("/etc/ssl/certs/rds-combined-ca-bundle.pem")
    assert (settings.pool.min, settings.pool.max) == (0, 10)


FILE = {
    "driver": "postgresql",
    "connection": {
        "host": "file-host",
        "port": 6000,
        "database": "file_db",
        "user": "file_user",
        "password": "file-pass",
        "ssl": {"enabled": False, "reject_unauthorized": True},
        "pool": {"min": 1, "max": 4, "acquire_timeout": "10s"},
    },
}


@pytest.mark.parametrize(
    ("variable", "value", "attribute", "expected"),
    [
        ("DATABASE_DRIVER", "mysql", "driver", "mysql"),
        ("DATABASE_HOST", "env-host", "host", "env-host"),
        ("DATABASE_PORT", "7000", "port", 7000),
        ("DATABASE_NAME", "env_db", "database", "env_db"),
        ("DATABASE_USER", "env_user", "user", "env_user"),
        ("DATABASE_SSL", "true", "ssl.enabled", True),
        ("DATABASE_SSL_CA", "/env/ca.pem", "ssl.ca", Path("/env/ca.pem")),
        ("DATABASE_SSL_REJECT_UNAUTHORIZED", "false", "ssl.reject_unauthorized", False),
        ("DATABASE_POOL_MIN", "2", "pool.min", 2),
        ("DATABASE_POOL_MAX", "20", "pool.max", 20),
        ("DATABASE_POOL_ACQUIRE_TIMEOUT", "1m", "pool.acquire_timeout", timedelta(minutes=1)),
    ],
)
def test_each_variable_wins_over_the_file(variable: str, value: str, attribute: str, expected: object) -> None:
    def get(settings: StorageSettings) -> object:
        target: Any = settings
        for part in attribute.split("."):
            target = getattr(target, part)
        return target

    assert get(_load(FILE)) != expected
    assert get(_load(FILE, **{variable: value})) == expected
    assert get(_load(FILE, **{variable: ""})) == get(_load(FILE))  # empty counts as unset


def test_password_variable_wins_over_the_file() -> None:
    assert "file-pass" in _load(FILE).url()
    url = _load(FILE, DATABASE_PASSWORD="env-pass").url()
    assert make_url(url).password == "env-pass"


def test_ssl_cert_and_key_variables() -> None:
    settings = _load(FILE, DATABASE_SSL="1", DATABASE_SSL_CERT="/c.pem", DATABASE_SSL_KEY="/k.pem")
    assert settings.ssl is not None
    assert (settings.ssl.cert, settings.ssl.key) == (Path("/c.pem"), Path("/k.pem"))


def test_every_variable_is_covered() -> None:
    assert set(ENV_VARS) == {
        "DATABASE_URL",
        "DATABASE_DRIVER",
        "DATABASE_HOST",
        "DATABASE_PORT",
        "DATABASE_NAME",
        "DATABASE_USER",
        "DATABASE_PASSWORD",
        "DATABASE_SSL",
        "DATABASE_SSL_CA",
        "DATABASE_SSL_CERT",
        "DATABASE_SSL_KEY",
        "DATABASE_SSL_REJECT_UNAUTHORIZED",
        "DATABASE_POOL_MIN",
        "DATABASE_POOL_MAX",
        "DATABASE_POOL_ACQUIRE_TIMEOUT",
    }


def test_database_url_infers_the_driver_and_overrides_the_files_connection() -> None:
    settings = _load(FILE, DATABASE_URL="mysql://env:pw@env-host/env_db")
    assert settings.driver == "mysql"
    assert settings.url() == "mysql://env:pw@env-host/env_db"
    assert _load(DATABASE_URL="postgres://u@h/db").driver == "postgresql"
    assert _load(DATABASE_URL="mariadb://u@h/db").driver == "mysql"
    assert _load(DATABASE_URL="sqlite:////tmp/x.db").driver == "sqlite"
    assert _load(DATABASE_URL="mssql://u@h/db").driver == "mssql"


def test_env_ssl_refines_the_files_shorthand() -> None:
    settings = _load(_server(ssl=True), DATABASE_SSL_REJECT_UNAUTHORIZED="false")
    assert settings.ssl is not None
    assert (settings.ssl.enabled, settings.ssl.reject_unauthorized) == (True, False)
    off = _load(_server(ssl="false"))  # a string, as ${VAR} interpolation produces
    assert off.ssl is not None
    assert not off.ssl.enabled


@pytest.mark.parametrize(
    ("given", "seconds"),
    [("30s", 30), ("1500ms", 1.5), ("2m", 120), ("1h30m", 5400), ("45", 45), ("0.5", 0.5), (12, 12)],
)
def test_acquire_timeout_durations(given: object, seconds: float) -> None:
    settings = _load({"connection": {"pool": {"acquire_timeout": given}}})
    assert settings.engine_options()["pool_timeout"] == seconds


def test_pool_mapping() -> None:
    settings = _load(_server(pool={"min": 2, "max": 7}), DATABASE_POOL_ACQUIRE_TIMEOUT="5s")
    options = settings.engine_options()
    assert (options["pool_size"], options["max_overflow"], options["pool_timeout"]) == (7, 0, 5.0)


# -- parts -> URL ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("section", "url"),
    [
        ({"connection": {"filename": "/data/app.db"}}, "sqlite:////data/app.db"),
        ({"driver": "sqlite", "connection": {"filename": "./we?ird#name.db"}}, "sqlite:///./we%3Fird%23name.db"),
        ({"driver": "postgresql", "connection": {"host": "db", "database": "app"}}, "postgresql://db:5432/app"),
        (
            {"driver": "postgres", "connection": {"host": "db", "database": "app", "user": "u"}},
            "postgresql://u@db:5432/app",
        ),
        ({"driver": "mysql", "connection": {"host": "db", "database": "app", "user": "u"}}, "mysql://u@db:3306/app"),
        ({"driver": "mariadb", "connection": {"host": "db", "port": 3307, "database": "app"}}, "mysql://db:3307/app"),
        (
            {"driver": "mssql", "connection": {"host": "db", "database": "app", "user": "sa", "password": "pw"}},
            "mssql://sa:pw@db:1433/app?driver=ODBC%20Driver%2018%20for%20SQL%20Server",
        ),
        ({"driver": "mysql", "connection": {"host": "::1", "database": "app"}}, "mysql://[::1]:3306/app"),
        (
            {"driver": "postgresql", "connection": {"host": "/cloudsql/p:r:i", "database": "app", "user": "u"}},
            "postgresql://u@/app?host=%2Fcloudsql%2Fp%3Ar%3Ai",
        ),
    ],
)
def test_parts_to_url(section: dict[str, Any], url: str) -> None:
    settings = _load(section)
    assert settings.url() == url
    async_url(settings.url())  # the engine accepts it


def test_sqlite_filename_round_trips() -> None:
    settings = _load({"connection": {"filename": "./we?ird#name %.db"}})
    assert make_url(settings.url()).database == "./we?ird#name %.db"


@pytest.mark.parametrize("driver", ["postgresql", "mysql", "mssql"])
def test_special_characters_in_credentials_are_escaped(driver: str) -> None:
    connection = {"host": "db", "database": "my db", "user": "a@b:c", "password": PASSWORD}
    section = {"driver": driver, "connection": connection}
    url = _load(section).url()
    assert PASSWORD not in url
    escaped = "S3cr3t-P%40ss%3Aw%2Frd%20%25%2B%23%3F%26%3D"  # every reserved character, space and % included
    assert url.startswith(f"{driver}://a%40b%3Ac:{escaped}@db:")
    assert "/my%20db" in url
    parsed = make_url(url)
    assert (parsed.username, parsed.password, parsed.host, parsed.database) == ("a@b:c", PASSWORD, "db", "my db")
    assert async_url(url).password == PASSWORD
    redacted = _load(section).redacted_url()
    assert redacted.startswith(f"{driver}://a%40b%3Ac:***@db:")
    assert make_url(redacted).database == "my db"


def test_connection_string_wins_over_parts() -> None:
    section = _server(connection_string="postgresql://cs_user:cs-pass@cs-host:5433/cs_db", port=1)
    settings = _load(section, DATABASE_HOST="env-host")
    assert settings.url() == "postgresql://cs_user:cs-pass@cs-host:5433/cs_db"
    assert settings.redacted_url() == "postgresql://cs_user:***@cs-host:5433/cs_db"


def test_numbers_in_yaml_are_text_where_text_is_expected() -> None:
    settings = _load(_server(password=123456, user=42))
    assert make_url(settings.url()).password == "123456"
    assert make_url(settings.url()).username == "42"


# -- TLS -----------------------------------------------------------------------------------------------------


def test_ssl_true_requires_verified_tls_for_asyncpg() -> None:
    context = _load(_server(ssl=True)).engine_options()["connect_args"]["ssl"]
    assert isinstance(context, ssl.SSLContext)
    assert context.verify_mode == ssl.CERT_REQUIRED
    assert context.check_hostname


def test_reject_unauthorized_false_turns_verification_off() -> None:
    context = _load(_server(ssl={"reject_unauthorized": False})).engine_options()["connect_args"]["ssl"]
    assert isinstance(context, ssl.SSLContext)
    assert context.verify_mode == ssl.CERT_NONE
    assert not context.check_hostname


def test_ssl_false_disables_asyncpg_tls_and_unset_keeps_the_default() -> None:
    assert _load(_server(ssl=False)).engine_options()["connect_args"] == {"ssl": False}
    assert _load(_server()).engine_options()["connect_args"] == {}


def test_ssl_for_mysql() -> None:
    section = {"driver": "mysql", "connection": {"host": "db", "database": "app"}}
    context = _load(section, DATABASE_SSL="true").engine_options()["connect_args"]["ssl"]
    assert isinstance(context, ssl.SSLContext)
    assert context.verify_mode == ssl.CERT_REQUIRED
    assert _load(section, DATABASE_SSL="false").engine_options()["connect_args"] == {}


def test_ssl_settings_apply_to_a_connection_string() -> None:
    settings = _load(DATABASE_URL="postgresql://u@db/app?sslmode=disable", DATABASE_SSL="true")
    assert isinstance(settings.engine_options()["connect_args"]["ssl"], ssl.SSLContext)


def test_ssl_with_sqlite_is_an_error() -> None:
    message = _error(DATABASE_SSL="true")
    assert message == "DATABASE_SSL is on but the driver is sqlite, a local file without TLS; remove it"


@pytest.mark.parametrize(
    ("ssl_setting", "query"),
    [
        (True, {"Encrypt": "yes", "TrustServerCertificate": "no"}),
        ({"reject_unauthorized": False}, {"Encrypt": "yes", "TrustServerCertificate": "yes"}),
        (False, {"Encrypt": "no"}),
        (None, {}),
    ],
)
def test_mssql_tls_maps_to_query_parameters(ssl_setting: object, query: dict[str, str]) -> None:
    section = {"driver": "mssql", "connection": {"host": "db", "database": "app", "user": "sa", "ssl": ssl_setting}}
    settings = _load(section)
    url = make_url(settings.url())
    assert url.query == {"driver": "ODBC Driver 18 for SQL Server", **query}
    assert settings.engine_options()["connect_args"] == {}
    given = {"connection_string": "mssql://sa:pw@db/app", "ssl": ssl_setting}
    from_url = _load({"driver": "mssql", "connection": given})
    assert make_url(from_url.url()).query == query


def test_mssql_certificate_files_are_rejected() -> None:
    section = {"driver": "mssql", "connection": {"host": "db", "database": "app"}}
    message = _error(section, DATABASE_SSL_CA="/ca.pem")
    assert message.startswith("DATABASE_SSL_CA is not supported for mssql")


def _self_signed(directory: Path) -> tuple[Path, Path]:
    """A throwaway self-signed certificate and key: with `cryptography` if installed, else the openssl command."""
    cert, key = directory / "cert.pem", directory / "key.pem"
    try:
        from cryptography import x509  # type: ignore[import-not-found, unused-ignore]
        from cryptography.hazmat.primitives import hashes, serialization  # type: ignore[import-not-found, unused-ignore]
        from cryptography.hazmat.primitives.asymmetric import ec  # type: ignore[import-not-found, unused-ignore]
        from cryptography.x509.oid import NameOID  # type: ignore[import-not-found, unused-ignore]
    except ImportError:
        openssl = shutil.which("openssl")
        if openssl is None:
            pytest.skip("needs the cryptography package or the openssl command to make a test certificate")
        subprocess.run(
            [openssl, "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
             "-keyout", str(key), "-out", str(cert), "-days", "1", "-subj", "/CN=localhost"],
            check=True,
            capture_output=True,
        )  # fmt: skip
        return cert, key
    private = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.now(UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(private.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)  # usable as its own CA
        .sign(private, hashes.SHA256())
    )
    cert.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key.write_bytes(
        private.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return cert, key


def test_ca_cert_and_key_files_are_loaded(tmp_path: Path) -> None:
    cert, key = _self_signed(tmp_path)
    settings = _load(_server(ssl={"ca": str(cert), "cert": str(cert), "key": str(key)}))
    context = settings.engine_options()["connect_args"]["ssl"]
    assert isinstance(context, ssl.SSLContext)
    assert len(context.get_ca_certs()) == 1  # only our CA, not the system store
    assert context.verify_mode == ssl.CERT_REQUIRED


def test_key_that_does_not_match_the_certificate(tmp_path: Path) -> None:
    cert, _ = _self_signed(tmp_path)
    other = tmp_path / "other"
    other.mkdir()
    _, wrong_key = _self_signed(other)
    settings = _load(_server(), DATABASE_SSL_CERT=str(cert), DATABASE_SSL_KEY=str(wrong_key))
    with pytest.raises(StorageConfigError, match=f"^DATABASE_SSL_KEY: {wrong_key} is not a usable PEM private key"):
        settings.engine_options()


INVALID_PEM = "-----BEGIN CERTIFICATE-----\nthis is not base64 !!\n-----END CERTIFICATE-----\n"


def test_invalid_ca_file_names_the_setting(tmp_path: Path) -> None:
    bad = tmp_path / "ca.pem"
    bad.write_text(INVALID_PEM)
    settings = _load(_server(ssl={"ca": str(bad)}))
    with pytest.raises(StorageConfigError) as info:
        settings.engine_options()
    assert str(info.value).startswith(f"storage.connection.ssl.ca in scheduler.yaml: {bad} holds no usable PEM CA")


def test_invalid_client_certificate_or_key_names_the_setting(tmp_path: Path) -> None:
    bad = tmp_path / "bad.pem"
    bad.write_text(INVALID_PEM)
    with pytest.raises(StorageConfigError, match=f"^DATABASE_SSL_CERT: {bad} holds no usable PEM certificate"):
        _load(_server(), DATABASE_SSL_CERT=str(bad), DATABASE_SSL_KEY=str(bad)).create_engine()
    try:
        cert, _ = _self_signed(tmp_path)
    except pytest.skip.Exception:
        return
    with pytest.raises(StorageConfigError, match=f"^DATABASE_SSL_KEY: {bad} is not a usable PEM private key"):
        _load(_server(), DATABASE_SSL_CERT=str(cert), DATABASE_SSL_KEY=str(bad)).engine_options()


def test_missing_ca_file(tmp_path: Path) -> None:
    missing = tmp_path / "nope" / "ca.pem"
    settings = _load(_server(), DATABASE_SSL_CA=str(missing))  # loading does not read files; the engine does
    with pytest.raises(StorageConfigError) as info:
        settings.create_engine()
    assert str(info.value) == f"DATABASE_SSL_CA: cannot read {missing}: No such file or directory"


def test_cert_without_key() -> None:
    assert _error(_server(ssl={"cert": "/c.pem"})) == (
        "storage.connection.ssl.cert in scheduler.yaml and DATABASE_SSL_KEY (or storage.connection.ssl.key in "
        "scheduler.yaml) go together: give the client certificate and its key, or neither"
    )


# -- errors: one line, the right name, never the password -------------------------------------------------


@pytest.mark.parametrize(
    ("section", "env", "expected"),
    [
        (None, {"DATABASE_PORT": "abc", "DATABASE_DRIVER": "mysql"}, "DATABASE_PORT: expected a TCP port"),
        (_server(port=70000), {}, "storage.connection.port in scheduler.yaml: expected a TCP port"),
        (None, {"DATABASE_DRIVER": "oracle"}, "DATABASE_DRIVER: expected one of sqlite, postgresql, mysql, mssql"),
        ({"driver": "db2"}, {}, "storage.driver in scheduler.yaml: expected one of sqlite, postgresql"),
        (_server(), {"DATABASE_SSL": "maybe"}, "DATABASE_SSL: expected true or false (got 'maybe')"),
        (_server(ssl="maybe"), {}, "storage.connection.ssl in scheduler.yaml: expected true, false or a mapping"),
        (_server(), {"DATABASE_SSL_REJECT_UNAUTHORIZED": "x"}, "DATABASE_SSL_REJECT_UNAUTHORIZED: expected true or"),
        (None, {"DATABASE_POOL_MIN": "-1"}, "DATABASE_POOL_MIN: expected a number greater than or equal to 0"),
        (None, {"DATABASE_POOL_MAX": "lots"}, "DATABASE_POOL_MAX: expected a whole number (got 'lots')"),
        (None, {"DATABASE_POOL_ACQUIRE_TIMEOUT": "soon"}, "DATABASE_POOL_ACQUIRE_TIMEOUT: expected a duration"),
        (None, {"DATABASE_POOL_ACQUIRE_TIMEOUT": "0s"}, "DATABASE_POOL_ACQUIRE_TIMEOUT: expected a duration greater"),
        ({"connection": {"pool": {"acquire_timeout": float("inf")}}}, {}, "storage.connection.pool.acquire_timeout"),
        (
            {"connection": {"pool": {"min": 5}}},
            {"DATABASE_POOL_MAX": "2"},
            "storage.connection.pool.min in scheduler.yaml (5) must not be greater than DATABASE_POOL_MAX (2)",
        ),
        ({"connection": {"hots": "db"}}, {}, "storage.connection.hots in scheduler.yaml: unknown setting (expected"),
        ({"connection": {"pool": {"mx": 1}}}, {}, "storage.connection.pool.mx in scheduler.yaml: unknown setting"),
        ({"path": ".visor/schedules.json"}, {}, "storage.path in scheduler.yaml: unknown setting"),
        ({"connection": "db"}, {}, "storage.connection in scheduler.yaml: expected a mapping"),
        (
            None,
            {"DATABASE_HOST": "db"},
            "DATABASE_HOST is set but the driver is sqlite, which only uses storage.connection.filename in "
            "scheduler.yaml; set DATABASE_DRIVER (or storage.driver in scheduler.yaml) to postgresql, mysql or "
            "mssql, or remove DATABASE_HOST",
        ),
        (
            {"driver": "postgresql", "connection": {"database": "app"}},
            {},
            "DATABASE_HOST (or storage.connection.host in scheduler.yaml) is required for driver 'postgresql'",
        ),
        (None, {"DATABASE_DRIVER": "mysql", "DATABASE_HOST": "db"}, "DATABASE_NAME (or storage.connection.database"),
        (
            None,
            {"DATABASE_DRIVER": "mysql", "DATABASE_URL": "postgresql://u@db/app"},
            "DATABASE_DRIVER is 'mysql' but DATABASE_URL is a postgresql URL",
        ),
        (
            {"driver": "mysql", "connection": {"connection_string": "postgres://u@db/app"}},
            {},
            "storage.driver in scheduler.yaml is 'mysql' but storage.connection.connection_string in scheduler.yaml "
            "is a postgresql URL",
        ),
        (None, {"DATABASE_URL": "oracle://u@db/app"}, "DATABASE_URL: unsupported database URL scheme 'oracle'"),
        (None, {"DATABASE_URL": "./var/app.db"}, "DATABASE_URL: not a database URL"),
    ],
)
def test_errors_name_the_variable(section: dict[str, Any] | None, env: dict[str, str], expected: str) -> None:
    assert _error(section, **env).startswith(expected)


SECRET = "Hunter2-Very-Secret"


@pytest.mark.parametrize(
    ("section", "env"),
    [
        (_server(password=SECRET, port="x"), {}),
        (_server(password=SECRET), {"DATABASE_PORT": "nope"}),
        (None, {"DATABASE_PASSWORD": SECRET}),  # sqlite with a password
        (None, {"DATABASE_PASSWORD": SECRET, "DATABASE_DRIVER": "postgresql"}),  # host missing
        (None, {"DATABASE_URL": f"oracle://u:{SECRET}@db/app"}),
        (None, {"DATABASE_URL": f"postgresql://u:{SECRET}@db:notaport/app"}),
        (None, {"DATABASE_URL": f"postgresql://u:{SECRET}@extra@db/app"}),  # unescaped '@'
        (None, {"DATABASE_URL": f"postgresql://u:{SECRET}@db/app", "DATABASE_DRIVER": "mysql"}),
        (None, {"DATABASE_URL": f"postgresql://u:{quote(SECRET + '@/')}@db/app", "DATABASE_DRIVER": "mssql"}),
        (None, {"DATABASE_URL": f"postgresql+nope://u:{SECRET}@db/app"}),
        ({"connection": {"pasword": SECRET}}, {}),  # a typo'd key must not echo its value
        (_server(password=SECRET, ssl=SECRET), {}),
        (_server(password=SECRET, pool={"max": SECRET}), {}),
        (_server(), {"DATABASE_PASSWORD": SECRET, "DATABASE_POOL_MAX": SECRET}),
    ],
)
def test_errors_never_show_the_password(section: dict[str, Any] | None, env: dict[str, str]) -> None:
    message = _error(section, **env)
    assert SECRET not in message
    assert quote(SECRET, safe="") not in message
    assert "Hunter2" not in message


def test_certificate_errors_never_show_the_password(tmp_path: Path) -> None:
    settings = _load(_server(password=SECRET), DATABASE_SSL_CA=str(tmp_path / "missing.pem"))
    with pytest.raises(StorageConfigError) as info:
        settings.create_engine()
    assert SECRET not in str(info.value)


def test_redacted_url_and_repr_hide_the_password() -> None:
    for settings in (_load(_server(password=SECRET)), _load(DATABASE_URL=f"mysql://u:{SECRET}@db/app")):
        assert SECRET in settings.url()
        assert SECRET not in settings.redacted_url()
        assert ":***@" in settings.redacted_url()
        assert SECRET not in repr(settings)
        assert SECRET not in str(settings.model_dump())


def test_direct_construction_validates_too() -> None:
    with pytest.raises(ValueError, match="database is required for driver 'postgresql'"):
        StorageSettings(driver="postgresql", host="db")
    settings = StorageSettings(driver="postgresql", host="db", database="app", pool={"max": 3})  # type: ignore[arg-type]
    assert settings.url() == "postgresql://db:5432/app"


# -- the engine -----------------------------------------------------------------------------------------------


async def test_create_engine_applies_the_pool(tmp_path: Path) -> None:
    settings = _load(
        {"connection": {"filename": str(tmp_path / "a.db")}},
        DATABASE_POOL_MAX="1",
        DATABASE_POOL_ACQUIRE_TIMEOUT="200ms",
    )
    engine = settings.create_engine()
    try:
        async with engine.connect() as conn:
            assert (await conn.execute(text("SELECT 1"))).scalar() == 1
            with pytest.raises(exc.TimeoutError) as info:
                await engine.connect()  # max 1, no overflow: the second waits 0.2 s, then gives up
        message = settings.explain(info.value)
        assert message.startswith("pool of 1 connection exhausted after 0.2s waiting for a connection to sqlite:///")
        assert message.endswith("raise DATABASE_POOL_MAX or look for long transactions holding connections")
        assert explain(info.value, settings.url()) == message  # read from SQLAlchemy's message too
    finally:
        await engine.dispose()


def test_explain_pool_timeout_with_explicit_size() -> None:
    message = explain(exc.TimeoutError("timed out"), "postgresql://u:pw@db/app", pool_size=10, pool_timeout=30)
    assert message.startswith("pool of 10 connections exhausted after 30s waiting for a connection to postgresql")


async def test_engine_keeps_its_old_signature_and_takes_new_options(tmp_path: Path) -> None:
    engine = create_engine(f"sqlite:///{tmp_path / 'b.db'}", pool_size=2, max_overflow=0, pool_timeout=3)
    try:
        await ping(engine)
        assert engine.pool.size() == 1  # type: ignore[attr-defined]  # SQLite: one writer, one connection
        assert engine.pool.timeout() == 3  # type: ignore[attr-defined]
    finally:
        await engine.dispose()


def _parts(url: str) -> dict[str, str]:
    parsed = make_url(url)
    env = {
        "DATABASE_DRIVER": parsed.get_backend_name(),
        "DATABASE_HOST": parsed.host or "",
        "DATABASE_PORT": str(parsed.port or ""),
        "DATABASE_NAME": parsed.database or "",
        "DATABASE_USER": parsed.username or "",
    }
    if parsed.password:
        env["DATABASE_PASSWORD"] = parsed.password
    return env


async def _select_one(settings: StorageSettings) -> object:
    engine = settings.create_engine()
    try:
        async with engine.connect() as conn:
            return (await conn.execute(text("SELECT 1"))).scalar()
    finally:
        await engine.dispose()


async def _failure(settings: StorageSettings) -> str:
    engine = settings.create_engine()
    try:
        await ping(engine)
    except Exception as error:
        return settings.explain(error)
    finally:
        await engine.dispose()
    raise AssertionError("connecting unexpectedly worked")


@pytest.mark.postgresql
async def test_parts_connect_to_postgresql(postgres_url: str) -> None:
    settings = load_storage_settings(None, _parts(postgres_url))
    assert settings.driver == "postgresql"
    assert await _select_one(settings) == 1
    assert await _select_one(load_storage_settings(None, {**_parts(postgres_url), "DATABASE_SSL": "false"})) == 1


@pytest.mark.postgresql
async def test_ssl_settings_override_the_urls_sslmode(postgres_url: str) -> None:
    """The local server has no TLS: sslmode=require alone fails, DATABASE_SSL=false wins over it."""
    url = f"{postgres_url}?sslmode=require"
    if await _server_value(postgres_url, "SHOW ssl") != "off":
        pytest.skip("this PostgreSQL server has TLS on; the test is about one without")
    assert "does not support SSL/TLS" in await _failure(load_storage_settings(None, {"DATABASE_URL": url}))
    assert await _select_one(load_storage_settings(None, {"DATABASE_URL": url, "DATABASE_SSL": "false"})) == 1


@pytest.mark.mysql
async def test_parts_connect_to_mariadb(mysql_url: str) -> None:
    settings = load_storage_settings(None, _parts(mysql_url))
    assert settings.driver == "mysql"
    assert await _select_one(settings) == 1


async def _server_value(url: str, sql: str) -> str:
    engine = create_engine(url)
    try:
        async with engine.connect() as conn:
            return str((await conn.execute(text(sql))).scalar())
    finally:
        await engine.dispose()


@pytest.mark.postgresql
async def test_ssl_against_postgresql_without_tls_is_explained(postgres_url: str) -> None:
    env = {**_parts(postgres_url), "DATABASE_SSL": "true", "DATABASE_PASSWORD": SECRET}  # trust auth ignores it
    settings = load_storage_settings(None, env)
    if await _server_value(postgres_url, "SHOW ssl") != "off":
        pytest.skip("this PostgreSQL server has TLS on; the test is about one without")
    message = await _failure(settings)
    assert message.startswith(f"TLS/certificate problem connecting to postgresql server {settings.host}:")
    assert "the server does not support SSL/TLS but the storage settings require it" in message
    assert "rejected SSL upgrade" in message  # asyncpg's own words, kept at the end
    assert SECRET not in message


@pytest.mark.mysql
async def test_ssl_against_mariadb_without_tls_is_refused_not_downgraded(mysql_url: str) -> None:
    """aiomysql would quietly continue in plain text when the server offers no TLS; storage.engine refuses."""
    settings = load_storage_settings(None, {**_parts(mysql_url), "DATABASE_SSL": "true"})
    have_ssl = await _server_value(mysql_url, "SELECT @@have_ssl")
    if have_ssl == "YES":
        pytest.skip("this MariaDB server has TLS on; the test is about one without")
    message = await _failure(settings)
    assert message.startswith(f"TLS/certificate problem connecting to mysql server {settings.host}:")
    assert "the server does not support SSL/TLS but the storage settings require it" in message
