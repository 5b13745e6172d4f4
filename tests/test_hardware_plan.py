"""The hardware plan of a training run (`--describe`), and `--shot-budget`: a run whose plan exceeds it
is refused before anything starts; one whose device spends more than planned stops, saved, before
the step that would exceed it. Figures are checked against the circuit's counts by hand."""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from trainer.model.circuits import Circuits
from trainer.model.config import from_preset
from trainer.run.checkpoint import shots_spent
from trainer.run.config import TrainConfig
from trainer.run.hardware import check_budget, hardware_plan, over_budget

ROOT = Path(__file__).parents[1]
# one quantum projection (W_q of layer 0), a 4-qubit circuit of 2 layers: |Θ| = 16, 8 input angles
SMALL = ["--model", "tiny", "--quantum", "wq", "--quantum-layers", "0", "--n-qubits", "4", "--context", "16"]
RUN = ["--batch-size", "2", "--eval-batches", "2", "--steps", "3", "--eval-every", "2", "--grad", "fd"]
PER_TOKEN = 1 + 2 * (16 + 8)  # fd: the forward and both shifts of every component
STEP_CIRCUITS = 2 * 16 * PER_TOKEN  # batch 2 x context 16 tokens, one job
EVAL_CIRCUITS = 2 * 2 * 16  # eval_batches x batch_size windows of 16 tokens, one job each
RUN_SHOTS = 100 * (3 * STEP_CIRCUITS + 2 * EVAL_CIRCUITS)  # 3 steps, validation at steps 2 and 3


def trainer(*flags, env=None, out=None):
    cmd = [sys.executable, "-m", "trainer.main", *SMALL, *RUN, *flags]
    if out is not None:
        cmd += ["--out", str(out)]
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)


def test_plan_counts_jobs_circuits_and_shots():
    cfg = from_preset("tiny", quantum="wq", quantum_layers=(0, 1), n_qubits=4, context=16)
    circuits = Circuits("shots", grad="fd", options="shots=100")
    t = TrainConfig(steps=3, batch_size=2, grad_accum=2, eval_every=2, eval_batches=2, circuits=circuits)
    plan = hardware_plan(cfg, t, world=2)
    assert plan.projections == 2 and plan.shots_per_circuit == 100 and plan.evals == 2
    # every projection, micro-step and rank sends one job
    assert (plan.per_step.jobs, plan.per_step.circuits) == (2 * 2 * 2, 2 * 2 * 2 * STEP_CIRCUITS)
    assert (plan.per_eval.jobs, plan.per_eval.circuits) == (2 * 4, 2 * EVAL_CIRCUITS)  # the ranks share it
    assert plan.run.shots == 100 * (3 * 8 * STEP_CIRCUITS + 2 * 2 * EVAL_CIRCUITS)
    resumed = hardware_plan(cfg, t, world=2, first_step=2)
    assert resumed.steps == 1 and resumed.evals == 1  # only step 3 and its validation pass are left
    assert hardware_plan(cfg, TrainConfig(circuits=Circuits("local", grad="fd"))) is None  # not hardware
    with pytest.raises(ValueError, match="--shot-budget is for a hardware-like --qbackend"):
        check_budget(None, 10)


def test_describe_prints_the_plan_with_queue_wait():
    proc = trainer("--qbackend", "shots", "--qbackend-options", "shots=100,queue_latency_s=2", "--describe")
    assert proc.returncode == 0, proc.stderr
    out = " ".join(proc.stdout.split())
    assert "hardware plan: shots, fd, 100 shots/circuit, 1 quantum projection(s), 1 rank(s)" in out, out
    step = f"per step jobs 1 circuits {STEP_CIRCUITS:,} shots {100 * STEP_CIRCUITS:,} queue wait ~2 s"
    assert step in out, out
    assert f"per validation pass jobs 4 circuits {EVAL_CIRCUITS:,} shots {100 * EVAL_CIRCUITS:,} queue wait ~8 s" in out
    assert f"whole run (3 steps, 2 passes) jobs 11 circuits {RUN_SHOTS // 100:,} shots {RUN_SHOTS:,}" in out, out


def test_budget_below_the_plan_is_refused_before_anything_starts(tmp_path):
    proc = trainer("--qbackend", "shots", "--qbackend-options", "shots=100", "--shot-budget", str(RUN_SHOTS - 1),
                   out=tmp_path / "run")  # fmt: skip
    assert proc.returncode == 2
    assert f"--shot-budget {RUN_SHOTS - 1:,} is too small for this run: it plans {RUN_SHOTS:,} shots" in proc.stderr
    assert not (tmp_path / "run").exists()


PLUGIN = '''
from qworker.backends import ShotsBackend


class RepeatingShots(ShotsBackend):
    """A device that runs every job twice (as a provider's automatic re-run would): twice the plan."""

    def expectations(self, spec, theta, angles):
        super().expectations(spec, theta, angles)
        return super().expectations(spec, theta, angles)
'''


@pytest.mark.slow
def test_run_that_would_exceed_the_budget_stops_saved(tmp_path):
    plugin = tmp_path / "plugin"
    (plugin / "repeating_shots-1.0.dist-info").mkdir(parents=True)
    (plugin / "repeating_shots.py").write_text(textwrap.dedent(PLUGIN))
    (plugin / "repeating_shots-1.0.dist-info" / "METADATA").write_text(
        "Metadata-Version: 2.1\nName: repeating-shots\nVersion: 1.0\n"
    )
    (plugin / "repeating_shots-1.0.dist-info" / "entry_points.txt").write_text(
        "[hyqut.backends]\nrepeating = repeating_shots:RepeatingShots\n"
    )
    env = {**os.environ, "PYTHONPATH": str(plugin), "DS_ACCELERATOR": "cpu"}  # the plug-in, found by its entry point
    out = tmp_path / "run"
    flags = ["--qbackend", "repeating", "--qbackend-options", "shots=100,seed=0", "--shot-budget", str(RUN_SHOTS)]
    proc = trainer(*flags, env=env, out=out)  # the plan fits the budget exactly; the device spends twice that
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    (record,) = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert record["step"] == 1 and record["jobs"] == 2 and record["circuits"] == 2 * STEP_CIRCUITS
    assert record["shots"] == record["shots_total"] == 2 * 100 * STEP_CIRCUITS
    summary = json.loads((out / "summary.json").read_text())
    assert summary["steps"] == 1 and summary["stopped_early"] and "shot budget" in summary["stop_reason"]
    assert summary["hardware"] == {"jobs": 2, "circuits": 2 * STEP_CIRCUITS, "shots": record["shots"],
                                   "shots_total": record["shots"]}  # fmt: skip
    assert (out / "ckpt" / "step1").is_dir() and "stopping: shot budget" in proc.stdout


def test_readme_hardware_table_is_what_the_plan_says():
    text = (ROOT / "README.md").read_text()
    table = text[text.index("| preset, quantum | projections |") :].split("\n\n")[0].splitlines()[2:]
    rows = [[c.strip() for c in line.strip("|").split("|")] for line in table]
    assert len(rows) == 4
    for model, projections, grads, jobs, circuits, shots in rows:
        preset, quantum = model.split(", ")
        for grad in grads.split(", "):
            t = TrainConfig(circuits=Circuits("shots", grad=grad, options="shots=1000"))
            plan = hardware_plan(from_preset(preset, quantum=quantum), t)
            got = [plan.projections, plan.per_step.jobs, plan.per_step.circuits, plan.per_step.shots]
            assert [f"{v:,}" for v in got] == [projections, jobs, circuits, shots], (model, grad)


def test_a_resumed_run_counts_every_shot_paid_for(tmp_path):
    assert shots_spent(tmp_path) == (0, 0)  # a new run
    (tmp_path / "ckpt").mkdir()
    (tmp_path / "ckpt" / "latest").write_text("step2")
    log = [{"step": s, "shots": 10, "shots_total": 10 * s} for s in (1, 2, 3)]  # step 3 ran, unsaved
    (tmp_path / "log.jsonl").write_text("".join(json.dumps(r) + "\n" for r in log))
    assert shots_spent(tmp_path) == (2, 30)  # restarts at step 2, but step 3's shots were spent
    cfg = from_preset("tiny", quantum="wq", quantum_layers=(0,), n_qubits=4, context=16)
    circuits = Circuits("shots", grad="fd", options="shots=100,mitigate=readout")
    plan = hardware_plan(cfg, TrainConfig(steps=3, batch_size=2, eval_every=2, eval_batches=2, circuits=circuits))
    step_1 = 100 * STEP_CIRCUITS + 200  # the first step of a session also calibrates: 2 circuits
    budget = lambda n: TrainConfig(steps=3, eval_every=2, shot_budget=n, circuits=circuits)  # noqa: E731
    assert over_budget(plan, budget(step_1), 0, 0, 0) is None
    assert "step 1 would take ~" in over_budget(plan, budget(step_1 - 1), 0, 0, 0)
    step_2 = 100 * (STEP_CIRCUITS + EVAL_CIRCUITS)  # step 2 validates
    assert over_budget(plan, budget(step_1 + step_2), 1, step_1, step_1) is None
    assert over_budget(plan, budget(step_1 + step_2), 1, step_1, 10 * step_2) is not None  # it measured more


def test_trainer_metrics_count_hardware_usage_by_backend():
    import urllib.request

    from prometheus_client.parser import text_string_to_metric_families

    from qworker.backends import Usage
    from trainer.run.metrics import TrainMetrics

    m = TrainMetrics(0)
    try:
        m.record_usage("shots", Usage(2, 300, 30_000))
        m.record_usage("shots", Usage(1, 100, 10_000))
        text = urllib.request.urlopen(f"http://127.0.0.1:{m.server.server_port}/metrics", timeout=10).read().decode()
    finally:
        m.close()
    got = {(s.name, s.labels.get("backend")): s.value for f in text_string_to_metric_families(text) for s in f.samples}
    # the two steps' usage summed: 2 + 1 jobs, 300 + 100 circuits, 30,000 + 10,000 shots
    assert got[("hyqut_hardware_jobs_total", "shots")] == 3
    assert got[("hyqut_hardware_circuits_total", "shots")] == 400
    assert got[("hyqut_hardware_shots_total", "shots")] == 40_000
