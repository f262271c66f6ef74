"""Fixtures of the gate tests: the PostgreSQL engine of the SQL traffic tests."""

import pytest

PG_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/test"


@pytest.fixture()
def pg_engine():
    import sqlalchemy as sa

    engine = sa.create_engine(PG_URL, connect_args={"connect_timeout": 3})
    try:
        engine.connect().close()
    except Exception as e:
        pytest.skip(f"PostgreSQL at 127.0.0.1:5432 (database test, user postgres) does not answer: {e}")
    yield engine
    engine.dispose()
