"""Text corpora as Hugging Face datasets, split, tokenized and cached.

    corpus = prepare_data("chitchat", vocab_size=6144, cache_dir="runs/cache")
    corpus.tokenizer                 # trained on the train split, cached as one tokenizer.json
    corpus.train, corpus.validation  # one long array of token ids per split (np.uint16)
    batches = BatchSampler(corpus.train, batch_size=8, context=256, rank=r, world_size=w)

`dataset` names one of:
- `chitchat` (the default): the 7,168 English dialogues of the `chitchat-dataset` package;
- `chatterbot:<language>` (e.g. `chatterbot:chinese`): the dialogues of `chatterbot-corpus`;
- a local file: `.txt` (one document per line; if the file has a blank line between two
  non-blank lines, documents are blank-line-separated paragraphs instead), `.jsonl`/`.json`
  (JSON lines with a `text` field) or `.parquet` (a `text` column);
- anything else is a Hugging Face Hub dataset (`name` or `name:config`, its `train` split, a
  `text` column). Without a network the Hub fails at once with what to do instead; a copy in
  the local HF cache still loads (offline mode is switched on when the Hub cannot be reached).

Dialogue format (both built-ins): a dialogue is one document; each speaker turn is its
utterances joined by "\\n" and closed by <|eot|>:

    "Hello\\nHow are you doing today?<|eot|>whats up MD\\nim doing good<|eot|>..."

Every document (dialogue or not) is followed by <|eod|> in the token stream. Documents are
stripped of surrounding whitespace; empty ones are dropped.

Split: by document, deterministic, independent of order: documents are ranked by a hash of
their key (the dialogue id for the built-ins, the text otherwise) and the first
round(val_fraction · n) (at least one) form the validation split (2% by default).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from trainer.data.batches import BatchSampler
from trainer.data.tokenizer import DEFAULT_VOCAB_SIZE, EOT, Tokenizer, train_tokenizer

if TYPE_CHECKING:  # imported where used: a run whose corpus is cached needs no `datasets`
    import datasets

DEFAULT_DATASET = "chitchat"
FILE_FORMATS = {".txt": "text", ".jsonl": "json", ".json": "json", ".parquet": "parquet"}
FORMAT_VERSION = 1
SPLITS = ("train", "validation")  # bump when the text format or the split changes: invalidates the caches
HUB_PROBE_TIMEOUT_S = 3.0

__all__ = [
    "DEFAULT_DATASET",
    "BatchSampler",
    "Corpus",
    "DatasetError",
    "chatterbot_dialogues",
    "chatterbot_languages",
    "chitchat_dialogues",
    "dataset_kinds",
    "default_cache_dir",
    "format_dialogue",
    "get_tokenizer",
    "load_corpus",
    "load_documents",
    "prepare_data",
    "split_documents",
    "tokenize",
]


class DatasetError(ValueError):
    """A dataset that cannot be loaded: the message names the problem and the fix."""


@dataclass
class Corpus:
    """A dataset ready to train on: its tokenizer and one token array per split."""

    dataset: str
    tokenizer: Tokenizer
    train: np.ndarray  # (n_train_tokens,) token ids, documents each followed by <|eod|>
    validation: np.ndarray  # (n_val_tokens,)
    documents: dict[str, int]  # documents per split


def prepare_data(
    dataset: str = DEFAULT_DATASET,
    vocab_size: int = DEFAULT_VOCAB_SIZE,
    cache_dir: str | Path | None = None,
    val_fraction: float = 0.02,
    tokenizer: Tokenizer | None = None,
) -> Corpus:
    """Load, split, get the tokenizer (trained on the train split, or cached, or the one given,
    e.g. from a checkpoint) and tokenize both splits (cached too). Under data parallelism, call
    it on rank 0 first and the other ranks after a barrier, so they find the caches. When the
    tokenizer and both token arrays are cached, the documents are not loaded at all."""
    root = _cache_root(dataset, val_fraction, cache_dir)
    tokenizer_path = root / f"tokenizer-{vocab_size}.json"
    if tokenizer is None and tokenizer_path.exists():
        tokenizer = Tokenizer.load(tokenizer_path)
    files = {s: root / f"tokens-{tokenizer.fingerprint()}-{s}.npy" for s in SPLITS} if tokenizer else {}
    counts = root / f"documents-{tokenizer.fingerprint()}.json" if tokenizer else None
    if files and counts.exists() and all(f.exists() for f in files.values()):
        arrays = {s: np.load(f, mmap_mode="r") for s, f in files.items()}
        return Corpus(dataset, tokenizer, arrays["train"], arrays["validation"], json.loads(counts.read_text()))
    splits = load_corpus(dataset, val_fraction)
    if tokenizer is None:
        tokenizer = get_tokenizer(splits["train"], tokenizer_path, vocab_size)
    arrays = {
        s: _cached_tokens(splits[s], tokenizer, root / f"tokens-{tokenizer.fingerprint()}-{s}.npy") for s in SPLITS
    }
    documents = {s: len(d) for s, d in splits.items()}
    _atomic_write(root / f"documents-{tokenizer.fingerprint()}.json", json.dumps(documents))
    return Corpus(dataset, tokenizer, arrays["train"], arrays["validation"], documents)


def default_cache_dir() -> Path:
    """$HYQUT_CACHE, else ~/.cache/hyqut."""
    return Path(os.environ.get("HYQUT_CACHE") or Path.home() / ".cache" / "hyqut")


# --- loading ---


def load_corpus(dataset: str = DEFAULT_DATASET, val_fraction: float = 0.02) -> datasets.DatasetDict:
    """The dataset's documents split into `train` and `validation` (columns `text`, maybe `id`)."""
    return split_documents(load_documents(dataset), val_fraction)


def load_documents(dataset: str = DEFAULT_DATASET) -> datasets.Dataset:
    """All documents of `dataset` (see the module docstring) as a Dataset with a `text` column."""
    if not isinstance(dataset, str) or not dataset.strip():
        raise DatasetError(f"dataset must be a name or a path, got {dataset!r} (change --dataset)")
    if dataset == "chitchat":
        return chitchat_dialogues()
    if dataset.startswith("chatterbot:"):
        return chatterbot_dialogues(dataset.partition(":")[2])
    if _is_local(dataset):
        return _load_file(Path(dataset).expanduser())
    return _load_hub(dataset)


def format_dialogue(turns: list[list[str]]) -> str:
    """A dialogue as one document: each turn's utterances joined by newlines, closed by <|eot|>.
    Blank utterances and turns are dropped."""
    lines = [[u.strip() for u in turn if u and u.strip()] for turn in turns]
    return "".join("\n".join(t) + EOT for t in lines if t)


def chitchat_dialogues() -> datasets.Dataset:
    """The chitchat-dataset's dialogues (7,168), one row each: `id` (its key), `text`. Each
    `messages` entry of the package's dataset.json is one speaker's turn, a list of utterances."""
    import chitchat_dataset
    import datasets

    path = Path(chitchat_dataset.__file__).with_name("dataset.json")
    with open(path, encoding="utf-8") as f:
        raw = json.load(f)
    ids = list(raw)
    texts = [format_dialogue([[u["text"] for u in turn] for turn in raw[k]["messages"]]) for k in ids]
    return datasets.Dataset.from_dict({"id": ids, "text": texts})


def chatterbot_dialogues(language: str) -> datasets.Dataset:
    """The dialogues of chatterbot-corpus in `language` (its data/<language>/*.yml files), one row
    each: `id` (file stem/index), `text`. Each statement of a conversation is one turn."""
    import chatterbot_corpus
    import datasets
    import yaml

    root = Path(chatterbot_corpus.__file__).parent / "data"
    languages = chatterbot_languages()
    if language not in languages:
        raise DatasetError(f"unknown chatterbot language {language!r}; choose one of {', '.join(languages)}")
    ids, texts = [], []
    for path in sorted((root / language).glob("*.yml")):
        with open(path, encoding="utf-8") as f:
            convs = (yaml.safe_load(f) or {}).get("conversations") or []
        for i, conv in enumerate(convs):
            text = format_dialogue([[str(s)] for s in conv if s is not None])
            if text:
                ids.append(f"{path.stem}/{i}")
                texts.append(text)
    return datasets.Dataset.from_dict({"id": ids, "text": texts})


def chatterbot_languages() -> list[str]:
    """The languages of chatterbot-corpus (its data/<language>/ folders): `chatterbot:<language>`."""
    import chatterbot_corpus

    return sorted(p.name for p in (Path(chatterbot_corpus.__file__).parent / "data").iterdir() if p.is_dir())


def dataset_kinds() -> str:
    """What --dataset takes, from the loaders above (its --help)."""
    try:
        languages = ", ".join(chatterbot_languages())
    except ImportError:  # chatterbot-corpus not installed
        languages = "chatterbot-corpus not installed"
    files = "/".join(FILE_FORMATS)
    return (
        f"{DEFAULT_DATASET} (built in, the default); chatterbot:LANG (LANG: {languages}); a local "
        f"{files} file; or a Hugging Face Hub name[:config]"
    )


def _is_local(name: str) -> bool:
    p = Path(name).expanduser()
    return p.suffix.lower() in FILE_FORMATS or name.startswith(("/", "./", "../", "~")) or p.exists()


def _load_file(path: Path) -> datasets.Dataset:
    import datasets

    fmt = FILE_FORMATS.get(path.suffix.lower())
    if not path.exists():
        raise DatasetError(f"dataset file {str(path)!r} does not exist (check --dataset)")
    if not path.is_file() or fmt is None:
        raise DatasetError(
            f"dataset {str(path)!r} is not a supported file; --dataset takes a {', '.join(FILE_FORMATS)} file, "
            "a built-in (chitchat, chatterbot:<language>) or a Hugging Face Hub name"
        )
    if path.stat().st_size == 0:
        raise DatasetError(f"dataset file {str(path)!r} is empty")
    options = {"sample_by": "paragraph" if _has_paragraphs(path) else "line"} if fmt == "text" else {}
    try:
        ds = datasets.load_dataset(fmt, data_files=str(path), split="train", **options)
    except Exception as e:  # malformed JSON, bad encoding, not parquet...: say which file and why
        raise DatasetError(f"could not read {str(path)!r} as {fmt}: {type(e).__name__}: {e}") from e
    return _clean(ds, str(path))


def _has_paragraphs(path: Path) -> bool:
    """Whether a blank line separates two non-blank lines somewhere in the file."""
    seen_text = blank_after_text = False
    with open(path, encoding="utf-8", errors="replace") as f:
        for line in f:
            if line.strip():
                if blank_after_text:
                    return True
                seen_text = True
            elif seen_text:
                blank_after_text = True
    return False


def _clean(ds: datasets.Dataset, where: str) -> datasets.Dataset:
    """Keep the `text` column (and `id`), strip texts, drop blank ones; reject a dataset with none."""
    if "text" not in ds.column_names:
        raise DatasetError(
            f"{where} has no `text` column (columns: {', '.join(ds.column_names)}); "
            "give each document in a field named `text`"
        )
    ds = ds.select_columns([c for c in ("id", "text") if c in ds.column_names])
    ds = ds.map(lambda b: {"text": ["" if t is None else str(t).strip() for t in b["text"]]}, batched=True)
    ds = ds.filter(lambda b: [bool(t) for t in b["text"]], batched=True)
    if len(ds) == 0:
        raise DatasetError(f"{where} has no text: every document is empty")
    return ds


def _load_hub(name: str) -> datasets.Dataset:
    """`name` or `name:config` from the Hub (its train split); fails fast and clearly offline."""
    import datasets

    path, _, config = name.partition(":")
    fix = (
        "pass a local .txt/.jsonl/.parquet file or a built-in (chitchat, chatterbot:<language>) "
        "to --dataset, or connect to the network"
    )
    offline = bool(datasets.config.HF_HUB_OFFLINE)
    reachable = not offline and _hub_reachable()
    try:
        with contextlib.nullcontext() if reachable else _offline_mode():  # offline: the HF cache only
            ds = datasets.load_dataset(path, config or None, split="train")
    except Exception as e:
        if not reachable:
            where = (
                "HF_HUB_OFFLINE is set"
                if offline
                else f"the Hugging Face Hub ({_endpoint()}) cannot be reached (no network?)"
            )
            raise DatasetError(
                f"dataset {name!r} is not a local file or a built-in, {where}, and the local "
                f"Hugging Face cache has no copy of it; {fix}"
            ) from None
        why = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise DatasetError(
            f"could not load {name!r} from the Hugging Face Hub ({why}); check the name, or {fix}"
        ) from None
    return _clean(ds, f"Hub dataset {name!r}")


def _endpoint() -> str:
    from huggingface_hub import constants

    return constants.ENDPOINT


def _hub_reachable() -> bool:
    """One HEAD request to the Hub endpoint with a short timeout (through any configured proxy):
    without this, datasets retries for ~25 s before giving up."""
    from huggingface_hub.utils import get_session

    try:
        get_session().head(_endpoint(), timeout=HUB_PROBE_TIMEOUT_S)
        return True
    except Exception:
        return False


@contextlib.contextmanager
def _offline_mode():
    """HF_HUB_OFFLINE=1 for the duration (datasets and huggingface_hub read it at import)."""
    import datasets
    from huggingface_hub import constants

    saved = datasets.config.HF_HUB_OFFLINE, constants.HF_HUB_OFFLINE
    datasets.config.HF_HUB_OFFLINE = constants.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        datasets.config.HF_HUB_OFFLINE, constants.HF_HUB_OFFLINE = saved


# --- splitting ---


def split_documents(ds: datasets.Dataset, val_fraction: float = 0.02) -> datasets.DatasetDict:
    """Deterministic train/validation split by document (see the module docstring)."""
    import datasets

    if not (isinstance(val_fraction, (int, float)) and 0 <= val_fraction < 1):
        raise DatasetError(f"val_fraction must be in [0, 1), got {val_fraction!r} (change --val-fraction)")
    n_val = max(1, round(val_fraction * len(ds))) if val_fraction > 0 else 0
    if n_val >= len(ds):
        raise DatasetError(
            f"the dataset has {len(ds)} document(s): too few to hold {n_val} out for validation "
            "(give more documents, or set --val-fraction 0)"
        )
    keys = list(ds["id"] if "id" in ds.column_names else ds["text"])
    order = sorted(range(len(ds)), key=lambda i: (_hash(str(keys[i])), i))
    val = sorted(order[:n_val])
    train = sorted(order[n_val:])
    return datasets.DatasetDict({"train": ds.select(train), "validation": ds.select(val)})


def _hash(key: str) -> bytes:
    return hashlib.blake2b(key.encode("utf-8"), digest_size=8).digest()


# --- tokenizer and token arrays, cached ---


def get_tokenizer(train: datasets.Dataset, path: str | Path, vocab_size: int = DEFAULT_VOCAB_SIZE) -> Tokenizer:
    """The tokenizer at `path` if there is one, else one trained on train["text"] and saved there."""
    path = Path(path)
    if path.exists():
        return Tokenizer.load(path)
    batches = (batch["text"] for batch in train.select_columns(["text"]).iter(batch_size=1000))
    tokenizer = train_tokenizer(batches, vocab_size, length=len(train))
    tokenizer.save(path)
    return tokenizer


def tokenize(ds: datasets.Dataset, tokenizer: Tokenizer, batch_size: int = 1000) -> np.ndarray:
    """Every document's ids followed by <|eod|>, concatenated in order: (n_tokens,), uint16 when
    the vocabulary fits, else int32."""
    eod = tokenizer.eod_id

    def encode(batch):
        ids = [ids + [eod] for ids in tokenizer.encode_batch(batch["text"])]
        return {"ids": ids, "n": [len(i) for i in ids]}

    mapped = ds.map(encode, batched=True, batch_size=batch_size, remove_columns=ds.column_names)
    dtype = np.uint16 if tokenizer.vocab_size <= 2**16 else np.int32
    out = np.empty(sum(mapped["n"]), dtype=dtype)
    pos = 0
    for batch in mapped.iter(batch_size=batch_size):
        for ids in batch["ids"]:
            out[pos : pos + len(ids)] = ids
            pos += len(ids)
    assert pos == len(out), f"token count changed while copying: {pos} != {len(out)}"
    return out


def _cached_tokens(ds: datasets.Dataset, tokenizer: Tokenizer, path: Path) -> np.ndarray:
    if path.exists():
        return np.load(path, mmap_mode="r")
    tokens = tokenize(ds, tokenizer)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp.npy")
    np.save(tmp, tokens)
    os.replace(tmp, path)
    return tokens


def _atomic_write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def _cache_root(dataset: str, val_fraction: float, cache_dir: str | Path | None) -> Path:
    """cache_dir/<slug>-<hash of the source's identity, the split and the format version>."""
    if dataset == "chitchat" or dataset.startswith("chatterbot:"):
        identity = dataset
    elif _is_local(dataset):  # a file is known by its path, size and modification time
        p = Path(dataset).expanduser().resolve()
        st = p.stat()
        identity = f"file:{p}:{st.st_size}:{st.st_mtime_ns}"
    else:
        identity = f"hub:{dataset}"
    key = hashlib.sha256(f"{identity}|{val_fraction!r}|{FORMAT_VERSION}".encode()).hexdigest()[:12]
    slug = re.sub(r"[^A-Za-z0-9_.-]+", "_", Path(dataset).name if _is_local(dataset) else dataset)[:40]
    return Path(cache_dir or default_cache_dir()) / f"{slug}-{key}"
