"""Data: the built-in corpora through `datasets`, local files, clear errors, the tokenizer's round
trip and cache, and the batch sampler's determinism, resumption and sharding."""

from __future__ import annotations

import json
import time

import datasets
import numpy as np
import pytest
import torch

from trainer.data.batches import BatchSampler
from trainer.data.corpus import DatasetError, get_tokenizer, load_corpus, load_documents, prepare_data, split_documents
from trainer.data.tokenizer import EOD, EOT, SPECIAL_TOKENS, Tokenizer, train_tokenizer

# --- loading and splitting ---


def test_chitchat_is_7168_dialogues_in_turns():
    ds = load_documents("chitchat")
    assert isinstance(ds, datasets.Dataset) and len(ds) == 7168
    text = ds[0]["text"]
    assert text.endswith(EOT) and text.count(EOT) >= 2 and EOD not in text


def test_split_is_deterministic_disjoint_and_order_free():
    a, b = load_corpus("chitchat"), load_corpus("chitchat")
    assert (len(a["train"]), len(a["validation"])) == (7025, 143)  # 2% of 7,168 dialogues
    assert a["validation"]["id"] == b["validation"]["id"]
    assert not set(a["train"]["id"]) & set(a["validation"]["id"])
    shuffled = split_documents(load_documents("chitchat").shuffle(seed=1))
    assert sorted(shuffled["validation"]["id"]) == sorted(a["validation"]["id"])


def test_local_files(tmp_path):
    lines = tmp_path / "lines.txt"
    lines.write_text("first doc\nsecond doc\n third doc \n\n\n", encoding="utf-8")  # trailing blanks: lines
    paragraphs = tmp_path / "paras.txt"
    paragraphs.write_text("para one\nstill one\n\n\npara two\n", encoding="utf-8")
    jsonl = tmp_path / "docs.jsonl"
    jsonl.write_text("".join(json.dumps({"text": t, "n": i}) + "\n" for i, t in enumerate(["a b", "中文", " c "])))
    parquet = tmp_path / "docs.parquet"
    datasets.Dataset.from_dict({"text": ["x", "y", ""], "other": [1, 2, 3]}).to_parquet(str(parquet))

    assert load_documents(str(lines))["text"] == ["first doc", "second doc", "third doc"]
    assert load_documents(str(paragraphs))["text"] == ["para one\nstill one", "para two"]
    assert load_documents(str(jsonl))["text"] == ["a b", "中文", "c"]
    assert load_documents(str(parquet))["text"] == ["x", "y"]  # blank documents dropped
    splits = load_corpus(str(jsonl))
    assert (len(splits["train"]), len(splits["validation"])) == (2, 1)


def test_clear_errors_fast(tmp_path):
    start = time.perf_counter()
    with pytest.raises(DatasetError, match="does not exist"):
        load_documents(str(tmp_path / "missing.txt"))
    empty = tmp_path / "empty.jsonl"
    empty.touch()
    with pytest.raises(DatasetError, match="is empty"):
        load_documents(str(empty))
    blank = tmp_path / "blank.txt"
    blank.write_text("\n  \n\n")
    with pytest.raises(DatasetError, match="no text"):
        load_documents(str(blank))
    no_text = tmp_path / "wrong.jsonl"
    no_text.write_text('{"body": "hi"}\n')
    with pytest.raises(DatasetError, match="no `text` column.*body"):
        load_documents(str(no_text))
    with pytest.raises(DatasetError, match="not a supported file"):
        load_documents(str(tmp_path))
    with pytest.raises(DatasetError, match="unknown chatterbot language 'klingon'.*chinese"):
        load_documents("chatterbot:klingon")
    with pytest.raises(DatasetError, match="too few"):
        load_corpus(str(_write(tmp_path / "one.txt", "only one document\n")))
    with pytest.raises(DatasetError, match="hyqut-test/no-such-dataset.*--dataset") as e:
        load_documents("hyqut-test/no-such-dataset")
    assert "Traceback" not in str(e.value) and e.value.__cause__ is None
    assert time.perf_counter() - start < 10


def _write(path, text):
    path.write_text(text, encoding="utf-8")
    return path


# --- tokenizer ---


def test_tokenizer_round_trips_english(corpus):
    tok = corpus.tokenizer
    assert tok.vocab_size == 6144
    assert [tok.pad_id, tok.eot_id, tok.eod_id] == [0, 1, 2]
    for text in load_corpus("chitchat")["validation"]["text"]:
        assert tok.decode(tok.encode(text)) == text
    odd = "  two  spaces\ttab\r\nCRLF <|eot|>caf\u00e9 \U0001f600 \x00 end "
    assert tok.decode(tok.encode(odd)) == odd
    assert tok.encode("hi" + EOT)[-1] == tok.eot_id


def test_tokenizer_round_trips_chinese(corpus, tmp_path):
    zh = load_corpus("chatterbot:chinese")
    assert len(zh["train"]) + len(zh["validation"]) > 400
    tok = get_tokenizer(zh["train"], tmp_path / "zh.json", vocab_size=2000)
    texts = list(zh["train"]["text"]) + list(zh["validation"]["text"])
    assert any("你好" in t for t in texts)
    for t in [*texts, "人工智能是工程和科学的分支。\n你呢?"]:
        assert tok.decode(tok.encode(t)) == t
        assert corpus.tokenizer.decode(corpus.tokenizer.encode(t)) == t  # unseen script: byte tokens
    reloaded = Tokenizer.from_json(tok.to_json())
    assert reloaded.encode(texts[0]) == tok.encode(texts[0])


def test_cached_tokenizer_is_reused(corpus, cache_dir):
    files = sorted(cache_dir.rglob("tokenizer-6144.json"))
    assert len(files) == 1
    stamp = files[0].stat().st_mtime_ns
    start = time.perf_counter()
    again = prepare_data("chitchat", cache_dir=cache_dir)
    assert time.perf_counter() - start < 10
    assert files[0].stat().st_mtime_ns == stamp, "the cached tokenizer was retrained"
    assert again.tokenizer.fingerprint() == corpus.tokenizer.fingerprint()
    np.testing.assert_array_equal(again.train, corpus.train)
    assert corpus.documents == {"train": 7025, "validation": 143}
    assert corpus.train.dtype == np.uint16 and int(corpus.train.max()) < corpus.tokenizer.vocab_size
    assert (corpus.train == corpus.tokenizer.eod_id).sum() == 7025  # one <|eod|> per dialogue


def test_a_cached_corpus_loads_without_its_documents(corpus, cache_dir, monkeypatch):
    """Every run starts from the cache: the documents are not loaded, `datasets` is not needed."""
    from trainer.data import corpus as data

    def refuse(*_args, **_kwargs):
        raise AssertionError("the documents were loaded although the corpus is cached")

    monkeypatch.setattr(data, "load_corpus", refuse)
    again = prepare_data("chitchat", cache_dir=cache_dir)
    assert again.tokenizer.fingerprint() == corpus.tokenizer.fingerprint()
    np.testing.assert_array_equal(again.validation, corpus.validation)
    assert again.documents == corpus.documents == {"train": 7025, "validation": 143}
    with pytest.raises(AssertionError, match="were loaded"):  # another vocabulary: not cached
        prepare_data("chitchat", vocab_size=4096, cache_dir=cache_dir)


def test_tokenizer_rejects_tiny_vocab():
    with pytest.raises(ValueError, match="--vocab-size"):
        train_tokenizer(["abc"], vocab_size=len(SPECIAL_TOKENS))


# --- batch sampler ---


def stream(n=10_000):
    return np.arange(n, dtype=np.int64)  # every token is its own position: windows identify themselves


def test_batches_are_shifted_blocks():
    x, y = next(BatchSampler(stream(), batch_size=4, context=16, seed=0))
    assert x.shape == y.shape == (4, 16) and x.dtype == torch.int64
    torch.testing.assert_close(y, x + 1)
    assert ((x[:, 1:] - x[:, :-1]) == 1).all()


def test_sampler_state_round_trip_across_epochs():
    a = BatchSampler(stream(2_000), batch_size=4, context=32, seed=7)
    assert a.steps_per_epoch == 15  # (2000 - 1 - 31) // 32 = 61 windows, 4 a step
    for _ in range(13):
        next(a)
    state = a.state_dict()
    after = [next(a)[0] for _ in range(6)]  # crosses into epoch 1
    assert a.epoch == 1
    b = BatchSampler(stream(2_000), batch_size=4, context=32, seed=0)
    b.load_state_dict(state)
    for want in after:
        torch.testing.assert_close(next(b)[0], want)
    c = BatchSampler(stream(2_000), batch_size=4, context=32, seed=8)
    assert not torch.equal(next(c)[0], next(BatchSampler(stream(2_000), batch_size=4, context=32, seed=7))[0])
    with pytest.raises(ValueError, match="context"):
        BatchSampler(stream(2_000), batch_size=4, context=16).load_state_dict(state)


def test_ranks_get_disjoint_windows():
    world = 3
    samplers = [
        BatchSampler(stream(), batch_size=2, context=16, seed=3, rank=r, world_size=world) for r in range(world)
    ]
    steps = samplers[0].steps_per_epoch
    seen = [set() for _ in range(world)]
    for _ in range(steps):
        for r, s in enumerate(samplers):
            seen[r].update(next(s)[0][:, 0].tolist())
    assert all(len(s) == 2 * steps for s in seen)
    assert not (seen[0] & seen[1] or seen[0] & seen[2] or seen[1] & seen[2])
    # the union is what one rank with the whole global batch sees
    single = BatchSampler(stream(), batch_size=2 * world, context=16, seed=3)
    assert set().union(*seen) == {int(t) for _ in range(steps) for t in next(single)[0][:, 0]}


def test_eval_order_and_too_little_data():
    s = BatchSampler(stream(100), batch_size=2, context=10, shuffle=False)
    assert next(s)[0][:, 0].tolist() == [0, 10] and next(s)[0][:, 0].tolist() == [20, 30]
    with pytest.raises(ValueError, match="lower --batch-size or --context"):
        BatchSampler(stream(100), batch_size=8, context=64)
