"""ML Metadata's connection: --metadata as a SQLite file or mysql://USER@HOST[:PORT]/DATABASE, the
password from the environment or a file, and the checks before a run against a real MariaDB
server (tests/orchestration/conftest.py starts one): unreachable, refused, a missing database
(created only when asked), another ml-metadata's schema (refused, nothing changed)."""
import contextlib
import logging
import sqlite3

import pytest

from pipeline.orchestration import metadata_connection as mc
from pipeline.orchestration import run_local
from tests import mariadb_server

SECRET = "Zq-not-in-any-log-7731"


def test_sqlite_is_the_default(tmp_path):
    store = mc.from_flags(None, str(tmp_path / "p" / "metadata.sqlite"))
    assert not store.is_mysql
    assert store.config.sqlite.filename_uri == str(tmp_path / "p" / "metadata.sqlite")
    assert mc.from_flags("rel/m.sqlite", "unused").config.sqlite.filename_uri.endswith("/rel/m.sqlite")


def test_mysql_uri_builds_tfx_config_with_the_password_from_the_environment():
    store = mc.from_flags("mysql://fatp@db.example:3307/mlmd", "unused", environ={mc.PASSWORD_ENV: SECRET})
    m = store.config.mysql
    assert (m.host, m.port, m.database, m.user, m.password) == ("db.example", 3307, "mlmd", "fatp", SECRET)
    assert m.skip_db_creation      # MLMD must not create a database behind the user's back
    assert store.where == "mysql://fatp@db.example:3307/mlmd"
    assert SECRET not in str(store) and SECRET not in repr(store)
    assert mc.from_flags("mysql://fatp@db/mlmd", "", environ={}).config.mysql.port == mc.DEFAULT_PORT


def test_password_file_wins_over_the_environment(tmp_path):
    (tmp_path / "pw").write_text(SECRET + "\n")
    store = mc.from_flags("mysql://fatp@db/mlmd", "", str(tmp_path / "pw"), environ={mc.PASSWORD_ENV: "other"})
    assert store.config.mysql.password == SECRET
    with pytest.raises(mc.MetadataError, match="cannot read --metadata_password_file"):
        mc.from_flags("mysql://fatp@db/mlmd", "", str(tmp_path / "missing"), environ={})


def test_a_password_in_the_uri_is_refused_and_not_repeated():
    with pytest.raises(mc.MetadataError, match="must not hold the password") as e:
        mc.from_flags(f"mysql://fatp:{SECRET}@db/mlmd", "", environ={})
    assert SECRET not in str(e.value)


@pytest.mark.parametrize("uri, message", [
    ("gs://bucket/metadata.sqlite", "a SQLite file, or mysql://"),
    ("mysql://db.example/mlmd", "expected mysql://USER@HOST"),
    ("mysql://fatp@db.example/", "expected mysql://USER@HOST"),
    ("mysql://fatp@db.example:port/mlmd", "port is not a number"),
])
def test_bad_metadata_flags_say_the_expected_form(uri, message):
    with pytest.raises(mc.MetadataError, match=message):
        mc.from_flags(uri, "", environ={})


# ------------------------------------------------------------------------------------ a real server

def _store(mariadb, database, password=None):
    return mc.from_flags(mariadb.uri(database), "", environ={mc.PASSWORD_ENV: mariadb.password
                                                             if password is None else password})


def _databases(mariadb) -> set:
    return set(mariadb.server.sql("SHOW DATABASES").split())


def test_an_unreachable_server_is_named(mariadb):
    port = mariadb_server.free_port()      # nothing listens there
    store = mc.from_flags(f"mysql://fatp@127.0.0.1:{port}/mlmd", "", environ={mc.PASSWORD_ENV: mariadb.password})
    with pytest.raises(mc.MetadataError, match=f"cannot reach the ML Metadata server 127.0.0.1:{port}"):
        mc.check(store)


def test_wrong_credentials_are_refused_in_words(mariadb):
    with pytest.raises(mc.MetadataError, match=r"refused user 'fatp': wrong user or password \(the password "
                                                r"was read from \$FATP_METADATA_PASSWORD\)") as e:
        mc.check(_store(mariadb, "mlmd_creds", password=SECRET))
    assert SECRET not in str(e.value)
    no_password = mc.from_flags(mariadb.uri("mlmd_creds"), "", environ={})
    with pytest.raises(mc.MetadataError, match=r"refused user 'fatp': wrong user or password \(no password was "
                                                r"given: set \$FATP_METADATA_PASSWORD or --metadata_password_file\)"):
        mc.check(no_password)


def test_a_missing_database_is_created_only_when_asked(mariadb):
    store = _store(mariadb, "mlmd_new")
    with pytest.raises(mc.MetadataError, match="database 'mlmd_new' does not exist .*--create_metadata_database"):
        mc.check(store)
    assert "mlmd_new" not in _databases(mariadb)
    mc.check(store, create_database=True)
    assert "mlmd_new" in _databases(mariadb)
    mc.open_store(store)        # MLMD lays out its tables in it
    assert int(mariadb.server.sql("SELECT schema_version FROM MLMDEnv", "mlmd_new")) == mc.library_schema_version()
    mc.check(store)             # and it passes from now on


@pytest.mark.parametrize("offset", [-1, +1])
def test_another_mlmd_schema_is_refused_naming_both_versions(mariadb, offset):
    import ml_metadata

    database = f"mlmd_schema{offset + 1}"
    store = _store(mariadb, database)
    mc.check(store, create_database=True)
    mc.open_store(store)
    mine = mc.library_schema_version()
    mariadb.server.sql(f"UPDATE MLMDEnv SET schema_version = {mine + offset}", database)
    with pytest.raises(mc.MetadataError) as e:
        mc.check(store)
    assert f"has schema version {mine + offset}, and this ml-metadata {ml_metadata.__version__} uses schema " \
           f"version {mine}: refused, nothing was changed" in str(e.value)
    assert ("enable_upgrade_migration" in str(e.value)) == (offset < 0)
    assert int(mariadb.server.sql("SELECT schema_version FROM MLMDEnv", database)) == mine + offset


def test_a_sqlite_store_of_another_schema_is_refused(tmp_path):
    store = mc.sqlite(str(tmp_path / "metadata.sqlite"))
    mc.check(store)             # no file yet: a new store
    mc.open_store(store)
    mine = mc.library_schema_version()
    with contextlib.closing(sqlite3.connect(tmp_path / "metadata.sqlite")) as db:
        db.execute("UPDATE MLMDEnv SET schema_version = ?", (mine - 1,))
        db.commit()
    with pytest.raises(mc.MetadataError, match=f"has schema version {mine - 1}, and this ml-metadata"):
        mc.check(store)
    (tmp_path / "junk.sqlite").write_text("not a database " * 100)
    with pytest.raises(mc.MetadataError, match="is not an ML Metadata SQLite store"):
        mc.check(mc.sqlite(str(tmp_path / "junk.sqlite")))


def test_fatp_pipeline_stops_before_running_with_the_reason(mariadb, tmp_path, monkeypatch, capsys):
    """Exit status 2 and one line that says what to do, no traceback, nothing run."""
    monkeypatch.setenv(mc.PASSWORD_ENV, SECRET)
    flags = ["--data_dir", str(tmp_path / "data"), "--pipeline_root", str(tmp_path / "p"),
             "--serving_root", str(tmp_path / "s"), "--metadata", mariadb.uri("mlmd_run")]
    assert run_local.run(flags) == 2
    err = capsys.readouterr().err
    assert "error: the ML Metadata server" in err and "refused user 'fatp'" in err, err
    assert "Traceback" not in err and SECRET not in err
    monkeypatch.setenv(mc.PASSWORD_ENV, mariadb.password)
    assert run_local.run(flags) == 2
    assert "database 'mlmd_run' does not exist" in capsys.readouterr().err
    assert not (tmp_path / "p").exists()


def test_the_password_is_blanked_out_of_log_records(caplog):
    """Any logger's records (fatp-pipeline's own filters on absl's logger stay out of this test)."""
    config = mc.from_flags("mysql://fatp@db/mlmd", "", environ={mc.PASSWORD_ENV: SECRET}).config
    with caplog.at_level(logging.INFO, logger="fatp.test.tfx"), mc.hidden_in_logs(SECRET):
        logging.getLogger("fatp.test.tfx").info("Using deployment config:\n %s", config)   # what TFX logs
    assert SECRET not in caplog.text and "********" in caplog.text and "db" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="fatp.test.tfx"):
        logging.getLogger("fatp.test.tfx").info("after: %s", SECRET)
    assert SECRET in caplog.text       # the factory was put back


@pytest.mark.parametrize("secret", ['p"w\\é\'x', "new\nline", "tab\tand\\back", "ünïcödé密码", "plain-but-long-9f3"])
def test_a_password_of_any_characters_is_blanked_in_records_and_tracebacks(caplog, secret):
    """TFX logs the connection config as a text proto, which escapes quotes, backslashes, newlines and
    non-ASCII: the raw password is not in that text, so the field itself is blanked; a traceback
    that carries the password (in any escaped form) is masked too."""
    config = mc.from_flags("mysql://fatp@db/mlmd", "", environ={mc.PASSWORD_ENV: secret}).config
    forms = mc._secret_forms(secret)
    log = logging.getLogger("fatp.test.tfx")
    with caplog.at_level(logging.INFO, logger="fatp.test.tfx"), mc.hidden_in_logs(secret):
        log.info("Using connection config:\n %s", config.mysql)                      # what TFX logs
        log.info("as a dict: %s", {"host": "db", "password": secret})
        try:
            raise ValueError(f"cannot connect with {secret!r} / {secret}")
        except ValueError:
            log.exception("failed")
    text = caplog.text + "".join(r.exc_text or "" for r in caplog.records)
    assert 'password: "********"' in text and "db" in text and "ValueError: cannot connect with" in text
    for form in forms:
        assert form not in text, form


def test_a_call_the_server_rolled_back_to_restart_is_retried_and_other_errors_are_not(tmp_path, monkeypatch):
    """MariaDB >= 11.6 answers a concurrent writer with errno 1020 "Record has changed since last read
    in table 'Execution'; try restarting transaction", which MLMD raises as InternalError and does not
    retry (seen failing a component when two runs wrote one store). The server's answer is played by
    a stand-in for MLMD's C++ call (a real concurrent conflict cannot be made to happen on cue); the
    store, its retry loop and the second, real call are MLMD's own."""
    from ml_metadata import errors
    from ml_metadata.metadata_store import metadata_store
    from ml_metadata.metadata_store.pywrap.metadata_store_extension import metadata_store as serialized

    store = mc.open_store(mc.sqlite(str(tmp_path / "m.sqlite")))
    real, answers = serialized.GetArtifactTypes, []

    def flaky(handle, request):
        if answers:
            message, code = answers.pop(0)
            return [b"", message.encode(), code]
        return real(handle, request)

    monkeypatch.setattr(serialized, "GetArtifactTypes", flaky)
    monkeypatch.setattr(metadata_store.time, "sleep", lambda s: None)
    rolled_back = ("mysql_query SELECT ... returned an unexpected NULL result_set: errno: Record has changed since last "
                   "read in table 'Execution'; try restarting transaction")
    answers[:] = [(rolled_back, errors.INTERNAL), (rolled_back, errors.INTERNAL)]
    assert store.get_artifact_types() == [] and answers == []      # two rollbacks, then the real answer
    answers[:] = [("mysql_query failed: errno: 1146 Table 'Type' doesn't exist", errors.INTERNAL)]
    with pytest.raises(errors.InternalError, match="1146"):
        store.get_artifact_types()
    assert answers == []                                           # raised at once, not retried
