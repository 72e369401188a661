import pytest

from worker.engine.config import preset
from worker.engine.train import train


@pytest.fixture(scope="session")
def test_model(tmp_path_factory):
    """A model trained with the `test` preset (seconds), shared by the tests that need one."""
    out = tmp_path_factory.mktemp("models") / "test-sparse"
    train(preset("test"), out)
    return out
