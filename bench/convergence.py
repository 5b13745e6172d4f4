"""Does a single-matrix quantum replacement converge like the classical model? (the paper's claim)

    python bench/convergence.py --model 8m --steps 300 --out runs/convergence

Trains the same preset with --quantum none, wq and wgate (same data, seed and schedule) through
`trainer.main`, one after the other (each run resumes if interrupted), then prints a table and
writes OUT/convergence.png with every variant's train and validation loss.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path


def run(model: str, quantum: str, args: argparse.Namespace) -> Path:
    out = args.out / f"{model}-{quantum}"
    cmd = [
        sys.executable,
        "-m",
        "trainer.main",
        "--model",
        model,
        "--quantum",
        quantum,
        "--steps",
        str(args.steps),
        "--batch-size",
        str(args.batch_size),
        "--eval-every",
        str(args.eval_every),
        "--save-every",
        str(args.eval_every),
        "--out",
        str(out),
        *args.extra,
    ]
    print("$", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True)
    return out


def read(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]


def smooth(values: list[float], k: int = 10) -> list[float]:
    return [statistics.mean(values[max(0, i - k + 1) : i + 1]) for i in range(len(values))]


def plot(results: dict[str, list[dict]], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4.5))
    for i, (name, records) in enumerate(results.items()):
        color = f"C{i}"
        ax.plot(
            [r["step"] for r in records],
            smooth([r["loss"] for r in records]),
            color=color,
            lw=1,
            label=f"{name} train (10-step mean)",
        )
        evals = [r for r in records if "val_loss" in r]
        ax.plot(
            [r["step"] for r in evals], [r["val_loss"] for r in evals], "o--", color=color, label=f"{name} validation"
        )
    ax.set(xlabel="step", ylabel="cross-entropy (nats/token)", title=title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--model", default="8m")
    p.add_argument("--variants", nargs="+", default=["none", "wq", "wgate"])
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--eval-every", type=int, default=50)
    p.add_argument("--out", type=Path, default=Path("runs/convergence"))
    p.add_argument("extra", nargs="*", help="more trainer.main flags, after --")
    args = p.parse_args()
    results = {q: read(run(args.model, q, args)) for q in args.variants}
    args.out.mkdir(parents=True, exist_ok=True)
    plot(results, args.out / "convergence.png", f"{args.model}, {args.steps} steps, batch {args.batch_size}")
    print(f"\n{'quantum':8} {'train loss':>10} {'val loss':>9} {'val ppl':>8} {'tokens/s':>9} {'minutes':>8}")
    for q, records in results.items():
        last = [r for r in records if "val_loss" in r][-1]
        minutes = sum(r["seconds"] for r in records) / 60
        tps = statistics.median(r["tokens_per_s"] for r in records[5:] or records)  # past warm-up
        print(
            f"{q:8} {statistics.mean(r['loss'] for r in records[-10:]):10.3f} {last['val_loss']:9.3f} "
            f"{last['val_ppl']:8.1f} {tps:9.0f} {minutes:8.1f}"
        )
    print(f"\nplot: {args.out / 'convergence.png'}")


if __name__ == "__main__":
    main()
