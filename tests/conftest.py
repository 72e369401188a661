import pytest

from worker.engine.config import preset
from worker.engine.train import train


@pytest.fixture(scope="session")
def test_model(tmp_path_factory):
    """A model trained with the `test` preset (seconds), shared by the tests that need one."""
    out = tmp_path_factory.mktemp("models") / "test-sparse"
    train(preset("test"), out)
    return out


# ---------------------------------------------------------------- backend (see tests/backend_support.py)


@pytest.fixture(scope="session")
def postgres_url():
    """A fresh PostgreSQL database for this test session, dropped at the end (CIRCUITS_TEST_POSTGRES
    names the server's admin database; the tests fail, not skip, when it is unreachable)."""
    from backend_support import create_postgres_database, drop_postgres_database

    url, name = create_postgres_database()
    yield url
    drop_postgres_database(name)


@pytest.fixture
def make_api(tmp_path):
    """make_api(**settings) -> Api: an app on a fresh data dir (SQLite unless database_url is given)."""
    import torch
    from backend_support import FAST, Api

    from backend.settings import Settings

    apis, threads = [], torch.get_num_threads()
    torch.set_num_threads(FAST["torch_threads"])  # here, in the main thread: see limit_torch_threads

    def make(**overrides):
        api = Api(Settings(**{"data_dir": tmp_path / "data", **FAST, **overrides}))
        apis.append(api)
        return api

    yield make
    for api in apis:
        api.close()
    torch.set_num_threads(threads)
