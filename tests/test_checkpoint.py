"""Run directories: what must match to resume (the model and what shapes the losses, not where the
circuits ran), and run.json files of the layout before the model/run split still load."""

import json
from pathlib import Path

import pytest
import torch

from trainer.generate import load
from trainer.model.circuits import Circuits
from trainer.model.config import from_preset
from trainer.model.convert import build_model
from trainer.model.transformer import Transformer
from trainer.run import checkpoint as ckpt
from trainer.run.config import TrainConfig

# run.json as trainer.main wrote it before the model/run split (commit bd6d7c2 and earlier)
OLD_MODEL = {
    "name": "tiny",
    "vocab_size": 6144,
    "d_model": 64,
    "n_layers": 2,
    "n_heads": 4,
    "ffn_hidden": 176,
    "context": 128,
    "norm_eps": 1e-05,
    "rope_theta": 10000.0,
    "quantum": "wq",
    "quantum_layers": None,
    "n_qubits": 4,
    "q_layers": 2,
    "entangler": "ring",
    "grad": "fd",
    "fd_delta": 0.01,
    "qbackend": "grpc://10.0.0.5:50051",
    "q_replicas": 1,
}
OLD_TRAIN = {"dataset": "chitchat", "steps": 300, "batch_size": 16, "grad_accum": 1, "lr": 0.003, "warmup": 30}
OLD_TRAIN |= {"weight_decay": 0.1, "clip": 1.0, "seed": 0, "world_size": 1}


def old_run(tmp_path: Path, corpus, qbackend: str = OLD_MODEL["qbackend"]) -> tuple[Path, Transformer]:
    """A run directory of the old layout, with weights of its model; and that model (circuits on `local`)."""
    run = tmp_path / "old"
    model = {**OLD_MODEL, "qbackend": qbackend}
    ckpt.write_run(run, {"model": model, "train": OLD_TRAIN}, corpus.tokenizer.to_json())
    branch = "classical" if qbackend == "classical" else "circuit"  # the control was a qbackend then
    cfg = from_preset("tiny", quantum="wq", n_qubits=4, branch=branch)
    torch.manual_seed(0)
    saved = build_model(cfg)
    ckpt.save_weights(run, saved, step=300)
    return run, saved


@pytest.mark.parametrize("qbackend, branch", [("grpc://10.0.0.5:50051", "circuit"), ("classical", "classical")])
def test_an_old_run_directory_loads_and_samples_locally(tmp_path, corpus, qbackend, branch):
    run, saved = old_run(tmp_path, corpus, qbackend)
    model, tokenizer = load(run)  # the circuits now run here (local), not on the old address
    assert model.cfg.branch == branch and model.cfg.quantum == "wq"
    tokens = torch.tensor([tokenizer.encode("hello")])
    with torch.no_grad():
        logits, _ = model(tokens)
        want, _ = saved(tokens)  # the model whose weights the old run holds
    assert torch.isfinite(logits).all()
    torch.testing.assert_close(logits, want)


def test_an_old_run_resumes_under_the_new_layout(tmp_path, corpus):
    run, _ = old_run(tmp_path, corpus)
    cfg = from_preset("tiny", quantum="wq", n_qubits=4)
    same = TrainConfig(circuits=Circuits(backend="local", grad="fd"))  # what the old run trained with, elsewhere
    assert ckpt.check_resumable(run, ckpt.run_record(cfg, same, world_size=1)) is False  # no ckpt/ yet: a start
    (run / ckpt.CKPT_DIR).mkdir()
    (run / ckpt.CKPT_DIR / "latest").write_text("step300")
    assert ckpt.check_resumable(run, ckpt.run_record(cfg, same, world_size=1)) is True
    other = TrainConfig(circuits=Circuits(grad="adjoint"))  # a different gradient: a different run
    with pytest.raises(ckpt.CheckpointError, match="train.grad: saved 'fd', now 'adjoint'"):
        ckpt.check_resumable(run, ckpt.run_record(cfg, other, world_size=1))


def test_where_circuits_run_is_recorded_but_not_matched(tmp_path, corpus):
    cfg = from_preset("tiny", quantum="wq", n_qubits=4)
    here = TrainConfig(circuits=Circuits(backend="local", grad="fd"))
    there = TrainConfig(circuits=Circuits(backend="grpc://10.0.0.7:50051", grad="fd"))
    run = tmp_path / "run"
    ckpt.write_run(run, ckpt.run_record(cfg, here, 1), corpus.tokenizer.to_json())
    saved = json.loads((run / ckpt.RUN_FILE).read_text())
    assert saved["circuits"] == {"backend": "local", "replicas": 1, "options": ""} and "qbackend" not in saved["model"]
    (run / ckpt.CKPT_DIR).mkdir()
    (run / ckpt.CKPT_DIR / "latest").write_text("step4")
    assert ckpt.check_resumable(run, ckpt.run_record(cfg, there, 1)) is True
