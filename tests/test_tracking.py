"""`--report-to tensorboard,wandb,csv`: a training run on the hardware emulator writes every metric of
its log to each tracker, read back offline by the tools' own readers (TensorBoard's
EventAccumulator; W&B's offline run file, its records parsed with wandb's own protobuf); a resumed
run replaces, not repeats, the steps it replays."""

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from trainer.run.tracking import METRICS, Tracking, parse_report_to, problems

ROOT = Path(__file__).parents[1]
# one quantum projection on the shots emulator: hardware metrics too, in a few seconds a step
SMALL = ["--model", "tiny", "--quantum", "wq", "--quantum-layers", "0", "--n-qubits", "4", "--context", "16"]
RUN = ["--batch-size", "2", "--eval-batches", "2", "--steps", "3", "--eval-every", "2", "--grad", "fd"]
HARDWARE = ["--qbackend", "shots", "--qbackend-options", "shots=100,seed=0"]

event_accumulator = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator")
pytest.importorskip("wandb")


def tensorboard_scalars(folder: Path) -> dict[str, list[tuple[int, float]]]:
    acc = event_accumulator.EventAccumulator(str(folder))
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def wandb_records(path: Path):
    """The records of a W&B run file (`run-<id>.wandb`: a 7-byte header, then LevelDB-style log
    blocks of 32 KiB, each chunk a 7-byte header and its bytes), as wandb's own Record messages."""
    from wandb.proto import wandb_internal_pb2 as pb

    data, block = path.read_bytes(), 32768
    assert data[:4] == b":W&B"
    pos, pending = 7, b""
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # a block's tail too short for a header is padding
            pos += block - pos % block
            continue
        length, kind = int.from_bytes(data[pos + 4 : pos + 6], "little"), data[pos + 6]
        chunk, pos = data[pos + 7 : pos + 7 + length], pos + 7 + length
        if kind == 0:  # padding to the block's end
            pos += block - pos % block if pos % block else 0
            continue
        pending = chunk if kind in (1, 2) else pending + chunk  # FULL, FIRST / MIDDLE, LAST
        if kind in (1, 4):
            record = pb.Record()
            record.ParseFromString(pending)
            yield record


def wandb_history(run_dir: Path) -> tuple[dict[int, dict], dict]:
    """({step: {key: value}}, config) of the offline W&B run in run_dir/wandb."""
    (path,) = (run_dir / "wandb").glob("offline-run-*/run-*.wandb")
    history, config = {}, {}
    for record in wandb_records(path):
        kind = record.WhichOneof("record_type")
        if kind == "history":
            items = {i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in record.history.item}
            history.setdefault(items.pop("_step"), {}).update(items)
        elif kind in ("run", "config"):  # the run's config at wandb.init, and any update of it
            updates = record.run.config.update if kind == "run" else record.config.update
            config.update({i.key: json.loads(i.value_json) for i in updates})
    return history, config


@pytest.mark.slow
def test_report_to_every_tracker_offline(tmp_path, cache_dir):
    out = tmp_path / "run"
    env = {**os.environ, "DS_ACCELERATOR": "cpu", "HYQUT_CACHE": str(cache_dir), "WANDB_MODE": "offline"}
    env |= {"WANDB_SILENT": "true", "WANDB_PROJECT": "hyqut-test"}
    cmd = [sys.executable, "-m", "trainer.main", *SMALL, *RUN, *HARDWARE, "--out", str(out)]
    proc = subprocess.run(
        [*cmd, "--report-to", "tensorboard,wandb,csv"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == [1, 2, 3]

    def expected(key):  # (step, value) of every record that holds the metric
        return [(r["step"], r[key]) for r in log if key in r]

    scalars = tensorboard_scalars(out / "tensorboard")
    history, config = wandb_history(out)
    with open(out / "metrics.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["step"]) for r in rows] == [1, 2, 3]
    for key, name in METRICS.items():
        want = expected(key)
        if key in ("jobs_reused", "jobs_resubmitted"):
            assert not want  # no journal on the emulator
            continue
        assert want, key  # the emulator is hardware-like: every metric is there
        assert [s for s, _ in scalars[name]] == [s for s, _ in want], name
        assert [v for _, v in scalars[name]] == pytest.approx([v for _, v in want], rel=1e-6), name  # float32
        assert [(s, history[s][name]) for s, _ in want] == want, name  # W&B keeps float64
        assert [(int(r["step"]), float(r[name])) for r in rows if r[name]] == want, name
    assert {s for s, _ in expected("val_loss")} == {2, 3}
    assert config["model"]["quantum"] == "wq" and config["train"]["grad"] == "fd"  # run.json
    assert (out / "wandb" / "hyqut-run-id").read_text().strip() in str(next((out / "wandb").glob("offline-run-*")))


def test_a_resumed_run_replaces_the_steps_it_replays(tmp_path):
    run = {"model": {}, "train": {}}
    first = Tracking(("tensorboard", "csv"), tmp_path, run)
    for step in (1, 2, 3):
        first.log({"step": step, "loss": 10.0 + step, "lr": 0.1})
    first.close()  # killed after step 3; the checkpoint is step 2
    second = Tracking(("tensorboard", "csv"), tmp_path, run, resumed_at=2)
    for step in (3, 4):
        second.log({"step": step, "loss": 20.0 + step, "lr": 0.1, "val_loss": 5.0})
    second.close()
    assert tensorboard_scalars(tmp_path / "tensorboard")["train/loss"] == [(1, 11.0), (2, 12.0), (3, 23.0), (4, 24.0)]
    with open(tmp_path / "metrics.csv", newline="") as f:
        rows = [(int(r["step"]), float(r["train/loss"]), r["val/loss"]) for r in csv.DictReader(f)]
    assert rows == [(1, 11.0, ""), (2, 12.0, ""), (3, 23.0, "5.0"), (4, 24.0, "5.0")]


def test_report_to_flag():
    assert parse_report_to("tensorboard, csv") == ("tensorboard", "csv") and parse_report_to("none") == ()
    assert parse_report_to(None) == () and problems(("csv", "wandb", "tensorboard")) == []
    assert problems(("mlflow",)) == ["--report-to: unknown tracker(s) mlflow; choose any of tensorboard, wandb, csv"]
