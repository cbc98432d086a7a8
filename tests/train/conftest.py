"""Every Stage 2 test runs on one thread (the fixture imported here is autouse for this folder)."""

from tests.train.helpers import one_thread  # noqa: F401 (fixture)
