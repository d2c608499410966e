"""The test PostgreSQL server runs from the ``pgserver`` wheel when no system server is installed (issue 13).

``tests/engine/pg_server.py`` prefers the system's binaries and falls back to the ones bundled in ``pgserver`` (in
the ``test`` extra); ``MFM_TEST_PG_BIN=pgserver`` forces the bundled ones, which is what is checked here. Whether
the whole PostgreSQL suite passes with no system server at all is checked by hiding ``/usr/lib/postgresql`` (see
the hardening report): this file only proves the bundled server is a real, working PostgreSQL.
"""

from __future__ import annotations

import pytest

from tests.engine.pg_server import PgServer, find_bindir, pgserver_bindir


def test_the_bundled_server_is_a_real_postgresql(monkeypatch: pytest.MonkeyPatch) -> None:
    bundled = pgserver_bindir()
    assert bundled is not None, "the test extra brings pgserver (pip install -e '.[test]')"
    monkeypatch.delenv("MFM_PG_BINDIR", raising=False)
    monkeypatch.setenv("MFM_TEST_PG_BIN", "pgserver")
    assert find_bindir() == bundled
    server = PgServer.start()
    try:
        assert server.psql("SELECT version()").startswith("PostgreSQL ")
        assert server.psql("CREATE TABLE t (x int); INSERT INTO t VALUES (41), (1); SELECT sum(x) FROM t") == "42\n"
    finally:
        server.stop()


def test_an_unknown_binary_source_is_an_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MFM_PG_BINDIR", raising=False)
    monkeypatch.setenv("MFM_TEST_PG_BIN", "mock")
    with pytest.raises(RuntimeError, match="MFM_TEST_PG_BIN"):
        find_bindir()
