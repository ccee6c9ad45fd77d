"""`mariadb`: one throwaway MariaDB server for the session's ML Metadata tests (tests/mariadb_server.py),
with an account `fatp` whose password only the tests know; stopped at the end."""
import secrets
from types import SimpleNamespace

import pytest

from tests import mariadb_server


@pytest.fixture(scope="session")
def mariadb(tmp_path_factory):
    paths, why = mariadb_server.find_server()
    if paths is None:
        from tests.conftest import missing_program
        missing_program(why)
    server = mariadb_server.MariaDB(tmp_path_factory.mktemp("mariadb"), paths)
    try:
        server.start()
        password = "pw-" + secrets.token_hex(8)
        server.add_user("fatp", password)
        yield SimpleNamespace(server=server, user="fatp", password=password,
                              uri=lambda database: f"mysql://fatp@{server.host}:{server.port}/{database}")
    finally:
        server.stop()
