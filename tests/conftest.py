"""Fixtures shared by the test files: tiny BcQLM models, as objects and as saved folders."""

import pytest

from .helpers import make_model_and_processor


@pytest.fixture(scope="session")
def model_and_processor():
    """A tiny BcQLM and its processor, weights drawn wide enough that greedy answers vary with the input; read-only."""
    return make_model_and_processor(seed=7)


@pytest.fixture(scope="session")
def bcqlm_folder(tmp_path_factory):
    """A tiny BcQLM saved as a checkpoint (weights of a freshly initialised scale), to load, quantize or train from."""
    folder = tmp_path_factory.mktemp("bcqlm")
    for part in make_model_and_processor(std=0.05):
        part.save_pretrained(folder)
    return folder
