"""Every benchmark in bench/ runs end to end at its smallest size, and its figures agree with what
is known independently of the benchmark: the wire format's sizes, the cost of each gradient
method, what each variant of a model computes. (The speeds themselves are for bench/, not tests.)"""

import importlib.util
import json
import math
import os
import re
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
from test_train import validation_loss  # a run's validation loss from its saved weights, in plain torch

from trainer.model.config import from_preset

ROOT = Path(__file__).parents[1]


def bench(*argv, env=None, timeout=300) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, *argv], cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    return proc


def rows(proc) -> list[dict]:
    return [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]


def load_study(monkeypatch):
    """bench/study.py as a module (its sibling bench/validation.py importable, as when run as a script)."""
    monkeypatch.syspath_prepend(str(ROOT / "bench"))
    spec = importlib.util.spec_from_file_location("study", ROOT / "bench" / "study.py")
    study = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "study", study)  # dataclasses look their module up there
    spec.loader.exec_module(study)
    return study


@pytest.mark.slow
def test_vqc_rows_measure_or_say_why_not():
    out = rows(bench("bench/vqc.py", "--quick", "--json"))  # the bench itself checks the peer computes our circuit
    assert {r["backend"] for r in out} == {"pennylane", "local", "qulacs", "shots"}
    for r in out:
        assert r["status"] == "ok" or (r["status"] == "skipped" and "budget" in r["note"]), r
    local = {r["method"]: r for r in out if r["backend"] == "local" and r["status"] == "ok"}
    assert {"adjoint", "shift", "fd", "spsa"} <= set(local)
    for method in ("shift", "fd"):  # the batch evaluated by its structure: fewer than its 121 circuits
        assert local[method]["forward_pass_bound"] == 121
        assert 1 < local[method]["forward_passes"] < 121, local[method]


@pytest.mark.slow
def test_vqc_contended_measures_each_cell_twice():
    out = rows(bench("bench/vqc.py", "--quick", "--json", "--backends", "local", "--contended"))
    measured = [r for r in out if r["backend"] == "local" and r["status"] == "ok"]
    assert len(measured) == 5  # forward, adjoint, shift, fd, spsa
    for r in measured:  # the same N both times: the ratio of the times is the ratio of the two rates
        assert r["contended_circuits_per_s"] is not None, r  # measured beside the competitor too (else: its note)
        assert r["contended_circuits_per_s"] > 0 and r["circuits_per_s"] > 0, r
        quiet_over_busy = r["contended_circuits_per_s"] / r["circuits_per_s"]
        assert r["contended_vs_quiet"] == pytest.approx(quiet_over_busy, rel=1e-2, abs=1e-3), r


@pytest.mark.slow
def test_train_step_costs_follow_the_gradient_methods():
    out = rows(bench("bench/train_step.py", "--models", "tiny", "--steps", "1", "--batch", "2", "--json"))
    cells = {(r["quantum"], r["grad"]): r for r in out}
    assert set(cells) == {("none", "-"), ("wq", "adjoint"), ("wgate", "adjoint"), ("wq", "fd")}
    classical = cells["none", "-"]
    for r in out:
        assert r["tokens_per_step"] == 2 * from_preset("tiny").context  # batch 2 x tiny's context
        assert r["tokens_per_s"] == pytest.approx(r["tokens_per_step"] / r["step_s"])
        assert r["ratio_vs_classical"] == pytest.approx(r["tokens_per_s"] / classical["tokens_per_s"])
    assert classical["quantum_share"] == 0  # no circuit, no circuit time
    adjoint, fd = cells["wq", "adjoint"], cells["wq", "fd"]
    assert 0 < adjoint["quantum_share"] < fd["quantum_share"] < 1  # fd: 121 circuit runs a token, adjoint ~3
    assert fd["tokens_per_s"] < adjoint["tokens_per_s"]


@pytest.mark.slow
def test_service_figures_match_the_wire_format():
    n = 256
    out = rows(bench("bench/service.py", "--tokens", str(n), "--rounds", "1", "--json"))
    paced = "service, 1 replica, H200 pace"  # bench/paced.py's replica: exact results at an H200's pace
    paths = {"in-process", "service, 1 replica, dense", "service, 1 replica", "service, 2 replicas", paced}
    by_grad = {r["grad"]: r for r in out if "grad" in r}
    assert set(by_grad) == {"adjoint", "fd", "shift"}
    # float32 payload per token of one layer's step (docs/design.md, "The wire contract"), 10 qubits:
    # adjoint: angles out, <Z> back; angles and grad_out out, the angles' VJP back
    # fd, shift kept: angles out, <Z> (and a handle) back; grad_out out, the angles' VJP back
    # fd, shift dense: angles out, <Z> back; angles out, the Jacobians back (10 x (40 + 20) values)
    adjoint, kept, dense = 4 * (20 + 10 + 20 + 10 + 20), 4 * (20 + 10 + 10 + 20), 4 * (20 + 10 + 20 + 10 * 60)
    for grad, r in by_grad.items():
        rates = r["token_circuits_per_s"]
        assert set(rates) == paths and all(v > 0 for v in rates.values())
        # one round: each path's ratio is its rate over the in-process one's (the paced one's is its pace's)
        ratios = {name: v / rates["in-process"] for name, v in rates.items() if name != paced}
        assert r["ratio"] == pytest.approx(ratios)
        assert set(r["bytes_per_token"]) == set(r["service_cpu_ms_per_request"]) == paths - {"in-process"}
        for path, measured in r["bytes_per_token"].items():
            payload = adjoint if grad == "adjoint" else dense if path.endswith("dense") else kept
            envelope = measured - payload  # headers, shapes, theta, handles: a few hundred bytes a call
            assert 0 < envelope * n < 1500, (grad, path, measured)
            # the server's own work, net of what it spends with nothing asked over the call's seconds
            quiet, raw, net = (r[k][path] for k in ("quiet_cpu_ms_per_s", "frontend_cpu_us_per_token_raw",
                                                    "frontend_cpu_us_per_token"))  # fmt: skip
            assert 0 <= quiet < 1000 and 0 < net <= raw, (grad, path, quiet, raw, net)
            assert r["frontend_cpu_us_per_token_rounds"][path] == [net]  # one round: its median
    (over,) = [r for r in out if "overhead_ms" in r]
    assert set(over["one_token_ms"]) == paths and set(over["overhead_ms"]) == paths - {"in-process"}
    ms = over["one_token_ms"]  # the overhead: a one-token call through the service less one in-process
    assert over["overhead_ms"] == pytest.approx({k: v - ms["in-process"] for k, v in ms.items() if k != "in-process"})


def test_ray_inline_measures_each_size_both_ways():
    """The two ways it compares are what they say: by default Ray stores every argument over 100 KiB
    and every answer of half of that (3 calls a size after 10 to warm: 13 x 1.5 x 0.3 MB), inline
    nothing."""
    out = bench("bench/ray_inline.py", "--sizes", "0.05", "0.3", "--calls", "3", "--rounds", "1").stdout
    took = re.search(r"took ([\d,]+) B .*, ([\d,]+) B inline", out).groups()
    by_default, inline = (int(x.replace(",", "")) for x in took)
    assert 5_850_000 <= by_default < 5_851_000 and inline == 0  # a few bytes of metadata an object
    table = [line.split() for line in out.splitlines() if not line.startswith(("#", "    MB"))]
    assert [row[0] for row in table] == ["0.05", "0.30"] and all(float(x) > 0 for row in table for x in row[1:])


def test_paced_replica_answers_the_local_simulators_results_at_the_h200s_pace(monkeypatch, tmp_path):
    """bench/paced.py: exact `local` results (a repeated call replayed, not recomputed), each call
    answered no sooner than an H200 would (its rows at ROWS_PER_S; an adjoint VJP at the H200's
    adjoint rate), and found through its entry point by a process with its folder on the path."""
    import time

    import torch

    from qworker import CircuitSpec, Gradient, get_backend

    monkeypatch.syspath_prepend(str(ROOT / "bench"))
    import paced

    spec, n = CircuitSpec(10, 2), 4096
    g = torch.Generator().manual_seed(0)
    theta, angles = torch.rand(40, generator=g), torch.rand(n, 20, generator=g)
    grad_out = torch.rand(n, 10, generator=g)
    backend, local = paced.PacedBackend(), get_backend("local")
    rows = n * (1 + Gradient("fd").evaluations(spec))  # fd's shifted rows and the base row
    for _ in range(2):  # computed, then replayed
        start = time.perf_counter()
        j = backend.jacobians(spec, theta, angles, Gradient("fd"))
        assert time.perf_counter() - start >= (rows - n) / paced.ROWS_PER_S  # its shifted rows at least
        assert all(torch.equal(a, b) for a, b in zip(j, local.jacobians(spec, theta, angles, Gradient("fd"))))
        start = time.perf_counter()
        vjp = backend.vjp(spec, theta, angles, grad_out, Gradient("adjoint"))
        assert time.perf_counter() - start >= n * paced.ADJOINT_S_PER_TOKEN > 0
        exact = local.vjp(spec, theta, angles, grad_out, Gradient("adjoint"))
        assert all(torch.equal(a, b) for a, b in zip(vjp, exact))
    assert len(backend._memo) == 2  # one fd batch, one VJP: the second pass replayed both
    folder = paced.install(tmp_path)
    code = "from qworker.backends.registry import backend_class; print(backend_class('paced').__name__)"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(folder), str(ROOT / "bench"), str(ROOT)])}
    assert bench("-c", code, env=env).stdout.strip() == "PacedBackend"


@pytest.mark.slow
def test_study_runs_a_grid_resumes_and_reports(tmp_path, cache_dir, corpus):
    env = {**os.environ, "HYQUT_CACHE": str(cache_dir)}
    variants = ["none", "wq", "wq-control", "none-like-wq"]
    argv = ["bench/study.py", "--model", "tiny", "--variants", *variants, "--seeds", "0", "1", "--steps", "3"]
    argv += [
        "--eval-every",
        "3",
        "--batch-size",
        "2",
        "--out",
        str(tmp_path / "runs"),
        "--results",
        str(tmp_path / "s"),
        "--val-windows",
        "8",
    ]
    argv += ["--", "--context", "32", "--eval-batches", "1"]
    bench(*argv, env=env, timeout=900)
    study = json.loads((tmp_path / "s.json").read_text())
    assert sorted((r["variant"], r["seed"]) for r in study["runs"]) == sorted((v, s) for v in variants for s in (0, 1))
    assert all(r["steps"] == 3 for r in study["runs"])
    for r in study["runs"]:  # the loss of each run's saved weights on its 1 x 2 validation windows, in plain torch
        run = tmp_path / "runs" / f"{r['variant']}-s{r['seed']}"
        assert r["final_val_loss"] == pytest.approx(validation_loss(run, corpus.validation, 1 * 2), rel=1e-5), r
        assert r["final_val_ppl"] == pytest.approx(math.exp(r["final_val_loss"])) and r["val"][-1][0] == 3
    # the final weights on 8 windows, the first 2 (--eval-batches 1 x --batch-size 2) those the trainer logged
    assert study["config"]["validation"] == {
        "measure": "split",
        "windows": 8,
        "split_windows": study["config"]["validation"]["split_windows"],
        "logged_windows": 2,
    }
    for r in study["runs"]:
        split = r["val_split"]
        assert split["windows"] == len(split["losses"]) == 8 and split["se"] > 0
        assert sum(split["losses"][:2]) / 2 == pytest.approx(r["final_val_loss"], abs=2e-5)
    params = {r["variant"]: r["params"] for r in study["summary"]}
    # narrowed to within one FFN unit (3 x d_model x n_layers = 3 x 64 x 2 weights) of the hybrid's count
    assert abs(params["none-like-wq"] - params["wq"]) <= 3 * 64 * 2 // 2 < abs(params["none"] - params["wq"])
    evals = {r["variant"]: r["circuit_evaluations"] for r in study["summary"]}
    # tiny: 2 layers with W_q through a circuit, ~3 evaluations a token with adjoint, 3 steps of 2 x 32 tokens
    assert evals["wq"] == 2 * 3 * (2 * 3 * 2 * 32) and evals["wq-control"] == evals["none"] == 0
    for row in study["summary"][1:]:  # paired with `none` over the same two seeds
        lo, hi = row["diff_ci95"]
        assert lo <= row["diff_vs_none"] <= hi
    assert "| wq-control |" in (tmp_path / "s.md").read_text() and (tmp_path / "s.png").stat().st_size > 10_000
    # a second invocation reads the finished runs; a run cut short is finished, the others untouched
    logs = {p: p.stat().st_mtime_ns for p in (tmp_path / "runs").glob("*/log.jsonl")}
    (tmp_path / "runs" / "wq-s1" / "summary.json").unlink()
    bench(*argv, env=env, timeout=900)
    changed = {p for p, t in logs.items() if p.stat().st_mtime_ns != t}
    assert changed <= {tmp_path / "runs" / "wq-s1" / "log.jsonl"}
    assert (tmp_path / "runs" / "wq-s1" / "summary.json").exists()
    # the results file is the record: a run it holds is not run again where its directory is gone
    before = json.loads((tmp_path / "s.json").read_text())
    for name in ("none-s0", "wq-control-s1"):
        shutil.rmtree(tmp_path / "runs" / name)
    log = tmp_path / "runs" / "wq-s1" / "log.jsonl"
    log.rename(log.with_suffix(".away"))  # the study stops at wq-s1: every run on record kept, wq-s1's too
    stopped = subprocess.run([sys.executable, *argv], cwd=ROOT, capture_output=True, text=True, env=env)
    assert stopped.returncode != 0 and "log.jsonl" in stopped.stderr
    assert json.loads((tmp_path / "s.json").read_text())["runs"] == before["runs"]
    log.with_suffix(".away").rename(log)
    bench(*argv, env=env, timeout=900)
    assert not (tmp_path / "runs" / "none-s0").exists() and not (tmp_path / "runs" / "wq-control-s1").exists()
    after = json.loads((tmp_path / "s.json").read_text())
    assert after["runs"] == before["runs"] and after["summary"] == before["summary"]
    other = list(argv)
    other[other.index("--steps") + 1] = "4"
    refused = subprocess.run([sys.executable, *other], cwd=ROOT, capture_output=True, text=True, env=env)
    assert refused.returncode != 0 and "with steps 3, not 4" in refused.stderr


def test_study_reports_the_largest_gap_between_gradient_methods(monkeypatch):
    """`wq+fd@ray` against `wq` of the same seed: the largest gap over the steps both logged, and
    where it was; a seed without a base run and a step the base did not log are not compared."""
    study = load_study(monkeypatch)

    def run(variant, seed, train, val):
        return {"variant": variant, "seed": seed, "lr": 3e-3, "params": 1, "final_val_loss": val[-1][1],
                "final_val_ppl": 1.0, "tokens_per_s": 1.0, "train_s": 1.0, "circuit_evaluations": 0, "train": train,
                "val": val}  # fmt: skip

    runs = [
        run("wq", 0, [[1, 5.0], [2, 4.0], [3, 3.0]], [[3, 3.5]]),
        run("wq", 1, [[1, 5.0], [2, 4.0]], [[2, 4.5]]),
        run("wq+fd@ray", 0, [[1, 5.01], [2, 4.05], [3, 2.98], [4, 0.0]], [[3, 3.52]]),
        run("wq+fd@ray", 1, [[1, 5.03], [2, 3.99]], [[2, 4.49]]),
        run("wq+fd@ray", 2, [[1, 9.0]], [[1, 9.0]]),  # no wq run with seed 2
        run("wq-control", 0, [[3, 3.0]], [[3, 3.4]]),
        run("wq-control", 1, [[3, 3.0]], [[3, 4.3]]),
    ]
    rows = {r["variant"]: r for r in study.summarize(runs, ["wq", "wq+fd@ray", "wq-control"])}
    assert "gap_vs" not in rows["wq"] and "diff_vs_control" not in rows["wq+fd@ray"]
    # wq - wq-control by seed: 0.1, 0.2; the interval is mean ± t(0.975, 1) x sd / sqrt(2)
    assert rows["wq"]["diff_vs_control"] == pytest.approx(0.15)
    assert rows["wq"]["diff_vs_control_ci95"] == pytest.approx([0.15 - 12.706 * 0.05, 0.15 + 12.706 * 0.05])
    fd = rows["wq+fd@ray"]
    assert fd["gap_vs"] == "wq" and fd["max_train_gap_step"] == 2 and fd["max_val_gap_step"] == 3
    assert fd["max_train_gap"] == pytest.approx(0.05) and fd["max_val_gap"] == pytest.approx(0.02)
    config = {"model": "8m", "dataset": "chitchat", "seeds": [0, 1, 2], "steps": 4, "batch_size": 8, "context": 256}
    config.update(extra=[], lrs=[3e-3], validation={"measure": "logged", "windows": 64, "split_windows": 255})
    text = study.report({"config": config, "summary": list(rows.values())})
    assert "wq+fd@ray vs wq (same seeds, same steps): largest gap in training loss 0.0500 (step 2)" in text
    # the MDE of two seeds: (t(0.975, 1) + t(0.80, 1)) x 0.05
    assert "| wq | 0.003 | 1 | 4.000 ± 0.707 | 54.6 |  | +0.150 [-0.485, +0.785], 0.704 |" in text
    assert "on the first 64 of the validation split's 255 windows of 256 tokens (16,384 tokens)" in text


def test_study_compares_each_variant_at_the_rate_its_held_out_training_loss_chooses(monkeypatch):
    """With several learning rates, a variant's rate is the one with the lowest training loss over
    the last 10% of steps (mean over seeds), not the lowest validation loss; the comparisons then
    pair each variant at its own rate with `none` at its own, seed by seed. On the whole split, each
    paired difference has its standard error over windows: that of the per-window difference averaged
    over seeds."""
    study = load_study(monkeypatch)

    def run(variant, seed, lr, tail, val, windows):
        train = [[step, 9.0] for step in range(1, 19)] + [[19, tail], [20, tail]]  # the last 10%: 2 of 20 steps
        split = {"windows": len(windows), "loss": sum(windows) / len(windows), "se": 0.1, "losses": windows}
        return {"variant": variant, "seed": seed, "lr": lr, "params": 1, "final_val_loss": val, "final_val_ppl": 1.0,
                "tokens_per_s": 1.0, "train_s": 1.0, "circuit_evaluations": 0, "train": train, "val": [[20, val]],
                "val_split": split}  # fmt: skip

    runs = [
        # none: 1e-3 is lower on the training tail (4.0 < 4.5) though higher on validation
        run("none", 0, 1e-3, 4.0, 5.0, [5.0, 5.2]),
        run("none", 1, 1e-3, 4.0, 5.0, [5.0, 5.0]),
        run("none", 0, 3e-3, 4.5, 4.0, [4.0, 4.0]),
        run("none", 1, 3e-3, 4.5, 4.0, [4.0, 4.0]),
        # wq: 3e-3 by the mean over seeds (3.9 < 4.05), though seed 1 alone prefers 1e-3
        run("wq", 0, 1e-3, 4.3, 9.0, [9.0, 9.0]),
        run("wq", 1, 1e-3, 3.8, 9.0, [9.0, 9.0]),
        run("wq", 0, 3e-3, 3.9, 4.5, [4.6, 4.8]),
        run("wq", 1, 3e-3, 3.9, 4.5, [4.8, 4.8]),
    ]
    config = {"variants": ["none", "wq"], "lrs": [1e-3, 3e-3], "validation": {"measure": "split"}}
    out = study.analyse(runs, config)
    assert {r["variant"]: r["lr"] for r in out["summary"]} == {"none": 1e-3, "wq": 3e-3}
    assert [(r["variant"], r["lr"], r["chosen"]) for r in out["sweep"]] == [
        ("none", 1e-3, True), ("none", 3e-3, False), ("wq", 1e-3, False), ("wq", 3e-3, True)
    ]  # fmt: skip
    assert out["sweep"][2]["selection_loss_mean"] == pytest.approx(4.05)
    wq = out["summary"][1]
    # whole-split losses: wq 4.7, 4.8 against none 5.1, 5.0 -> differences -0.4, -0.2
    assert wq["diff_vs_none"] == pytest.approx(-0.3)
    sd = 0.2 / 2**0.5
    assert wq["diff_ci95"] == pytest.approx([-0.3 - 12.706 * sd / 2**0.5, -0.3 + 12.706 * sd / 2**0.5])
    assert wq["diff_mde"] == pytest.approx((12.706 + 1.376) * sd / 2**0.5)
    # per window, averaged over seeds: (-0.4 - 0.2) / 2 = -0.3 and (-0.4 - 0.2) / 2 = -0.3 -> no spread
    assert wq["diff_se_windows"] == pytest.approx(0.0, abs=1e-12)
    assert out["summary"][0]["val_ppl"] == pytest.approx(math.exp(5.05))
    # one rate: no sweep; the logged validation when asked
    one = study.analyse(runs[:2], {**config, "lrs": [1e-3], "validation": {"measure": "logged"}})
    assert "sweep" not in one and one["summary"][0]["val_loss_mean"] == 5.0


def test_validation_takes_the_trainers_windows_in_order_one_loss_each(monkeypatch):
    """bench/validation.py: window i of the split is tokens[i·T : i·T + T + 1], as the trainer's
    evaluate() takes them, and its loss is the model's mean cross-entropy on that window alone (so
    the mean of the first n is the trainer's logged loss over n windows)."""
    import numpy as np
    import torch

    from trainer.data.batches import BatchSampler
    from trainer.model.config import from_preset
    from trainer.model.transformer import Transformer

    monkeypatch.syspath_prepend(str(ROOT / "bench"))
    validation = importlib.import_module("validation")
    cfg = from_preset("tiny", context=16, vocab_size=64)
    torch.manual_seed(0)
    model = Transformer(cfg)
    tokens = np.random.default_rng(0).integers(0, 64, size=5 * 16 + 3).astype(np.uint16)  # 5 windows, 2 spare
    losses = validation.window_losses(model, tokens, 16, batch=2)
    assert len(losses) == 5
    with torch.no_grad():
        for loss, (x, y) in zip(losses, BatchSampler(tokens, 1, 16, shuffle=False)):
            assert loss == pytest.approx(model(x, y)[1].item(), abs=1e-5)
    assert validation.window_losses(model, tokens, 16, windows=3) == pytest.approx(losses[:3], abs=1e-6)
    mean, se = validation.mean_se([1.0, 2.0, 3.0])
    assert mean == 2.0 and se == pytest.approx(1.0 / 3**0.5)


def test_study_reads_the_validation_a_run_came_back_with(tmp_path, monkeypatch):
    """A run collected without its weights (a GPU machine's logs) keeps its whole-split validation
    if validation.json is of its final step; an earlier step's is not used."""
    study = load_study(monkeypatch)
    (tmp_path / "validation.json").write_text(json.dumps({"step": 300, "windows": 127, "loss": 5.0}))
    assert study.whole_split(tmp_path, 300, None)["loss"] == 5.0
    assert study.whole_split(tmp_path, 400, None) is None


@pytest.mark.slow
def test_study_sweeps_learning_rates_and_keeps_the_runs_it_has(tmp_path, cache_dir):
    """--lrs: every variant x rate x seed, each in its own directory, except that the runs at the
    trainer's default rate are those of a study without --lrs, found where they are and not run
    again; the JSON, table and plot carry the rates."""
    env = {**os.environ, "HYQUT_CACHE": str(cache_dir)}
    common = ["--model", "tiny", "--seeds", "0", "1", "--steps", "3", "--eval-every", "3", "--batch-size", "2"]
    common += ["--out", str(tmp_path / "runs"), "--val-windows", "4"]
    tail = ["--", "--context", "32", "--eval-batches", "1"]
    bench("bench/study.py", *common, "--variants", "none", "--results", str(tmp_path / "one"), *tail, env=env)
    before = {p: p.stat().st_mtime_ns for p in (tmp_path / "runs").glob("*/log.jsonl")}
    assert {p.parent.name for p in before} == {"none-s0", "none-s1"}
    argv = [*common, "--variants", "none", "wq", "--lrs", "1e-3", "3e-3", "--results", str(tmp_path / "s"), *tail]
    bench("bench/study.py", *argv, env=env, timeout=900)
    assert all(p.stat().st_mtime_ns == t for p, t in before.items())  # found, not run again
    dirs = {p.name for p in (tmp_path / "runs").iterdir()}
    assert dirs == {f"{v}{lr}-s{s}" for v in ("none", "wq") for lr in ("", "-lr1e-3") for s in (0, 1)}
    for d in dirs:
        lr = json.loads((tmp_path / "runs" / d / "run.json").read_text())["train"]["lr"]
        assert lr == (1e-3 if "-lr1e-3" in d else 3e-3), d
    study = json.loads((tmp_path / "s.json").read_text())
    assert study["config"]["lrs"] == [1e-3, 3e-3] and len(study["runs"]) == 8
    assert len(study["sweep"]) == 4 and all(r["seeds"] == 2 for r in study["sweep"])
    for row in study["summary"]:  # each at the rate with the lowest mean training loss over the last step (10% of 3)
        tails = {
            lr: sum(r["train"][-1][1] for r in study["runs"] if r["variant"] == row["variant"] and r["lr"] == lr) / 2
            for lr in (1e-3, 3e-3)
        }
        assert row["lr"] == min(tails, key=tails.get)
    table = (tmp_path / "s.md").read_text()
    assert "learning rates 0.001, 0.003" in table and "| wq | 0.001 | 2 |" in table and "✓" in table
    assert (tmp_path / "s.png").stat().st_size > 10_000
    refused = subprocess.run(
        [sys.executable, "bench/study.py", *argv, "--lr", "1e-3"], cwd=ROOT, capture_output=True, text=True
    )
    assert refused.returncode != 0 and "--lrs, not --lr" in refused.stderr


def test_reproduction_shows_the_tables_its_results_generate(monkeypatch):
    """Each committed study: its summary is what bench/study.py computes from its runs, its table
    is what the report writes from them, and docs/reproduction.md shows that report unedited and
    its totals (runs, hours, tokens, circuit evaluations) in the Compute table."""
    study = load_study(monkeypatch)
    doc = (ROOT / "docs" / "reproduction.md").read_text()
    results = sorted((ROOT / "docs" / "results").glob("study-*.json"))
    assert results
    for path in results:
        data = json.loads(path.read_text())
        assert json.loads(study.dumps(data)) == data, path.name
        assert {k: v for k, v in data.items() if k not in ("config", "runs")} == study.analyse(
            data["runs"], data["config"]
        ), path.name
        assert {r["lr"] for r in data["runs"]} == set(data["config"]["lrs"]), path.name
        table = study.report(data)
        assert table == path.with_suffix(".md").read_text(), path.name
        assert table.rstrip("\n") in doc, path.name  # the whole report: settings, validation, tables, notes
        runs = data["runs"]
        hours, tokens = sum(r["train_s"] for r in runs) / 3600, sum(r["tokens"] for r in runs) / 1e6
        evaluations = sum(r["circuit_evaluations"] for r in runs) / 1e6
        assert f"| {len(runs)} | {hours:.2f} | {tokens:.1f}M | {evaluations:.1f}M |\n" in doc, path.name


@pytest.mark.slow
def test_fd_check_compares_the_gradients_of_the_runs_own_weights(tmp_path, cache_dir):
    """bench/fd_check.py at tiny size: the checkpoints' weights and batches are the run's (their loss
    on the next batch is the loss the run logged for that step), and the fd gradient of the circuits'
    θ is the adjoint one shrunk by sin(δ)/δ (each θ enters one rotation: the expectation is a sinusoid
    in it), along the same direction."""
    env = {**os.environ, "HYQUT_CACHE": str(cache_dir)}
    argv = ["--model", "tiny", "--steps", "4", "--save-every", "2", "--checkpoints", "0", "2", "4"]
    argv += ["--deltas", "0.1", "0.001", "--batch-size", "2", "--check-batch", "1"]
    bench("bench/fd_check.py", *argv, "--out", str(tmp_path), "--results", str(tmp_path / "r"), env=env, timeout=900)
    result = json.loads((tmp_path / "r.json").read_text())
    assert [(r["step"], r["delta"]) for r in result["rows"]] == [(s, d) for s in (0, 2, 4) for d in (0.1, 0.001)]
    checks = {w["step"]: w for w in result["weights_check"]}
    for step in (0, 2):
        assert checks[step]["loss"] == pytest.approx(checks[step]["logged"], abs=1e-4), checks[step]
    assert checks[4]["logged"] is None  # the run's last step: no next step logged
    for r in result["rows"]:
        theta, whole = r["groups"]["circuit θ"], r["groups"]["whole model"]
        assert theta["cosine"] > 1 - 1e-6 and whole["cosine"] > 1 - 1e-6, r
        if r["delta"] == 0.1:
            assert theta["rel_error"] == pytest.approx(1 - math.sin(0.1) / 0.1, rel=0.05), r
        assert whole["rel_error"] < 1e-2 and whole["params"] == sum(
            r["groups"][g]["params"] for g in ("circuit θ", "compress", "expand", "classical rest")
        )
    assert "| 2 | 0.1 | 1.7e-03 |" in (tmp_path / "r.md").read_text()


@pytest.mark.slow
def test_device_script_dry_run(tmp_path, cache_dir):
    """bench/device.sh, the GPU machine's one prepared run, at tiny sizes on the CPU: every step
    runs and lands in its table."""
    env = {**os.environ, "OUT": str(tmp_path), "HYQUT_CACHE": str(cache_dir), "DS_ACCELERATOR": "cpu"}
    proc = subprocess.run(
        ["bash", "bench/device.sh", "--cpu-dry-run"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=900
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    table = (tmp_path / "table.txt").read_text()
    for row in ("vqc local forward+grad shift", "train step wq adjoint", "study-tiny.md", "| wq-control | "):
        assert row in table, table
    with tarfile.open(tmp_path / "study-runs.tgz") as tar:  # the runs' logs, for study.py to collect here
        names = set(tar.getnames())
    assert {
        f"./{v}-s{s}/{f}"
        for v in ("none", "wq", "wq-control")
        for s in (0, 1)
        for f in ("log.jsonl", "run.json", "summary.json")
    } <= names
    assert "exit" not in (tmp_path / "device.log").read_text().replace("exit_code", "")


@pytest.mark.slow
def test_scaling_spreads_one_request_over_the_replicas():
    argv = ["--replicas", "1", "2", "--tokens", "128", "--rounds", "1", "--methods", "fd", "--json"]
    out = {r["replicas"]: r for r in rows(bench("bench/scaling.py", *argv, timeout=600))}
    assert set(out) == {0, 1, 2}
    # 128 tokens x 121 fd evaluations x 2^10 amplitudes is several work units (docs/design.md, "The service"):
    # with two replicas, both computed part of the one request
    assert len(out[2]["replica_busy_s"]) == 2 and min(out[2]["replica_busy_s"]) > 0
    for r in (1, 2):
        row = out[r]
        assert row["tokens_per_s"] > 0 and row["evaluations_per_s"] > 0
        for key in ("evaluations_per_s", "tokens_per_s"):  # against R = 1 and the in-process row (R = 0)
            assert row[f"{key}_speedup"] == pytest.approx(row[key] / out[1][key])
            assert row[f"{key}_efficiency"] * r == pytest.approx(row[f"{key}_speedup"])
            assert row[f"{key}_vs_in_process"] == pytest.approx(row[key] / out[0][key])
    assert out[1]["evaluations_per_s_speedup"] == out[1]["tokens_per_s_speedup"] == 1


@pytest.mark.slow
def test_faults_under_load_answer_everything_right():
    (row,) = rows(bench("bench/faults.py", "--seconds", "30", "--json", timeout=600))
    assert row["sent"] > 20 and row.get("wrong", 0) == 0, row
    assert not {k for k in row if k.startswith("failed")}, row  # every fault was absorbed by a retry
    assert row["cancelled"] == 5 and len(row["events"]) == 5


def test_scaling_without_ray_says_so_and_measures_nothing():
    """The lent GPU machine has no Ray: the script names what is missing and what to run instead."""
    hide_ray = "import runpy, sys; sys.modules['ray'] = None; sys.path.insert(0, 'bench'); "
    hide_ray += "sys.argv = ['bench/scaling.py', '--json']; runpy.run_path('bench/scaling.py', run_name='__main__')"
    out = subprocess.run([sys.executable, "-c", hide_ray], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 2 and out.stdout == "", out.stderr[-2000:]
    assert "Ray is not installed" in out.stderr and "bench/vqc.py --device cuda" in out.stderr
