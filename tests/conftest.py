"""Shared fixtures: the built-in corpus and its tokenizer, prepared once per test session."""

from __future__ import annotations

import pytest

from trainer.data.corpus import Corpus, prepare_data


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("hyqut-cache")


@pytest.fixture(scope="session")
def corpus(cache_dir) -> Corpus:
    """chitchat with the default 6144-token BPE, trained on its train split (~15 s, once)."""
    return prepare_data("chitchat", cache_dir=cache_dir)


@pytest.fixture(scope="session")
def ray_address():
    """One local Ray instance for the whole session (started in the main thread: its processes
    die with the thread that starts them); subprocesses join it through $RAY_ADDRESS."""
    import ray

    from qworker.server.ray_pool import init_ray

    init_ray(None, num_cpus=8)  # as a server starts one; 8 logical CPUs: room for 8 replicas
    yield ray.get_runtime_context().gcs_address
    ray.shutdown()
