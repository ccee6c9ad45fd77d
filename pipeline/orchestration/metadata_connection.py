"""Where a run's ML Metadata lives: a SQLite file (one person, one machine: the default) or a
MySQL/MariaDB server a team shares (TFX's convention for a store every machine sees, as Kubeflow
Pipelines deploys it), and the checks that make a bad connection say what to do.

    --metadata PATH                               SQLite (default PIPELINE_ROOT/metadata.sqlite)
    --metadata mysql://USER@HOST[:PORT]/DATABASE  MySQL or MariaDB; the password from the
        environment variable FATP_METADATA_PASSWORD, or from --metadata_password_file, never
        from a flag (flags land in shell history, process lists and reports)
    --create_metadata_database                    create DATABASE if it does not exist
    --metadata_ssl_ca CA.pem [--metadata_ssl_cert CERT.pem --metadata_ssl_key KEY.pem]
                                                  MySQL over TLS (MLMD's ssl_options); the
        server's certificate is checked against CA.pem, and its name against HOST, before a run

Before a run, `check()` connects as the run will and fails with words: the server unreachable,
the user or password refused, a database that does not exist (created only when asked), or a
store whose MLMD schema is another ml-metadata release's (refused, naming both versions: MLMD
would refuse it too, and a silent migration would break the other release's users).

Concurrent runs on one MySQL/MariaDB store: `retry_restarted_transactions()` makes MLMD's client
retry a call the server rolled back with "try restarting transaction" (MariaDB >= 11.6's
snapshot isolation, errno 1020, reaches Python as an InternalError, which MLMD retries only as
ABORTED): each MLMD call is one transaction, rolled back on error, so a retry repeats it whole.

The password is only in the ConnectionConfig handed to TFX; `hidden_in_logs()` blanks it out of
every log record while a run is on (TFX's LocalDagRunner logs its deployment config, connection
included, at INFO).
"""
from __future__ import annotations

import contextlib
import functools
import json
import logging
import os
import re
import sqlite3
import ssl
import tempfile
import urllib.parse
from dataclasses import dataclass, field

from ml_metadata.proto import metadata_store_pb2

PASSWORD_ENV = "FATP_METADATA_PASSWORD"
DEFAULT_PORT = 3306
SCHEME = "mysql"
USAGE = f"a SQLite file, or {SCHEME}://USER@HOST[:PORT]/DATABASE"

log = logging.getLogger("fatp.metadata")


class MetadataError(Exception):
    """A store that cannot be used, said in words for the user (no traceback)."""


@dataclass(frozen=True)
class Store:
    """A store to connect to. `config` holds the password: print `where`, never `config`."""
    config: metadata_store_pb2.ConnectionConfig = field(repr=False)
    where: str
    password_from: str = ""      # what the password was read from, for messages ("": none given)

    def __str__(self) -> str:
        return self.where

    @property
    def is_mysql(self) -> bool:
        return self.config.WhichOneof("config") == "mysql"


@dataclass(frozen=True)
class Tls:
    """TLS for a MySQL store: PEM files. `ca` is checked before a run (chain and host name, by
    PyMySQL); `verify_in_mlmd` asks ML Metadata's own client to check it on every connection too."""
    ca: str = ""
    cert: str = ""
    key: str = ""
    verify_in_mlmd: bool = False

    def __bool__(self) -> bool:
        return bool(self.ca or self.cert or self.key or self.verify_in_mlmd)


def add_flags(ap, default_help: str = "PIPELINE_ROOT/metadata.sqlite") -> None:
    ap.add_argument("--metadata", help=f"ML Metadata: {USAGE} (default: {default_help}); for MySQL the "
                                       f"password comes from ${PASSWORD_ENV} or --metadata_password_file")
    ap.add_argument("--metadata_password_file", help="a file holding the MySQL password (one line)")
    ap.add_argument("--create_metadata_database", action="store_true",
                    help="create the MySQL database named in --metadata if it does not exist")
    ap.add_argument("--metadata_ssl_ca", default="",
                    help="MySQL over TLS: the CA certificate (PEM) that signed the server's; the server's certificate "
                         "is checked against it, and its name against HOST, before a run")
    ap.add_argument("--metadata_ssl_cert", default="",
                    help="MySQL over TLS: this client's certificate (PEM), for an account that REQUIREs X509")
    ap.add_argument("--metadata_ssl_key", default="", help="the private key (PEM) of --metadata_ssl_cert")
    ap.add_argument("--metadata_ssl_verify_server_cert", action="store_true",
                    help="ML Metadata's own client checks the server's certificate on every connection too (its "
                         "check, ml-metadata 1.21, refuses a server addressed by IP address, BUILD_NOTES.md)")


def sqlite(path: str) -> Store:
    from tfx.orchestration import metadata

    path = os.path.abspath(path)
    return Store(metadata.sqlite_metadata_connection_config(path), where=path)


def _password(password_file: str | None, environ) -> tuple[str, str]:
    if password_file:
        try:
            with open(password_file, encoding="utf-8") as f:
                return f.read().rstrip("\r\n"), f"the file {password_file}"
        except OSError as e:
            raise MetadataError(f"cannot read --metadata_password_file {password_file}: {e.strerror}") from None
    if environ.get(PASSWORD_ENV) is not None:
        return environ[PASSWORD_ENV], f"${PASSWORD_ENV}"
    return "", ""


def _tls_options(config: metadata_store_pb2.ConnectionConfig, tls: Tls) -> None:
    for flag, path in (("ca", tls.ca), ("cert", tls.cert), ("key", tls.key)):
        if path and not os.access(path, os.R_OK):
            raise MetadataError(f"--metadata_ssl_{flag} {path}: no such file, or not readable")
    if bool(tls.cert) != bool(tls.key):
        raise MetadataError("--metadata_ssl_cert and --metadata_ssl_key go together (a client certificate and its key)")
    if tls.verify_in_mlmd and not tls.ca:
        raise MetadataError("--metadata_ssl_verify_server_cert needs --metadata_ssl_ca (the CA to check against)")
    o = config.mysql.ssl_options
    o.ca, o.cert, o.key = (os.path.abspath(p) if p else "" for p in (tls.ca, tls.cert, tls.key))
    o.verify_server_cert = tls.verify_in_mlmd


def mysql(uri: str, password_file: str | None = None, environ=None, tls: Tls = Tls()) -> Store:
    """A Store from mysql://USER@HOST[:PORT]/DATABASE, through TFX's mysql_metadata_connection_config."""
    from tfx.orchestration import metadata

    u = urllib.parse.urlsplit(uri)
    if u.password is not None:
        raise MetadataError(f"--metadata must not hold the password (it would land in shell history and logs): "
                            f"use {SCHEME}://USER@HOST[:PORT]/DATABASE and set ${PASSWORD_ENV} or "
                            "--metadata_password_file")
    database = u.path.lstrip("/")
    try:
        port = u.port or DEFAULT_PORT
    except ValueError:
        raise MetadataError(f"--metadata {uri}: the port is not a number") from None
    if not u.hostname or not u.username or not database or "/" in database or u.query or u.fragment:
        raise MetadataError(f"--metadata {uri}: expected {SCHEME}://USER@HOST[:PORT]/DATABASE")
    password, source = _password(password_file, os.environ if environ is None else environ)
    config = metadata.mysql_metadata_connection_config(
        host=u.hostname, port=port, database=database, username=urllib.parse.unquote(u.username),
        password=password)
    config.mysql.skip_db_creation = True     # MLMD would create a missing database silently
    if tls:
        _tls_options(config, tls)
    where = f"{SCHEME}://{u.username}@{u.hostname}:{port}/{database}"
    return Store(config, where=where, password_from=source)


def from_flags(metadata: str | None, default_sqlite: str, password_file: str | None = None,
               environ=None, tls: Tls = Tls()) -> Store:
    """The Store --metadata names (None: the SQLite default)."""
    if metadata and metadata.startswith(SCHEME + "://"):
        return mysql(metadata, password_file, environ, tls)
    if tls:
        raise MetadataError("--metadata_ssl_* apply to a MySQL store (--metadata mysql://...), not to SQLite")
    if not metadata:
        return sqlite(default_sqlite)
    if "://" in metadata:
        raise MetadataError(f"--metadata {metadata}: ML Metadata is {USAGE}")
    return sqlite(metadata)


def from_args(args, default_sqlite: str) -> Store:
    tls = Tls(args.metadata_ssl_ca, args.metadata_ssl_cert, args.metadata_ssl_key, args.metadata_ssl_verify_server_cert)
    return from_flags(args.metadata, default_sqlite, args.metadata_password_file, tls=tls)


# ---------------------------------------------------------------------------------------------- checks

@functools.cache
def library_schema_version() -> int:
    """The MLMD schema version this ml-metadata writes: read from a store it creates, not hard-coded."""
    from ml_metadata.metadata_store import metadata_store

    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "probe.sqlite")
        cfg = metadata_store_pb2.ConnectionConfig()
        cfg.sqlite.filename_uri = path
        metadata_store.MetadataStore(cfg)
        with contextlib.closing(sqlite3.connect(path)) as db:
            return int(db.execute("SELECT schema_version FROM MLMDEnv").fetchone()[0])


def _library() -> str:
    import ml_metadata

    return f"ml-metadata {ml_metadata.__version__}"


def check_schema(store: Store, found: int | None) -> None:
    """Refuse a store whose MLMD schema version is not this library's (None: a new, empty store)."""
    mine = library_schema_version()
    if found is None or found == mine:
        return
    if found < mine:
        todo = ("use the ml-metadata release that wrote it, or back the store up and migrate it on purpose "
                "(ml_metadata MetadataStore(config, enable_upgrade_migration=True), once, with every user's "
                "ml-metadata upgraded)")
    else:
        todo = ("it was written by a newer ml-metadata: upgrade this environment's ml-metadata (and TFX), or "
                "point --metadata at another store")
    raise MetadataError(f"the ML Metadata store {store.where} has schema version {found}, and this {_library()} "
                        f"uses schema version {mine}: refused, nothing was changed; {todo}")


def _check_sqlite(store: Store) -> None:
    path = store.config.sqlite.filename_uri
    if not os.path.exists(path):
        return
    try:
        with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as db:
            tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
            found = (int(db.execute("SELECT schema_version FROM MLMDEnv").fetchone()[0])
                     if "MLMDEnv" in tables else None)
    except sqlite3.DatabaseError as e:
        raise MetadataError(f"{path} is not an ML Metadata SQLite store ({e})") from None
    check_schema(store, found)


# MySQL client error numbers (PyMySQL raises the server's and the client's)
_ACCESS_DENIED, _DB_ACCESS_DENIED, _UNKNOWN_DB, _NO_TABLE = 1045, 1044, 1049, 1146
_TLS_REQUIRED = 3159      # ER_SECURE_TRANSPORT_REQUIRED (MySQL 8 and MariaDB: --require_secure_transport)


def _tls_kwargs(m) -> dict:
    """PyMySQL's TLS settings for the connection MLMD will make: none without ssl_options (MLMD then
    connects in clear, where PyMySQL would quietly use TLS), else the same files, and the server's
    certificate checked against the CA, its name against HOST."""
    o = m.ssl_options
    if not (o.ca or o.cert or o.key):
        return {"ssl_disabled": True}
    return {"ssl_ca": o.ca or None, "ssl_cert": o.cert or None, "ssl_key": o.key or None,
            "ssl_verify_cert": bool(o.ca), "ssl_verify_identity": bool(o.ca)}


def _check_mysql(store: Store, create_database: bool) -> None:
    import pymysql   # apache-beam[gcp]'s dependency, pinned in constraints.txt

    m = store.config.mysql
    server = f"{m.host}:{m.port}"
    try:
        conn = pymysql.connect(host=m.host, port=m.port, user=m.user, password=m.password, connect_timeout=15,
                               **_tls_kwargs(m))
    except ssl.SSLError as e:          # a certificate or key file PyMySQL could not use
        raise MetadataError(f"TLS to the ML Metadata server {server}: cannot use --metadata_ssl_* files: {e}") from None
    except pymysql.err.OperationalError as e:
        code, text = (e.args + ("",))[:2]
        if code == _ACCESS_DENIED:
            given = (f"the password was read from {store.password_from}" if store.password_from else
                     f"no password was given: set ${PASSWORD_ENV} or --metadata_password_file")
            o = m.ssl_options
            cert = "; or the account requires a client certificate (--metadata_ssl_cert/_key)" if o.ca and not o.cert else ""
            raise MetadataError(f"the ML Metadata server {server} refused user {m.user!r}: wrong user or password "
                                f"({given}{cert})") from None
        if code == _TLS_REQUIRED:
            raise MetadataError(f"the ML Metadata server {server} accepts only TLS connections: give "
                                "--metadata_ssl_ca (the CA certificate that signed the server's)") from None
        if "CERTIFICATE_VERIFY_FAILED" in str(text):
            raise MetadataError(f"TLS: the certificate of the ML Metadata server {server} is not trusted: not signed by "
                                f"--metadata_ssl_ca {m.ssl_options.ca}, or not issued for {m.host} ({text})") from None
        if code in (2003, 2005, 2006, 2013):
            raise MetadataError(f"cannot reach the ML Metadata server {server} ({text}): is it running, and may "
                                "this machine connect to that host and port? Check --metadata") from None
        raise MetadataError(f"the ML Metadata server {server} refused the connection: {text}") from None
    with contextlib.closing(conn):
        cur = conn.cursor()
        try:
            conn.select_db(m.database)
        except pymysql.err.OperationalError as e:
            if e.args[0] == _DB_ACCESS_DENIED:
                raise MetadataError(f"user {m.user!r} may not use database {m.database!r} on {server}: "
                                    f"GRANT ALL ON `{m.database}`.* TO '{m.user}'") from None
            if e.args[0] != _UNKNOWN_DB:
                raise MetadataError(f"database {m.database!r} on {server}: {e.args[-1]}") from None
            if not create_database:
                raise MetadataError(f"database {m.database!r} does not exist on {server}: create it "
                                    f"(CREATE DATABASE `{m.database}`), or rerun with --create_metadata_database "
                                    "(check the name first: every machine of the team must use the same one)") from None
            try:
                cur.execute(f"CREATE DATABASE `{m.database.replace('`', '``')}`")
            except pymysql.err.MySQLError as e:
                raise MetadataError(f"cannot create database {m.database!r} on {server}: {e.args[-1]}") from None
            log.warning("created database %r on %s for ML Metadata", m.database, server)
            return
        try:
            cur.execute("SELECT schema_version FROM MLMDEnv")
            row = cur.fetchone()
            found = int(row[0]) if row else None
        except pymysql.err.MySQLError as e:
            if e.args[0] != _NO_TABLE:
                raise MetadataError(f"cannot read the ML Metadata schema version in {store.where}: "
                                    f"{e.args[-1]}") from None
            found = None          # an empty database: MLMD creates its tables
    check_schema(store, found)


def check(store: Store, create_database: bool = False) -> None:
    """Fail with a MetadataError that says what to do, before a run starts, if `store` cannot be used."""
    if store.is_mysql:
        _check_mysql(store, create_database)
    else:
        _check_sqlite(store)


def open_store(store: Store, readonly: bool = False):
    """An ml_metadata MetadataStore on `store` (readonly: SQLite only; MySQL has no such mode)."""
    from ml_metadata.metadata_store import metadata_store

    config = metadata_store_pb2.ConnectionConfig()
    config.CopyFrom(store.config)
    if not store.is_mysql and readonly:
        if not os.path.exists(config.sqlite.filename_uri):
            raise MetadataError(f"no ML Metadata store at {config.sqlite.filename_uri}")
        config.sqlite.connection_mode = metadata_store_pb2.SqliteMetadataSourceConfig.READONLY
    retry_restarted_transactions()
    try:
        return metadata_store.MetadataStore(config)
    except RuntimeError as e:   # MLMD's errors carry no password
        raise MetadataError(f"cannot open the ML Metadata store {store.where}: {e}") from None


RESTART_MARK = "try restarting transaction"      # MySQL/MariaDB's words for a rolled-back transaction


@functools.cache
def retry_restarted_transactions() -> None:
    """Make every MetadataStore in this process (TFX's included) retry, with MLMD's own backoff and
    retry count, a call the server rolled back and asked to restart: MLMD retries AbortedError
    (a deadlock) but maps MariaDB's "Record has changed since last read ... try restarting
    transaction" (innodb_snapshot_isolation, default ON since 11.6) to InternalError, so two runs
    writing one store failed a component at random. Idempotent (cached)."""
    from ml_metadata import errors
    from ml_metadata.metadata_store import metadata_store

    plain = metadata_store.MetadataStore._pywrap_cc_call

    def call(self, method, request, response):
        try:
            return plain(self, method, request, response)
        except errors.InternalError as e:
            if RESTART_MARK not in str(e):
                raise
            log.info("ML Metadata: the server rolled back a transaction (%s); retrying it", str(e)[-120:])
            raise errors.AbortedError(str(e)) from e

    metadata_store.MetadataStore._pywrap_cc_call = call


# ---------------------------------------------------------------------------------------------- logs

# a `password` field of a text proto or a dict/JSON (TFX logs the connection config as a text proto,
# which escapes quotes, backslashes, newlines and non-ASCII, so the raw secret is not in the text)
_PASSWORD_FIELD = re.compile(r"""(['"]?password['"]?\s*[:=]\s*)("(?:[^"\\\n]|\\.)*"|'(?:[^'\\\n]|\\.)*')""")


def _secret_forms(secret: str) -> list[str]:
    """The secret as it may appear in text: raw, text-proto escaped (bytes and UTF-8), repr, JSON."""
    from google.protobuf import text_encoding

    forms = {secret, repr(secret)[1:-1], json.dumps(secret)[1:-1], json.dumps(secret, ensure_ascii=False)[1:-1],
             text_encoding.CEscape(secret.encode("utf-8"), as_utf8=False),
             text_encoding.CEscape(secret.encode("utf-8"), as_utf8=True)}
    return sorted((f for f in forms if f), key=len, reverse=True)


def masked(text: str, secret: str, mask: str = "********") -> str:
    """`text` with every password field blanked and the secret, in any of its escaped forms, replaced."""
    text = _PASSWORD_FIELD.sub(lambda m: f'{m.group(1)}"{mask}"', text)
    for form in _secret_forms(secret) if secret else ():
        text = text.replace(form, mask)
    return text


@contextlib.contextmanager
def hidden_in_logs(secret: str, mask: str = "********"):
    """While inside, every log record is formatted with password fields blanked and `secret` (in any
    escaped form) replaced by `mask`, its traceback included."""
    if not secret:
        yield
        return
    previous = logging.getLogRecordFactory()

    def factory(*a, **kw):
        record = previous(*a, **kw)
        try:
            message = record.getMessage()
        except Exception:  # noqa: BLE001 -- a broken record is the handler's to report
            return record
        clean = masked(message, secret, mask)
        if clean != message:
            record.msg, record.args = clean, None
        if record.exc_info:          # formatted here, masked, and kept where handlers look for it
            record.exc_text = masked(logging.Formatter().formatException(record.exc_info), secret, mask)
        return record

    logging.setLogRecordFactory(factory)
    try:
        yield
    finally:
        logging.setLogRecordFactory(previous)
