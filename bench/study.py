"""A study: what the circuit adds, over seeds. A grid of variants x seeds trained by
`trainer.main`, gathered into one JSON file, a report (Markdown) and loss curves with bands (PNG).

    python bench/study.py --model 8m --seeds 0 1 2 --steps 1000 --out runs/study-8m --results docs/results/study-8m
    python bench/study.py --model tiny --dataset chatterbot:chinese --variants none wq wq-control ...
    python bench/study.py ... -- --eval-every 50        # anything after -- goes to every run

Variants (`--variants`, names composed as BASE[+GRAD][@ray]):
  none            the classical model
  wq, wgate       that projection of every layer through the circuit
  wq-control      the same shapes with a classical map where the circuit is (--branch classical):
                  what the rank-2n_q bottleneck does without the circuit
  none-like-wq    the classical model narrowed (--ffn-hidden) to the parameter count of `wq`:
                  what "fewer parameters" does without the bottleneck
  +fd, +shift     the gradient method (default adjoint); @ray: circuits through the qworker
                  service on a local Ray pool of 2 replicas (--qbackend ray)

Every run is a normal run directory OUT/VARIANT-sSEED: a run already finished is read, not run
again; one cut short resumes from its checkpoint. The same seed gives every variant the same data
order. The report: final validation loss and perplexity as mean ± standard deviation over seeds,
each variant's paired difference from `none` (same seeds) with a 95% t-interval, tokens/s, hours
(a run's steps x its median step time: what it costs on a quiet machine, with the pauses of a
stopped or resumed run left out) and the circuit evaluations spent; for a variant that only
changes the gradient method or the executor of another in the grid (`wq+fd@ray` beside `wq`), the
largest gap between their training and validation curves, seed by seed and step by step.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from trainer.model.accounting import describe
from trainer.model.circuits import Circuits
from trainer.model.config import ModelConfig, from_preset

T95 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262}  # t(0.975, df)


@dataclass(frozen=True)
class Variant:
    """A variant name and the trainer flags it stands for."""

    name: str
    flags: tuple[str, ...]
    quantum: str
    branch: str
    grad: str

    @classmethod
    def parse(cls, name: str, model: str) -> Variant:
        base, _, backend = name.partition("@")
        base, _, grad = base.partition("+")
        grad = grad or "adjoint"
        flags: list[str] = []
        if base.startswith("none-like-"):
            quantum, branch = "none", "circuit"
            flags += ["--quantum", "none", "--ffn-hidden", str(matched_ffn(model, base.removeprefix("none-like-")))]
        elif base.endswith("-control"):
            quantum, branch = base.removesuffix("-control"), "classical"
            flags += ["--quantum", quantum, "--branch", "classical"]
        else:
            quantum, branch = base, "circuit"
            flags += ["--quantum", quantum]
        if quantum not in ("none", "wq", "wgate", "attn", "ffn"):
            raise SystemExit(f"unknown variant {name!r}: see `python bench/study.py --help`")
        if grad != "adjoint":
            flags += ["--grad", grad]
        if backend:
            if backend != "ray":
                raise SystemExit(f"unknown executor @{backend} in {name!r}: only @ray")
            flags += ["--qbackend", "ray", "--q-replicas", "2"]
        return cls(name, tuple(flags), quantum, branch, grad)


def matched_ffn(model: str, quantum: str) -> int:
    """The FFN width that gives the classical `model` the parameter count of its `quantum` variant."""
    target = describe(from_preset(model, quantum=quantum))["params"]["total"]
    base = from_preset(model)
    per_unit = 3 * base.d_model * base.n_layers  # w_gate, w_up, w_down: 3 x d_model weights per hidden unit
    total = describe(base)["params"]["total"]
    return max(1, base.ffn_hidden - round((total - target) / per_unit))


def run(variant: Variant, seed: int, args: argparse.Namespace) -> Path:
    """The run directory of `variant` with `seed`, trained (or resumed) unless it has finished."""
    out = args.out / f"{variant.name}-s{seed}"
    summary = out / "summary.json"
    if summary.exists() and json.loads(summary.read_text())["steps"] == args.steps:
        return out
    cmd = [sys.executable, "-m", "trainer.main", "--model", args.model, "--dataset", args.dataset]
    cmd += ["--steps", str(args.steps), "--batch-size", str(args.batch_size), "--seed", str(seed)]
    cmd += ["--eval-every", str(args.eval_every), "--save-every", str(args.eval_every), "--out", str(out)]
    cmd += [*variant.flags, *args.extra]
    print("$", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True)
    return out


def collect(variant: Variant, seed: int, out: Path, args: argparse.Namespace) -> dict:
    """One run's figures, from its run directory."""
    records = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    summary = json.loads((out / "summary.json").read_text())
    cfg = ModelConfig.from_dict(json.loads((out / "run.json").read_text())["model"])
    d = describe(cfg, Circuits(grad=variant.grad))
    tokens = sum(r["tokens_per_s"] * r["seconds"] for r in records)
    per_token = d["circuits_per_token"] * d["circuit"]["runs_per_training_step"] if "circuit" in d else 0
    return {
        "variant": variant.name,
        "seed": seed,
        "steps": summary["steps"],
        "params": summary["params"]["total"],
        "final_train_loss": summary["final_train_loss"],
        "final_val_loss": summary["final_val_loss"],
        "final_val_ppl": summary["final_val_ppl"],
        "tokens_per_s": summary["tokens_per_s"],
        "train_s": statistics.median(r["seconds"] for r in records) * len(records),
        "tokens": round(tokens),
        "circuit_evaluations": round(tokens * per_token),  # one-token circuits (adjoint: ~3 a token)
        "val": [[r["step"], round(r["val_loss"], 5)] for r in records if "val_loss" in r],
        "train": [[r["step"], round(r["loss"], 5)] for r in records],
    }


def summarize(runs: list[dict], variants: list[str]) -> list[dict]:
    """Per variant: mean ± std over seeds; the paired difference from `none`, and from the variant's
    classical-bottleneck control (`wq` from `wq-control`: what the circuit adds), with 95% intervals."""
    out = []
    by_name = {name: [r for r in runs if r["variant"] == name] for name in variants}
    for name, rs in by_name.items():
        if not rs:
            continue
        val = [r["final_val_loss"] for r in rs]
        row = {
            "variant": name,
            "seeds": len(rs),
            "params": rs[0]["params"],
            "val_loss_mean": statistics.mean(val),
            "val_loss_std": statistics.stdev(val) if len(val) > 1 else 0.0,
            "val_ppl_mean": statistics.mean(r["final_val_ppl"] for r in rs),
            "tokens_per_s": statistics.median(r["tokens_per_s"] for r in rs),
            "train_h": sum(r["train_s"] for r in rs) / 3600,
            "circuit_evaluations": sum(r["circuit_evaluations"] for r in rs),
        }
        if name != "none" and (diff := paired(rs, by_name.get("none", []))):
            row.update(diff_vs_none=diff[0], diff_ci95=diff[1])
        if diff := paired(rs, by_name.get(f"{name}-control", [])):
            row.update(diff_vs_control=diff[0], diff_vs_control_ci95=diff[1])
        base_name = name.partition("@")[0].partition("+")[0]
        if base_name != name and base_name in variants:
            row.update(gap_vs=base_name, **largest_gaps(rs, by_name[base_name]))
        out.append(row)
    return out


def paired(runs: list[dict], base: list[dict]) -> tuple[float, list[float]] | None:
    """The mean difference of final validation loss from the same seed's `base` run, and its 95%
    t-interval (infinite from one seed); None without a common seed."""
    ref = {r["seed"]: r["final_val_loss"] for r in base}
    diffs = [r["final_val_loss"] - ref[r["seed"]] for r in runs if r["seed"] in ref]
    if not diffs:
        return None
    mean = statistics.mean(diffs)
    n = len(diffs)
    half = T95.get(n - 1, 1.96) * statistics.stdev(diffs) / math.sqrt(n) if n > 1 else math.inf
    return mean, [mean - half, mean + half]


def largest_gaps(runs: list[dict], base: list[dict]) -> dict:
    """A variant that differs from `base` only in how its circuits' gradients are computed or where
    they run (BASE+GRAD@ray): the largest |difference| of its training and validation loss from the
    same seed's base run at the same step, and that step."""
    out = {}
    for key in ("train", "val"):
        gaps = []
        for r in runs:
            ref = next((dict(b[key]) for b in base if b["seed"] == r["seed"]), {})
            gaps += [(abs(y - ref[step]), step) for step, y in r[key] if step in ref]
        if gaps:
            gap, step = max(gaps)
            out[f"max_{key}_gap"], out[f"max_{key}_gap_step"] = gap, step
    return out


def report(study: dict) -> str:
    """The study as Markdown: its settings, then one row per variant."""
    c = study["config"]
    lines = [
        f"{c['model']} on {c['dataset']}: {c['steps']} steps of {c['batch_size']} x {c['context']} tokens, "
        f"seeds {', '.join(map(str, c['seeds']))}; extra flags: {' '.join(c['extra']) or 'none'}",
        "",
        "| variant | parameters | val loss (mean ± sd) | val ppl | Δ val loss vs none [95% CI] | "
        "Δ vs its control [95% CI] | tokens/s | hours (steps x median step) | circuit evaluations |",
        "|---|---|---|---|---|---|---|---|---|",
    ]

    def diff(mean, ci):
        return f"{mean:+.3f} [{ci[0]:+.3f}, {ci[1]:+.3f}]" if mean is not None else ""

    for r in study["summary"]:
        lines.append(
            f"| {r['variant']} | {r['params']:,} | {r['val_loss_mean']:.3f} ± {r['val_loss_std']:.3f} | "
            f"{r['val_ppl_mean']:.1f} | {diff(r.get('diff_vs_none'), r.get('diff_ci95'))} | "
            f"{diff(r.get('diff_vs_control'), r.get('diff_vs_control_ci95'))} | "
            f"{r['tokens_per_s']:,.0f} | {r['train_h']:.2f} | "
            f"{r['circuit_evaluations']:.3g} |"
        )
    for r in study["summary"]:
        if "max_train_gap" in r:
            lines.append(
                f"\n{r['variant']} vs {r['gap_vs']} (same seeds, same steps): largest gap in training loss "
                f"{r['max_train_gap']:.4f} (step {r['max_train_gap_step']}), in validation loss "
                f"{r.get('max_val_gap', math.nan):.4f} (step {r.get('max_val_gap_step')})"
            )
    return "\n".join(lines) + "\n"


def plot(study: dict, path: Path) -> None:
    """Validation (markers) and smoothed training loss per variant: the mean over seeds, and a band
    from the lowest to the highest seed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_train, ax_val) = plt.subplots(1, 2, figsize=(13, 4.5))
    for i, v in enumerate(r["variant"] for r in study["summary"]):
        runs = [r for r in study["runs"] if r["variant"] == v]
        for ax, key, smooth in ((ax_train, "train", 25), (ax_val, "val", 1)):
            curves = [_smooth([y for _, y in r[key]], smooth) for r in runs]
            steps = [s for s, _ in runs[0][key]][: min(map(len, curves))]
            cols = list(zip(*(c[: len(steps)] for c in curves)))
            mean = [statistics.mean(c) for c in cols]
            ax.plot(steps, mean, color=f"C{i}", lw=1.2, label=v, marker="o" if key == "val" else None, ms=3)
            ax.fill_between(steps, [min(c) for c in cols], [max(c) for c in cols], color=f"C{i}", alpha=0.2)
    c = study["config"]
    ax_train.set(xlabel="step", ylabel="training loss (25-step mean)", title=f"{c['model']} on {c['dataset']}: train")
    ax_val.set(xlabel="step", ylabel="validation loss (nats/token)", title="validation (band: lowest..highest seed)")
    for ax in (ax_train, ax_val):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _smooth(values: list[float], k: int) -> list[float]:
    return [statistics.mean(values[max(0, i - k + 1) : i + 1]) for i in range(len(values))]


def dumps(study: dict) -> str:
    """The study as JSON: its settings and summary indented, each run (with its curves) on one line."""
    head = json.dumps({k: v for k, v in study.items() if k != "runs"}, indent=1)
    runs = ",\n  ".join(json.dumps(r) for r in study["runs"])
    return f'{head[:-2]},\n "runs": [\n  {runs}\n ]\n}}\n'


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--model", default="8m")
    p.add_argument("--dataset", default="chitchat")
    default = ["none", "wq", "wgate", "wq-control", "wgate-control", "none-like-wq", "none-like-wgate"]
    p.add_argument("--variants", nargs="+", default=default)
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--steps", type=int, default=1000)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--eval-every", type=int, default=100)
    p.add_argument("--out", type=Path, default=Path("runs/study"), help="run directories (large: not committed)")
    p.add_argument("--results", type=Path, help="RESULTS.json, RESULTS.md, RESULTS.png (default: OUT/study)")
    p.add_argument("extra", nargs="*", help="more trainer.main flags for every run, after --")
    args = p.parse_args(argv)
    variants = [Variant.parse(v, args.model) for v in args.variants]
    start = time.time()
    runs = [collect(v, s, run(v, s, args), args) for v in variants for s in args.seeds]
    context = from_preset(args.model).context
    extra_context = [args.extra[i + 1] for i, f in enumerate(args.extra) if f == "--context"]
    config = {k: getattr(args, k) for k in ("model", "dataset", "variants", "seeds", "steps", "batch_size", "extra")}
    config["context"] = int(extra_context[-1]) if extra_context else context
    study = {"config": config, "summary": summarize(runs, args.variants), "runs": runs}
    results = args.results or args.out / "study"
    results.parent.mkdir(parents=True, exist_ok=True)
    Path(f"{results}.json").write_text(dumps(study))
    Path(f"{results}.md").write_text(report(study))
    plot(study, Path(f"{results}.png"))
    print(report(study))
    print(f"{results}.json, .md, .png ({time.time() - start:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
