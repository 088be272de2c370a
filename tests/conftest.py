import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from feedbackgen.data.paths import data_dir, fixtures_dir  # noqa: E402


@pytest.fixture(scope="session")
def data_root():
    root = data_dir()
    if not root.is_dir():
        pytest.fail(f"shared data not found at {root}; set FEEDBACKGEN_DATA")
    return root


@pytest.fixture(scope="session")
def fixtures_root():
    root = fixtures_dir()
    if not root.is_dir():
        pytest.fail(f"shared fixtures not found at {root}; set FEEDBACKGEN_FIXTURES")
    return root
