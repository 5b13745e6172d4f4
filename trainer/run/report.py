"""What a run leaves behind for people: a loss plot (PNG) and a JSON summary."""

from __future__ import annotations

import statistics
from pathlib import Path


def plot_losses(records: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot([r["step"] for r in records], [r["loss"] for r in records], label="train", lw=1)
    evals = [r for r in records if "val_loss" in r]
    if evals:
        ax.plot([r["step"] for r in evals], [r["val_loss"] for r in evals], "o-", label="validation")
    ax.set(xlabel="step", ylabel="cross-entropy (nats/token)", title=path.parent.name)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def summarize(records: list[dict], params: dict, step: int, stopped: bool) -> dict:
    evals = [r for r in records if "val_loss" in r]
    timed = records[min(5, len(records) // 2) :] or records  # skip warm-up steps
    return {
        "steps": step,
        "stopped_early": stopped,
        "final_train_loss": statistics.mean(r["loss"] for r in records[-10:]) if records else None,
        "final_val_loss": evals[-1]["val_loss"] if evals else None,
        "final_val_ppl": evals[-1]["val_ppl"] if evals else None,
        "tokens_per_s": statistics.median(r["tokens_per_s"] for r in timed) if timed else None,
        "quantum_share": statistics.median(r["quantum_share"] for r in timed) if timed else None,
        "params": params,
        **hardware_usage(records),
    }


def hardware_usage(records: list[dict]) -> dict:
    """{"hardware": jobs, circuits and shots of the logged steps, and shots_total (earlier sessions
    included)} when the run's circuits ran on a hardware-like backend; {} otherwise."""
    counted = [r for r in records if "jobs" in r]
    if not counted:
        return {}
    totals = {k: sum(r[k] for r in counted) for k in ("jobs", "circuits", "shots")}
    for k in ("jobs_reused", "jobs_resubmitted"):  # a journaled provider's (trainer/run/jobs.py)
        if any(r.get(k) for r in counted):
            totals[k] = sum(r.get(k, 0) for r in counted)
    return {"hardware": {**totals, "shots_total": counted[-1]["shots_total"]}}
