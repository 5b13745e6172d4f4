"""Experiment tracking: `--report-to tensorboard,wandb,csv` (any subset; none by default), written by
rank 0 through each tool's own library (docs/design.md, "Observability").

    tracking = Tracking(("tensorboard", "csv"), run_dir, run_record, resumed_at=0)
    tracking.log({"step": 1, "loss": 2.3, "lr": 3e-4, ...})     # a log.jsonl record: every metric it holds
    tracking.close()

Every record of log.jsonl goes to every tracker, against the optimizer step: the training loss,
the learning rate, tokens/s, the circuits' share of the step and its seconds (`train/...`); the
validation loss and perplexity where the step validated (`val/...`); on a hardware-like backend
the jobs, circuits and shots the step spent, the shots of the whole run, and the jobs fetched from
an earlier session or resubmitted (`hardware/...`).

- tensorboard: `torch.utils.tensorboard.SummaryWriter` into RUN/tensorboard/ (`tensorboard --logdir
  RUN/tensorboard`); a resumed run purges the events past its checkpoint, which it replays.
- wandb: `wandb.init` into RUN/wandb/ with the run's settings (run.json) as its config, under an id
  kept in RUN/wandb/, so every session of a run is one W&B run (`resume="allow"`); the project is
  $WANDB_PROJECT (default hyqut); offline with WANDB_MODE=offline (`wandb sync` uploads it later).
- csv: RUN/metrics.csv, one row per step and a column per metric (Python's csv); a resumed run
  drops the rows past its checkpoint.

DeepSpeed's monitor writes the same three, but against samples (its own lr and timers included),
into folders under the launch directory, and its wandb monitor starts a new W&B run each session
without the run's settings; wandb drops any step logged below one it has seen, so our per-step
events and its per-sample ones cannot share a run. The libraries themselves do what is needed here.
"""

from __future__ import annotations

import csv
import json
import os
import secrets
from pathlib import Path

# log.jsonl's keys -> the trackers' names (TensorBoard tags, W&B keys, csv columns in this order)
METRICS = {
    "loss": "train/loss",
    "lr": "train/lr",
    "tokens_per_s": "train/tokens_per_s",
    "quantum_share": "train/quantum_share",
    "seconds": "train/step_seconds",
    "val_loss": "val/loss",
    "val_ppl": "val/ppl",
    "jobs": "hardware/jobs",
    "circuits": "hardware/circuits",
    "shots": "hardware/shots",
    "shots_total": "hardware/shots_total",
    "jobs_reused": "hardware/jobs_reused",
    "jobs_resubmitted": "hardware/jobs_resubmitted",
}
TENSORBOARD_DIR, WANDB_DIR, CSV_FILE = "tensorboard", "wandb", "metrics.csv"


class TensorBoardTracker:
    def __init__(self, run_dir: Path, run: dict, resumed_at: int):
        from torch.utils.tensorboard import SummaryWriter

        # a resumed run replays the steps after its checkpoint: their first events are purged
        self.writer = SummaryWriter(str(run_dir / TENSORBOARD_DIR), purge_step=resumed_at + 1 if resumed_at else None)
        if not resumed_at:
            self.writer.add_text("run", "```\n" + json.dumps(run, indent=2, sort_keys=True) + "\n```", 0)

    def log(self, step: int, values: dict[str, float]) -> None:
        for name, value in values.items():
            self.writer.add_scalar(name, value, step)
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


class WandbTracker:
    def __init__(self, run_dir: Path, run: dict, resumed_at: int):
        import wandb

        folder = run_dir / WANDB_DIR
        folder.mkdir(parents=True, exist_ok=True)
        id_file = folder / "hyqut-run-id"  # one W&B run for every session of this run
        if not id_file.exists():
            id_file.write_text(secrets.token_hex(8))
        self.wandb = wandb
        self.run = wandb.init(
            project=os.environ.get("WANDB_PROJECT", "hyqut"),
            name=run_dir.resolve().name,
            id=id_file.read_text().strip(),
            resume="allow",
            dir=str(run_dir),
            config=run,
        )
        # a resumed run replays the steps after its checkpoint: W&B keeps what it logged first (the
        # same losses: a resumed run reproduces them) and drops the replay's, below its last step

    def log(self, step: int, values: dict[str, float]) -> None:
        if step >= self.run.step:  # W&B's current step: a resumed W&B run starts past what it logged
            self.run.log(values, step=step)

    def close(self) -> None:
        self.run.finish()


class CsvTracker:
    def __init__(self, run_dir: Path, run: dict, resumed_at: int):
        self.path = run_dir / CSV_FILE
        self.columns = ["step", *METRICS.values()]
        kept = []
        if self.path.exists():  # drop the rows a resumed run replays
            with open(self.path, newline="") as f:
                kept = [row for row in csv.DictReader(f) if int(row["step"]) <= resumed_at]
        with open(self.path, "w", newline="") as f:
            writer = csv.DictWriter(f, self.columns)
            writer.writeheader()
            writer.writerows(kept)

    def log(self, step: int, values: dict[str, float]) -> None:
        with open(self.path, "a", newline="") as f:
            csv.DictWriter(f, self.columns).writerow({"step": step, **values})

    def close(self) -> None:
        pass


TRACKERS = {"tensorboard": TensorBoardTracker, "wandb": WandbTracker, "csv": CsvTracker}
PACKAGES = {"tensorboard": "tensorboard", "wandb": "wandb"}  # what each needs installed (csv: nothing)


def parse_report_to(text: str | tuple | list | None) -> tuple[str, ...]:
    """--report-to as a tuple of tracker names ("none" or "" for none)."""
    if text is None:
        return ()
    items = text.split(",") if isinstance(text, str) else list(text)
    return tuple(dict.fromkeys(i.strip() for i in items if i.strip() and i.strip() != "none"))


def problems(names: tuple[str, ...]) -> list[str]:
    """Every problem with --report-to: unknown names, missing packages; [] when fine."""
    p = []
    unknown = [n for n in names if n not in TRACKERS]
    if unknown:
        p.append(f"--report-to: unknown tracker(s) {', '.join(unknown)}; choose any of {', '.join(TRACKERS)}")
    import importlib.util

    for name in names:
        package = PACKAGES.get(name)
        if package and importlib.util.find_spec(package) is None:
            p.append(f"--report-to {name} needs the {package} package: pip install {package}")
    return p


class Tracking:
    """The trackers `names` of one session of the run in `run_dir` (rank 0 only)."""

    def __init__(self, names: tuple[str, ...], run_dir: Path, run: dict, resumed_at: int = 0):
        self.trackers = []
        try:
            for name in names:
                self.trackers.append(TRACKERS[name](run_dir, run, resumed_at))
        except BaseException:
            self.close()
            raise

    def log(self, record: dict) -> None:
        """A log.jsonl record: each metric it holds, against its step."""
        values = {METRICS[k]: float(v) for k, v in record.items() if k in METRICS and v is not None}
        for tracker in self.trackers:
            tracker.log(record["step"], values)

    def close(self) -> None:
        for tracker in self.trackers:
            tracker.close()
        self.trackers = []
