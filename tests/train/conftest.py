"""Every Stage 2 test runs on one thread (the fixture imported here is autouse for this folder);
``body_cache``: one sentence cache that carries an encoder body, shared by the module's tests."""

import pytest

from tests.helpers import build_body_cache
from tests.train.helpers import one_thread  # noqa: F401 (fixture)


@pytest.fixture(scope="module")
def body_cache(tmp_path_factory):
    return build_body_cache(tmp_path_factory.mktemp("body") / "cache")
