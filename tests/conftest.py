import os
from pathlib import Path

import pytest

from tests.helpers import build_cache, build_encoder_dir

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

SHARED_DATA = Path(os.environ.get("SGDD_SHARED_DATA", Path(__file__).resolve().parents[1] / ".." / "shared" / "data"))


@pytest.fixture(scope="session")
def tiny_encoder_dir(tmp_path_factory) -> Path:
    return build_encoder_dir(tmp_path_factory.mktemp("tiny-roberta"))


@pytest.fixture(scope="session")
def tiny_cache(tmp_path_factory) -> Path:
    """A read-only sentence cache (train/validation/test) for Stage 2 and 3 tests."""
    return build_cache(tmp_path_factory.mktemp("cache") / "tiny")


@pytest.fixture
def offline_hub(monkeypatch):
    """The Hub is unreachable (HF_HUB_OFFLINE), and the cached reachability probe asks again."""
    from sgdd import offline

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    offline.hub_reachable.cache_clear()
    yield
    offline.hub_reachable.cache_clear()


@pytest.fixture
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real data not found at {SHARED_DATA} (set SGDD_SHARED_DATA)")
    return SHARED_DATA
