"""Shared fixtures: the built-in corpus and its tokenizer, prepared once per test session."""

from __future__ import annotations

import pytest

from trainer.data import Corpus, prepare_data


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("hyqut-cache")


@pytest.fixture(scope="session")
def corpus(cache_dir) -> Corpus:
    """chitchat with the default 6144-token BPE, trained on its train split (~15 s, once)."""
    return prepare_data("chitchat", cache_dir=cache_dir)
