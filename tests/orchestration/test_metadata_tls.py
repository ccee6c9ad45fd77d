"""ML Metadata on MySQL over TLS (issue 31 §2): a MariaDB server started with a self-made CA
(tests/tls_certs.py) that refuses connections in clear (--require-secure-transport=ON), an account
that must also present a client certificate (REQUIRE X509), and a second CA that signed nothing of
the server's. Each case goes through `check()` (PyMySQL, before a run) and ML Metadata's own C++
client (`open_store`: the MetadataStore TFX builds from the same ConnectionConfig)."""
import secrets
from types import SimpleNamespace

import pytest

from pipeline.orchestration import metadata_connection as mc
from pipeline.orchestration import run_local
from tests import mariadb_server
from tests import tls_certs


@pytest.fixture(scope="module")
def tls_server(tmp_path_factory):
    paths, why = mariadb_server.find_server()
    if paths is None:
        from tests.conftest import missing_program
        missing_program(why)
    folder = tmp_path_factory.mktemp("mariadb-tls")
    certs = tls_certs.make(str(folder / "certs"))
    stranger = tls_certs.make(str(folder / "other"), name="another-ca")
    server = mariadb_server.MariaDB(folder, paths, options=(
        f"--ssl-ca={certs['ca']}", f"--ssl-cert={certs['server_cert']}", f"--ssl-key={certs['server_key']}",
        "--require-secure-transport=ON"))
    try:
        server.start()
        password = "pw-" + secrets.token_hex(8)
        server.add_user("fatp", password)
        server.sql(f"CREATE USER 'fatp_x509'@'%' IDENTIFIED BY '{password}' REQUIRE X509; "
                   "GRANT ALL ON *.* TO 'fatp_x509'@'%';")
        yield SimpleNamespace(server=server, password=password, certs=certs, stranger=stranger)
    finally:
        server.stop()


def _store(s, database, user="fatp", **tls):
    return mc.from_flags(f"mysql://{user}@{s.server.host}:{s.server.port}/{database}", "",
                         environ={mc.PASSWORD_ENV: s.password}, tls=mc.Tls(**tls))


def _round_trip(store) -> None:
    """Write a type and read it back through ML Metadata's own client."""
    from ml_metadata.proto import metadata_store_pb2

    mlmd = mc.open_store(store)
    mlmd.put_artifact_type(metadata_store_pb2.ArtifactType(name="TlsProbe"))
    assert [t.name for t in mlmd.get_artifact_types()] == ["TlsProbe"]


def test_in_clear_the_server_refuses_and_the_error_names_the_flag(tls_server):
    with pytest.raises(mc.MetadataError, match="accepts only TLS connections: give --metadata_ssl_ca"):
        mc.check(_store(tls_server, "mlmd_clear"), create_database=True)


def test_with_the_ca_the_store_is_checked_and_used_over_tls(tls_server):
    store = _store(tls_server, "mlmd_tls", ca=tls_server.certs["ca"])
    assert store.config.mysql.ssl_options.ca == tls_server.certs["ca"]
    mc.check(store, create_database=True)
    _round_trip(store)      # the server takes no connection in clear: this one was TLS


def test_a_server_certificate_another_ca_signed_is_refused_before_the_run(tls_server):
    with pytest.raises(mc.MetadataError, match="is not trusted: not signed by --metadata_ssl_ca .*another-ca"):
        mc.check(_store(tls_server, "mlmd_tls", ca=tls_server.stranger["ca"]), create_database=True)


def test_an_account_that_requires_a_client_certificate(tls_server):
    c = tls_server.certs
    with pytest.raises(mc.MetadataError, match="requires a client certificate"):
        mc.check(_store(tls_server, "mlmd_x509", user="fatp_x509", ca=c["ca"]), create_database=True)
    store = _store(tls_server, "mlmd_x509", user="fatp_x509", ca=c["ca"], cert=c["client_cert"], key=c["client_key"])
    mc.check(store, create_database=True)
    _round_trip(store)


def test_fatp_pipeline_takes_the_tls_flags_and_stops_in_words_on_a_bad_one(tls_server, tmp_path, monkeypatch, capsys):
    c, s = tls_server.certs, tls_server.server
    monkeypatch.setenv(mc.PASSWORD_ENV, tls_server.password)
    flags = ["--data_dir", str(tmp_path / "data"), "--pipeline_root", str(tmp_path / "p"), "--serving_root",
             str(tmp_path / "s"), "--metadata", f"mysql://fatp@{s.host}:{s.port}/mlmd_flags"]
    for extra, said in ((["--metadata_ssl_ca", tls_server.stranger["ca"]], "is not trusted"),
                        (["--metadata_ssl_ca", c["ca"], "--metadata_ssl_cert", c["client_cert"]], "go together"),
                        (["--metadata_ssl_ca", str(tmp_path / "missing.pem")], "missing.pem: no such file"),
                        (["--metadata_ssl_verify_server_cert"], "needs --metadata_ssl_ca")):
        assert run_local.run(flags + extra) == 2
        err = capsys.readouterr().err
        assert said in err and "Traceback" not in err, err
    assert not (tmp_path / "p").exists()
    args = SimpleNamespace(metadata="mysql://u@db/m", metadata_password_file=None, metadata_ssl_ca=c["ca"],
                           metadata_ssl_cert=c["client_cert"], metadata_ssl_key=c["client_key"],
                           metadata_ssl_verify_server_cert=True)
    o = mc.from_args(args, "unused").config.mysql.ssl_options
    assert (o.ca, o.cert, o.key, o.verify_server_cert) == (c["ca"], c["client_cert"], c["client_key"], True)
    with pytest.raises(mc.MetadataError, match="apply to a MySQL store"):
        mc.from_flags(str(tmp_path / "m.sqlite"), "", tls=mc.Tls(ca=c["ca"]))
