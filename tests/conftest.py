import os

import pytest


@pytest.fixture(autouse=True, scope="session")
def _isolated_cache(tmp_path_factory):
    """Tests use their own cache unless HARNESS_TEST_CACHE points at a shared one
    (CI sets it so the SmolLM2 conversion is done once)."""
    shared = os.environ.get("HARNESS_TEST_CACHE")
    os.environ["HARNESS_CACHE"] = shared or str(tmp_path_factory.mktemp("harness-cache"))
    yield
