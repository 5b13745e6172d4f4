"""Every benchmark in bench/ runs end to end at its smallest size and prints figures that hang
together (the figures themselves are for bench/, not for tests)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[1]


def bench(*argv, env=None, timeout=300) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, *argv], cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    return proc


def rows(proc) -> list[dict]:
    return [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]


@pytest.mark.slow
def test_vqc_rows_measure_or_say_why_not():
    out = rows(bench("bench/vqc.py", "--quick", "--json"))
    peer = {r["mode"]: r["circuits_per_s"] for r in out if r["backend"] == "pennylane"}
    assert set(peer) == {"forward", "forward+grad"} and all(v > 0 for v in peer.values())
    assert {r["backend"] for r in out} >= {"local", "qulacs", "shots"}
    for r in out:
        if r["status"] == "ok":
            assert r["circuits_per_s"] > 0 and r["ratio_vs_peer"] == pytest.approx(
                r["circuits_per_s"] / peer[r["mode"]], rel=0.01
            ), r
        else:
            assert r["status"] == "skipped" and "budget" in r["note"], r
    assert any(r["backend"] == "local" and r["method"] == "adjoint" and r["status"] == "ok" for r in out)


@pytest.mark.slow
def test_train_step_ratios_against_the_classical_model():
    out = rows(bench("bench/train_step.py", "--models", "tiny", "--steps", "1", "--batch", "2", "--json"))
    cells = {(r["quantum"], r["grad"]): r for r in out}
    assert set(cells) == {("none", "-"), ("wq", "adjoint"), ("wgate", "adjoint"), ("wq", "fd")}
    base = cells["none", "-"]["tokens_per_s"]
    for r in out:
        assert r["ratio_vs_classical"] == pytest.approx(r["tokens_per_s"] / base)
        assert (r["quantum_share"] == 0) == (r["quantum"] == "none") and 0 <= r["quantum_share"] < 1


@pytest.mark.slow
def test_service_against_in_process():
    out = rows(bench("bench/service.py", "--tokens", "256", "--rounds", "1", "--json"))
    paths = {"in-process", "service, 1 replica", "service, 2 replicas"}
    by_grad = {r["grad"]: r for r in out if "grad" in r}
    assert set(by_grad) == {"adjoint", "fd"}
    for r in by_grad.values():
        rates = r["token_circuits_per_s"]
        assert set(rates) == paths and all(v > 0 for v in rates.values())
        for name in paths:  # one round: the ratio is the rates'
            assert r["ratio"][name] == pytest.approx(rates[name] / rates["in-process"])
    assert 0 < by_grad["adjoint"]["bytes_per_token"] < by_grad["fd"]["bytes_per_token"]
    (over,) = [r for r in out if "overhead_ms" in r]
    for name, ms in over["overhead_ms"].items():
        assert ms == pytest.approx(over["one_token_ms"][name] - over["one_token_ms"]["in-process"])


@pytest.mark.slow
def test_convergence_trains_each_variant_and_plots(tmp_path, cache_dir):
    env = {**os.environ, "HYQUT_CACHE": str(cache_dir)}
    argv = ["--model", "tiny", "--variants", "none", "wq", "--steps", "2", "--eval-every", "2", "--batch-size", "2"]
    proc = bench("bench/convergence.py", *argv, "--out", str(tmp_path), "--", "--context", "32", env=env)
    table = proc.stdout[proc.stdout.index("quantum  train loss") :].splitlines()
    assert [line.split()[0] for line in table[1:3]] == ["none", "wq"]
    assert (tmp_path / "convergence.png").stat().st_size > 1000
    for q in ("none", "wq"):
        assert json.loads((tmp_path / f"tiny-{q}" / "summary.json").read_text())["steps"] == 2
