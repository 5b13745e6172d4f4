"""The trainer end to end: the real deepspeed launcher on the CPU, checkpoints that resume exactly,
generation from a checkpoint, and one-line errors for bad input."""

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[1]
BIN = Path(sys.executable).parent
# small and quick, but the real thing: tiny preset, 10-qubit circuits in W_q of both layers
FAST = ["--model", "tiny", "--quantum", "wq", "--context", "64", "--batch-size", "4", "--eval-batches", "2"]


@pytest.fixture(scope="module")
def env(cache_dir):
    return {**os.environ, "DS_ACCELERATOR": "cpu", "HYQUT_CACHE": str(cache_dir), "PYTHONUNBUFFERED": "1"}


def train(env, out, *flags, launcher=None, check=True):
    cmd = [*(launcher or [sys.executable, "-m", "trainer.main"]), *FAST, "--out", str(out), *flags]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    if check:
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


def generate(checkpoint, *flags, stdin=None):
    cmd = [sys.executable, "-m", "trainer.generate", "--checkpoint", str(checkpoint), *flags]
    return subprocess.run(cmd, cwd=ROOT, input=stdin, capture_output=True, text=True, timeout=300)


def losses(out):
    return [json.loads(line)["loss"] for line in (out / "log.jsonl").read_text().splitlines()]


def validation_loss(run: Path, tokens, windows: int) -> float:
    """The mean loss of the run's saved weights on the first `windows` windows of the validation
    tokens, taken one after another (window i starts at token i x context), in plain torch without
    DeepSpeed: what the trainer's validation pass reports, computed another way."""
    import torch

    from trainer.generate import load

    model, _ = load(run)  # its circuits on `local`, as the run's
    context = model.cfg.context
    stream = torch.from_numpy(tokens.astype("int64"))
    with torch.no_grad():
        losses = [model(w[None, :-1], w[None, 1:])[1].item() for w in stream.unfold(0, context + 1, context)[:windows]]
    assert len(losses) == windows
    return sum(losses) / windows


@pytest.mark.slow
def test_deepspeed_launcher_one_rank_trains_and_generates(env, tmp_path, corpus):
    out = tmp_path / "run"
    train(
        env,
        out,
        "--steps",
        "6",
        "--save-every",
        "3",
        "--eval-every",
        "3",
        launcher=[str(BIN / "deepspeed"), "--num_gpus", "1", "trainer/main.py"],
    )
    summary = json.loads((out / "summary.json").read_text())
    assert summary["steps"] == 6 and summary["replicas_identical"]
    # the validation pass at step 6: --eval-batches 2 x --batch-size 4 windows (FAST), the saved weights
    assert summary["final_val_loss"] == pytest.approx(validation_loss(out, corpus.validation, 2 * 4), rel=1e-5)
    assert 0 < summary["quantum_share"] < 1 and summary["params"]["quantum_projections"] == 2
    assert (out / "loss.png").stat().st_size > 1000 and len(losses(out)) == 6
    reply = generate(out, "--prompt", "hi there", "--max-tokens", "8", "--temperature", "0")
    assert reply.returncode == 0 and reply.stdout.strip(), reply.stderr
    chat = generate(out, "--chat", "--max-tokens", "8", stdin="hello\nhow are you?\n\n")
    assert chat.returncode == 0 and chat.stdout.count("model:") == 2, chat.stderr


@pytest.mark.slow
def test_two_data_parallel_ranks_stay_identical(env, tmp_path):
    out = tmp_path / "run"
    train(
        env,
        out,
        "--steps",
        "4",
        "--save-every",
        "4",
        "--eval-every",
        "4",
        launcher=[str(BIN / "deepspeed"), "--num_gpus", "2", "trainer/main.py"],
    )
    summary = json.loads((out / "summary.json").read_text())
    assert summary["replicas_identical"] is True and summary["steps"] == 4
    run = json.loads((out / "run.json").read_text())
    assert run["train"]["world_size"] == 2


@pytest.mark.slow
def test_killed_run_resumes_with_identical_losses(env, tmp_path):
    flags = ["--steps", "10", "--save-every", "4", "--eval-every", "5"]
    whole = tmp_path / "whole"
    train(env, whole, *flags)
    cut = tmp_path / "cut"
    cmd = [sys.executable, "-m", "trainer.main", *FAST, "--out", str(cut), *flags]
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 600
    while time.time() < deadline and proc.poll() is None:  # kill it hard once it is past a checkpoint
        log = cut / "log.jsonl"
        if log.exists() and len(log.read_text().splitlines()) >= 6:
            proc.send_signal(signal.SIGKILL)
            break
        time.sleep(0.2)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the run ended before it could be killed"
    assert 6 <= len(losses(cut)) < 10
    resumed = train(env, cut, *flags)
    resumed_at = re.search(r"resuming .* from step (\d+)", resumed.stdout)
    assert resumed_at and int(resumed_at.group(1)) in (4, 8), resumed.stdout[-2000:]  # the last checkpoint
    assert losses(cut) == losses(whole)  # the same floats: the steps after the checkpoint were replayed
    assert (
        json.loads((cut / "summary.json").read_text())["final_val_loss"]
        == json.loads((whole / "summary.json").read_text())["final_val_loss"]
    )


@pytest.mark.parametrize(
    "flags,words",
    [
        (["--model", "huge"], "unknown model preset 'huge'"),
        (["--quantum", "wk"], "unknown quantum target 'wk'"),
        (["--quantum-layers", "7"], "quantum_layers [7] out of range"),
        (["--dataset", "/nonexistent/corpus.txt"], "/nonexistent/corpus.txt"),
        (["--steps", "0"], "--steps must be an integer >= 1, got 0"),
        (["--qbackend", "shots", "--grad", "adjoint"], "not supported by qbackend 'shots'"),
    ],
)
def test_bad_flags_give_one_line_errors(env, tmp_path, flags, words):
    proc = train(env, tmp_path / "run", "--steps", "2", *flags, check=False)
    assert proc.returncode != 0
    assert words in proc.stderr and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert not (tmp_path / "run").exists()  # nothing written


def test_empty_dataset_file(env, tmp_path):
    empty = tmp_path / "empty.txt"
    empty.write_text("\n\n")
    proc = train(env, tmp_path / "run", "--dataset", str(empty), check=False)
    assert proc.returncode != 0 and "empty" in proc.stderr and "Traceback" not in proc.stderr, proc.stderr[-2000:]


@pytest.mark.slow
def test_mismatched_or_corrupt_checkpoint_is_refused_and_kept(env, tmp_path):
    out = tmp_path / "run"
    train(env, out, "--steps", "2", "--save-every", "2", "--eval-every", "2")
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    other = train(env, out, "--steps", "2", "--n-qubits", "4", check=False)
    assert other.returncode != 0 and "holds a different run" in other.stderr and "n_qubits" in other.stderr
    (out / "run.json").write_text("{not json")
    corrupt = train(env, out, "--steps", "2", check=False)
    assert corrupt.returncode != 0 and "corrupt" in corrupt.stderr and "Traceback" not in corrupt.stderr
    (out / "run.json").write_bytes(before[out / "run.json"])
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before  # nothing overwritten
    gen = generate(tmp_path, "--prompt", "x")
    assert gen.returncode != 0 and "not a HyQuT checkpoint" in gen.stderr


def test_describe_150m_reports_counts_without_training(env):
    proc = subprocess.run(
        [sys.executable, "-m", "trainer.main", "--model", "150m", "--quantum", "wq", "--grad", "fd", "--describe"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    # counted by hand: 150m is 12 layers of d_model 1024, ffn 2368, vocabulary 6144, untied head
    layer = 4 * 1024 * 1024 + 3 * 1024 * 2368 + 2 * 1024
    classical = 2 * 6144 * 1024 + 12 * layer + 1024
    branch = 12 * (1024 * 20 + 20 + 40 + 10 * 1024 + 1024)  # W_q -> compress, theta, expand (with biases)
    hybrid = classical - 12 * 1024 * 1024 + branch
    assert f"parameters {hybrid:>19,}  (quantum=none: {classical:,};" in proc.stdout, proc.stdout
    assert f"quantum branch {branch:>13,}  in 12 projection(s); circuit angles 480" in proc.stdout, proc.stdout
    assert "training (fd, 121 runs)" in proc.stdout  # 1 + 2 (|theta| + 2 n_q) circuits a token


def test_metrics_endpoint_serves_training_metrics():
    import urllib.request

    from prometheus_client.parser import text_string_to_metric_families

    from trainer.run.metrics import TrainMetrics

    m = TrainMetrics(0)
    try:
        m.record_step(step=3, loss=2.5, seconds=0.5, quantum_seconds=0.2, tokens=1000)
        port = m.server.server_port
        text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    finally:
        m.close()
    got = {s.name: s.value for f in text_string_to_metric_families(text) for s in f.samples if not s.labels}
    # what the step recorded, and what follows from it: 0.2 s of 0.5 in the circuits, 1000 tokens in 0.5 s
    assert got["hyqut_train_step"] == 3 and got["hyqut_train_loss"] == 2.5
    assert got["hyqut_quantum_share"] == 0.2 / 0.5 and got["hyqut_tokens_per_second"] == 1000 / 0.5
    assert got["hyqut_tokens_total"] == 1000
    assert (got["hyqut_step_seconds_count"], got["hyqut_step_seconds_sum"]) == (1, 0.5)


def test_help_lists_every_choice_from_its_registry(env, tmp_path):
    """--help names what this install accepts, read from the registries: a backend plug-in installed
    by its entry point shows up in --qbackend's list without any change to the trainer."""
    from qworker.backends import BACKENDS
    from qworker.gradients import names
    from trainer.data.corpus import FILE_FORMATS, chatterbot_languages
    from trainer.model.config import BRANCHES, PRESETS, TARGETS
    from trainer.run.tracking import TRACKERS

    plugin = tmp_path / "plugin"
    info = plugin / "toy_device-1.0.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: toy-device\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text("[hyqut.backends]\ntoydevice = toy:Toy\n")
    proc = subprocess.run(
        [sys.executable, "-m", "trainer.main", "--help"],
        cwd=ROOT,
        env={**env, "PYTHONPATH": os.pathsep.join([str(ROOT), str(plugin)]), "COLUMNS": "400"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    lines, flag = {}, None  # each flag's help, its continuation lines joined
    for line in proc.stdout.splitlines():
        if line.strip().startswith("--"):
            flag = line.split()[0]
            lines[flag] = line
        elif flag and line.startswith(" "):
            lines[flag] += " " + line.strip()
        else:
            flag = None
    assert f"preset: {', '.join(PRESETS)}" in lines["--model"]
    assert f"one of {', '.join(TARGETS)};" in lines["--quantum"]
    assert f"one of {', '.join(BRANCHES)};" in lines["--branch"] and "one of ring, chain;" in lines["--entangler"]
    assert f"one of {', '.join(names())} " in lines["--grad"]
    backends = lines["--qbackend"]
    assert all(name in backends for name in [*BACKENDS, "qiskit", "braket", "pennylane", "toydevice"]), backends
    assert "ray (a local Ray pool); grpc://host:port" in backends
    assert all(ext in lines["--dataset"] for ext in FILE_FORMATS) and "chatterbot:LANG" in lines["--dataset"]
    assert ", ".join(chatterbot_languages()) in lines["--dataset"]
    assert f"any of {', '.join(TRACKERS)}" in lines["--report-to"]
