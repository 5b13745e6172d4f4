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

Learning rates (`--lrs 1e-3 3e-3 6e-3`): every variant x seed at each rate; each variant is then
compared at its own best rate, the one with the lowest held-out training loss: the training loss
over the last 10% of the steps, averaged over seeds. Within one pass over the training data
(8m, 1,000 steps: 0.6 of a pass) every one of those batches is unseen when its loss is taken, so
the choice is made on data disjoint from the validation split the comparison is reported on (the
table says how many passes the runs made; past one the batches were seen before). Without
`--lrs`, every run uses the trainer's rate (or the `--lr` given after --).

Every run is a normal run directory OUT/VARIANT-sSEED, or OUT/VARIANT-lrLR-sSEED at a rate of
`--lrs` other than the trainer's default (3e-3: the runs of a study without `--lrs` are its runs
at that rate): a run already finished is read, not run again; one cut short resumes from its
checkpoint. The same seed gives every variant the same data order, and a variant the same initial
weights at every rate. RESULTS.json is rewritten after every run, and a run it records with its
whole-split validation is not run again where its directory is absent: a study is carried on on
another machine (or after its run directories are gone) from its results file alone.

Validation: every finished run's final weights on the whole validation split, window by window
(bench/validation.py; `--val-windows N` for the first N only), kept in the run directory; a study
whose runs lack their weights (collected from logs) reports the loss the trainer logged at the
last step on the first --eval-batches x --batch-size windows, and says so.

The report: final validation loss (mean ± sd over seeds) and the perplexity of that mean, each
variant's paired difference from `none` and from its classical-bottleneck control (same seeds)
with a 95% t-interval and the smallest difference the seeds could detect (MDE), tokens/s, hours
(a run's steps x its median step time: what it costs on a quiet machine, with the pauses of a
stopped or resumed run left out) and the circuit evaluations spent; with the whole split, the
standard error over windows of each paired difference (the validation set's own sampling
error); with several rates, every variant x rate; for a variant that only changes the gradient
method or the executor of another in the grid (`wq+fd@ray` beside `wq`), the largest gap between
their training and validation curves, seed by seed and step by step.
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

from validation import CACHE_FILE, evaluate_run

from trainer.data.corpus import DatasetError, prepare_data
from trainer.data.tokenizer import Tokenizer
from trainer.model.accounting import describe
from trainer.model.circuits import Circuits
from trainer.model.config import ModelConfig, from_preset
from trainer.run.checkpoint import read_run
from trainer.run.config import TrainConfig

T95 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262}  # t(0.975, df)
T80 = {1: 1.376, 2: 1.061, 3: 0.978, 4: 0.941, 5: 0.920, 6: 0.906, 7: 0.896, 8: 0.889, 9: 0.883}  # t(0.80, df)
DEFAULT_LR = TrainConfig().lr  # a run at this rate keeps the directory name of a study without --lrs
SELECTION_SHARE = 0.1  # the rate is chosen on the training loss of this last share of the steps


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


def lr_tag(lr: float) -> str:
    """A rate as a directory name part: 1e-3, 6e-3, 2.5e-4."""
    mantissa, exponent = f"{lr:e}".split("e")
    return f"{mantissa.rstrip('0').rstrip('.')}e{int(exponent)}"


def run_dir(out: Path, variant: str, seed: int, lr: float | None) -> Path:
    """OUT/VARIANT-sSEED at the trainer's rate (or the --lr after --), OUT/VARIANT-lrLR-sSEED at another."""
    if lr is None or math.isclose(lr, DEFAULT_LR):
        return out / f"{variant}-s{seed}"
    return out / f"{variant}-lr{lr_tag(lr)}-s{seed}"


def run(variant: Variant, seed: int, lr: float | None, args: argparse.Namespace) -> Path:
    """The run directory of `variant` with `seed` at `lr` (None: the trainer's, or the --lr after --),
    trained (or resumed) unless it has finished."""
    out = run_dir(args.out, variant.name, seed, lr)
    summary = out / "summary.json"
    if summary.exists() and json.loads(summary.read_text())["steps"] == args.steps:
        return out
    cmd = [sys.executable, "-m", "trainer.main", "--model", args.model, "--dataset", args.dataset]
    cmd += ["--steps", str(args.steps), "--batch-size", str(args.batch_size), "--seed", str(seed)]
    cmd += ["--eval-every", str(args.eval_every), "--save-every", str(args.eval_every), "--out", str(out)]
    cmd += ["--lr", f"{lr:g}"] if lr is not None else []
    cmd += [*variant.flags, *args.extra]
    print("$", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True)
    return out


def collect(variant: Variant, seed: int, out: Path, args: argparse.Namespace, lr: float | None = None) -> dict:
    """One run's figures, from its run directory (and its whole-split validation, bench/validation.py)."""
    records = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    summary = json.loads((out / "summary.json").read_text())
    saved = read_run(out)
    if lr is not None and not math.isclose(saved["train"]["lr"], lr):
        raise SystemExit(f"{out} holds a run at lr {saved['train']['lr']:g}, not {lr:g}: move it, or use another --out")
    cfg = ModelConfig.from_dict(saved["model"])
    d = describe(cfg, Circuits(grad=variant.grad))
    tokens = sum(r["tokens_per_s"] * r["seconds"] for r in records)
    per_token = d["circuits_per_token"] * d["circuit"]["runs_per_training_step"] if "circuit" in d else 0
    record = {
        "variant": variant.name,
        "seed": seed,
        "lr": saved["train"]["lr"],
        "steps": summary["steps"],
        "params": summary["params"]["total"],
        "final_train_loss": summary["final_train_loss"],
        "final_val_loss": summary["final_val_loss"],  # as logged: the first --eval-batches x --batch-size windows
        "final_val_ppl": summary["final_val_ppl"],
        "tokens_per_s": summary["tokens_per_s"],
        "train_s": statistics.median(r["seconds"] for r in records) * len(records),
        "tokens": round(tokens),
        "circuit_evaluations": round(tokens * per_token),  # one-token circuits (adjoint: ~3 a token)
        "val": [[r["step"], round(r["val_loss"], 5)] for r in records if "val_loss" in r],
        "train": [[r["step"], round(r["loss"], 5)] for r in records],
    }
    if split := whole_split(out, summary["steps"], args.val_windows):
        record["val_split"] = {k: split[k] for k in ("windows", "loss", "se", "losses")}
    return record


def whole_split(out: Path, steps: int, windows: int | None) -> dict | None:
    """The final weights on the validation split (bench/validation.py): computed from model.pt, or
    read from the run directory where a run came back without its weights; None if neither."""
    if (out / "model.pt").exists():
        result = evaluate_run(out, windows)
        return result if result["step"] == steps else None  # weights of an earlier step: not the final ones
    kept = out / CACHE_FILE
    if kept.exists() and (result := json.loads(kept.read_text()))["step"] == steps:
        return result
    return None


def corpus_sizes(out: Path, dataset: str, context: int) -> tuple[int | None, int | None]:
    """(tokens of the training split, windows of `context` tokens in the validation split) of the
    corpus a run trained on; (None, None) where it cannot be loaded here."""
    path = out / "tokenizer.json"
    vocab = ModelConfig.from_dict(read_run(out)["model"]).vocab_size
    try:
        corpus = prepare_data(dataset, vocab, tokenizer=Tokenizer.load(path) if path.exists() else None)
    except DatasetError:
        return None, None
    n_windows = max(0, (len(corpus.validation) - 1) // context)  # BatchSampler's, unshuffled
    return len(corpus.train), n_windows


def selection_loss(run: dict) -> float:
    """The training loss over the last SELECTION_SHARE of the steps: within one pass over the data,
    the loss of batches the model had not seen (held out from what it had trained on)."""
    k = max(1, math.ceil(SELECTION_SHARE * len(run["train"])))
    return statistics.mean(y for _, y in run["train"][-k:])


def val_loss(run: dict, measure: str) -> float:
    """A run's final validation loss: on the whole split ("split") or as the trainer logged it."""
    return run["val_split"]["loss"] if measure == "split" else run["final_val_loss"]


def choose_lrs(runs: list[dict], variants: list[str], measure: str) -> tuple[dict[str, float], list[dict]]:
    """Each variant's rate with the lowest mean selection loss over seeds, and one row per variant and
    rate: the selection loss and the validation loss (mean ± sd over seeds), and whether it was chosen."""
    best, rows = {}, []
    for name in variants:
        by_lr: dict[float, list[dict]] = {}
        for r in runs:
            if r["variant"] == name:
                by_lr.setdefault(r["lr"], []).append(r)
        if not by_lr:
            continue
        score = {lr: statistics.mean(selection_loss(r) for r in rs) for lr, rs in by_lr.items()}
        best[name] = min(score, key=lambda lr: (score[lr], lr))
        for lr in sorted(by_lr):
            sel, val = [selection_loss(r) for r in by_lr[lr]], [val_loss(r, measure) for r in by_lr[lr]]
            rows.append(
                {
                    "variant": name,
                    "lr": lr,
                    "seeds": len(val),
                    "selection_loss_mean": statistics.mean(sel),
                    "selection_loss_std": _sd(sel),
                    "val_loss_mean": statistics.mean(val),
                    "val_loss_std": _sd(val),
                    "chosen": lr == best[name],
                }
            )
    return best, rows


def analyse(runs: list[dict], config: dict) -> dict:
    """The study's figures from its runs: "summary" (each variant at its chosen rate) and, with
    several rates, "sweep" (every variant x rate)."""
    measure = config["validation"]["measure"]
    best, sweep = choose_lrs(runs, config["variants"], measure)
    chosen = [r for r in runs if r["lr"] == best[r["variant"]]]
    out = {"summary": summarize(chosen, config["variants"], measure)}
    if len(config["lrs"]) > 1:
        out["sweep"] = sweep
    return out


def summarize(runs: list[dict], variants: list[str], measure: str = "logged") -> list[dict]:
    """Per variant: mean ± std over seeds; the paired difference from `none`, and from the variant's
    classical-bottleneck control (`wq` from `wq-control`: what the circuit adds), with 95% intervals."""
    out = []
    by_name = {name: [r for r in runs if r["variant"] == name] for name in variants}
    for name, rs in by_name.items():
        if not rs:
            continue
        val = [val_loss(r, measure) for r in rs]
        row = {
            "variant": name,
            "lr": rs[0]["lr"],
            "seeds": len(rs),
            "params": rs[0]["params"],
            "val_loss_mean": statistics.mean(val),
            "val_loss_std": _sd(val),
            "val_ppl": math.exp(statistics.mean(val)),
            "tokens_per_s": statistics.median(r["tokens_per_s"] for r in rs),
            "train_h": sum(r["train_s"] for r in rs) / 3600,
            "circuit_evaluations": sum(r["circuit_evaluations"] for r in rs),
        }
        if measure == "split":
            row["val_se_windows"] = statistics.mean(r["val_split"]["se"] for r in rs)
        for base, key in (("none", "diff"), (f"{name}-control", "diff_vs_control")):
            if base != name and (d := paired(rs, by_name.get(base, []), measure)):
                prefix = "diff_vs_none" if key == "diff" else key
                row.update({prefix: d["mean"], f"{key}_ci95": d["ci95"], f"{key}_mde": d["mde"]})
                if "se_windows" in d:
                    row[f"{key}_se_windows"] = d["se_windows"]
        base_name = name.partition("@")[0].partition("+")[0]
        if base_name != name and base_name in variants:
            row.update(gap_vs=base_name, **largest_gaps(rs, by_name[base_name]))
        out.append(row)
    return out


def paired(runs: list[dict], base: list[dict], measure: str = "logged") -> dict | None:
    """The mean difference of final validation loss from the same seed's `base` run: "mean", its 95%
    t-interval "ci95" (infinite from one seed), "mde" (the smallest true difference these seeds would
    detect 80% of the time at the 5% level, with the differences' observed sd: (t(0.975, n-1) +
    t(0.80, n-1)) sd / sqrt(n); None from one seed) and, on the whole split, "se_windows" (the
    standard error over windows of the difference averaged over seeds: the validation set's own
    sampling error, which the interval leaves out). None without a common seed."""
    ref = {r["seed"]: r for r in base}
    pairs = [(r, ref[r["seed"]]) for r in runs if r["seed"] in ref]
    if not pairs:
        return None
    diffs = [val_loss(a, measure) - val_loss(b, measure) for a, b in pairs]
    mean, n = statistics.mean(diffs), len(diffs)
    se = statistics.stdev(diffs) / math.sqrt(n) if n > 1 else math.inf
    half = T95.get(n - 1, 1.96) * se
    out = {"mean": mean, "ci95": [mean - half, mean + half], "mde": (T95.get(n - 1, 1.96) + T80.get(n - 1, 0.842)) * se}
    if n == 1:
        out["mde"] = None
    if measure == "split":
        per_window = [
            statistics.mean(a_w - b_w for a_w, b_w in window)
            for window in zip(*(zip(a["val_split"]["losses"], b["val_split"]["losses"]) for a, b in pairs))
        ]
        out["se_windows"] = _sd(per_window) / math.sqrt(len(per_window))
    return out


def _sd(values: list[float]) -> float:
    return statistics.stdev(values) if len(values) > 1 else 0.0


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


def windows_phrase(windows: int, split_windows: int | None, context: int) -> str:
    """Which validation windows, in words."""
    if split_windows is None:
        return f"the first {windows} windows of {context} tokens of the validation split"
    if split_windows == 1:
        return f"the validation split's only window of {context} tokens"
    if windows >= split_windows:
        return f"all {split_windows} windows of {context} tokens of the validation split"
    return f"the first {windows} of the validation split's {split_windows} windows of {context} tokens"


def val_label(v: dict) -> str:
    """The validation column's header: which windows its numbers used."""
    if v["split_windows"] is not None and v["windows"] >= v["split_windows"]:
        return "whole split" if v["split_windows"] > 1 else "the split's only window"
    return f"first {v['windows']} windows"


def validation_note(study: dict) -> str:
    """Which validation the table's numbers used, and what their intervals leave out."""
    c, v = study["config"], study["config"]["validation"]
    where = windows_phrase(v["windows"], v["split_windows"], c["context"])
    if v["windows"] > 1:
        where += f" ({v['windows'] * c['context']:,} tokens)"
    these = "these windows" if v["windows"] > 1 else "this window"
    if v["measure"] == "split":
        se = [r["val_se_windows"] for r in study["summary"]]
        return (
            f"Validation: each run's final weights on {where}; standard error of a run's loss over "
            f"the windows {min(se):.4f}-{max(se):.4f}. The intervals are over seeds; the windows' own sampling "
            "error of each Δ is below the table."
        )
    return (
        f"Validation: the loss the trainer logged at the last step, on {where}. The intervals are over seeds and "
        f"leave out the sampling error of {these}."
    )


def report(study: dict) -> str:
    """The study as Markdown: its settings, which validation, then one row per variant (and, with
    several learning rates, one per variant and rate)."""
    c = study["config"]
    lrs = ", ".join(f"{lr:g}" for lr in c["lrs"])
    passes = ""
    if c.get("train_tokens"):
        seen = c["steps"] * c["batch_size"] * c["context"] / c["train_tokens"]
        passes = f" ({seen:.2f} passes over the training data)"
    lines = [
        f"{c['model']} on {c['dataset']}: {c['steps']} steps of {c['batch_size']} x {c['context']} tokens"
        f"{passes}, seed{'s' if len(c['seeds']) > 1 else ''} {', '.join(map(str, c['seeds']))}, "
        f"learning rate{'s' if len(c['lrs']) > 1 else ''} {lrs}; extra flags: {' '.join(c['extra']) or 'none'}",
        "",
        validation_note(study),
        "",
        f"| variant | lr | parameters | val loss, {val_label(c['validation'])} (mean ± sd) | "
        "val ppl (exp of the mean) | Δ val loss vs none [95% CI], MDE | Δ vs its control [95% CI], MDE | tokens/s | "
        "hours (steps x median step) | circuit evaluations |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]

    def diff(r, key):
        mean = r.get("diff_vs_none" if key == "diff" else key)
        if mean is None:
            return ""
        ci, mde = r[f"{key}_ci95"], r[f"{key}_mde"]
        return f"{mean:+.3f} [{ci[0]:+.3f}, {ci[1]:+.3f}], " + (f"{mde:.3f}" if mde is not None else "-")

    for r in study["summary"]:
        lines.append(
            f"| {r['variant']} | {r['lr']:g} | {r['params']:,} | {r['val_loss_mean']:.3f} ± {r['val_loss_std']:.3f} | "
            f"{r['val_ppl']:.1f} | {diff(r, 'diff')} | {diff(r, 'diff_vs_control')} | "
            f"{r['tokens_per_s']:,.0f} | {r['train_h']:.2f} | {r['circuit_evaluations']:.3g} |"
        )
    if any("diff_mde" in r or "diff_vs_control_mde" in r for r in study["summary"]):
        lines.append(
            "\nMDE: the smallest true Δ these seeds would detect 80% of the time at the 5% level, "
            "(t(0.975, n-1) + t(0.80, n-1)) x sd / √n with the paired differences' observed sd "
            "(n seeds; '-': one seed)."
        )
    se = [
        f"{r['variant']} {what} {r[f'{key}_se_windows']:.4f}"
        for r in study["summary"]
        for key, what in (("diff", "vs none"), ("diff_vs_control", "vs its control"))
        if f"{key}_se_windows" in r
    ]
    if se:
        lines.append(f"\nStandard error over the validation windows of each Δ: {'; '.join(se)}.")
    for r in study["summary"]:
        if "max_train_gap" in r:
            lines.append(
                f"\n{r['variant']} vs {r['gap_vs']} (same seeds, same steps): largest gap in training loss "
                f"{r['max_train_gap']:.4f} (step {r['max_train_gap_step']}), in validation loss "
                f"{r.get('max_val_gap', math.nan):.4f} (step {r.get('max_val_gap_step')})"
            )
    if "sweep" in study:
        share = f"{SELECTION_SHARE:.0%}"
        lines += [
            "",
            f"Every variant at every learning rate; each variant's rate is chosen (✓) on the training loss over the "
            f"last {share} of the steps (mean over seeds), batches unseen before their step within one pass over "
            "the data:",
            "",
            f"| variant | lr | seeds | training loss, last {share} of steps (mean ± sd) | "
            f"val loss, {val_label(c['validation'])} (mean ± sd) | chosen |",
            "|---|---|---|---|---|---|",
        ]
        for r in study["sweep"]:
            lines.append(
                f"| {r['variant']} | {r['lr']:g} | {r['seeds']} | {r['selection_loss_mean']:.3f} ± "
                f"{r['selection_loss_std']:.3f} | {r['val_loss_mean']:.3f} ± {r['val_loss_std']:.3f} | "
                f"{'✓' if r['chosen'] else ''} |"
            )
    return "\n".join(lines) + "\n"


LINESTYLES = ["-", "--", "-.", ":"]
MARKERS = ["o", "s", "^", "D", "v", "P", "X", "*"]
SMOOTH = 25  # training loss: a centred mean over this many steps


def plot(study: dict, path: Path) -> None:
    """Training loss (a centred mean over SMOOTH steps) and logged validation loss per variant at its
    chosen rate: the mean over seeds, with a band from the lowest to the highest seed (none for one
    seed); with several rates, a third panel of the final validation loss against the rate."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sweep = "sweep" in study
    fig, axes = plt.subplots(1, 3 if sweep else 2, figsize=(19 if sweep else 13, 5))
    ax_train, ax_val = axes[0], axes[1]
    n_seeds = set()
    for i, row in enumerate(study["summary"]):
        runs = [r for r in study["runs"] if r["variant"] == row["variant"] and r["lr"] == row["lr"]]
        n_seeds.add(len(runs))
        style = dict(color=f"C{i}", ls=LINESTYLES[i % len(LINESTYLES)], zorder=3 + i)
        label = f"{row['variant']} (lr {row['lr']:g}, {len(runs)} seed{'s' if len(runs) > 1 else ''})"
        for ax, key in ((ax_train, "train"), (ax_val, "val")):
            curves = [[y for _, y in r[key]] for r in runs]
            if key == "train":
                curves = [_smooth(c, SMOOTH) for c in curves]
            steps = [s for s, _ in runs[0][key]][: min(map(len, curves))]
            cols = list(zip(*(c[: len(steps)] for c in curves)))
            mean = [statistics.mean(c) for c in cols]
            marker = dict(marker=MARKERS[i % len(MARKERS)], ms=4) if key == "val" else {}
            ax.plot(steps, mean, lw=1.3, label=label, **style, **marker)
            if len(runs) > 1:
                ax.fill_between(steps, [min(c) for c in cols], [max(c) for c in cols], color=f"C{i}", alpha=0.15, lw=0)
    c = study["config"]
    seeds = f"{max(n_seeds)} seeds" if max(n_seeds) > 1 else "1 seed"
    ax_train.set(
        xlabel="step",
        ylabel=f"training loss (centred {SMOOTH}-step mean, nats/token)",
        title=f"{c['model']} on {c['dataset']}: training ({seeds})",
    )
    v = c["validation"]
    logged = {**v, "windows": v.get("logged_windows", v["windows"])}
    ax_val.set(xlabel="step", ylabel=f"validation loss as logged ({val_label(logged)}, nats/token)", title="validation")
    if sweep:
        ax = axes[2]
        measure = c["validation"]["measure"]
        for i, name in enumerate(dict.fromkeys(r["variant"] for r in study["sweep"])):
            rows = [r for r in study["sweep"] if r["variant"] == name]
            lrs = [r["lr"] for r in rows]
            ax.plot(lrs, [r["val_loss_mean"] for r in rows], color=f"C{i}", ls=LINESTYLES[i % len(LINESTYLES)],
                    marker=MARKERS[i % len(MARKERS)], label=name)  # fmt: skip
            dots = [(r["lr"], val_loss(r, measure)) for r in study["runs"] if r["variant"] == name]
            ax.scatter(*zip(*dots), color=f"C{i}", s=8, alpha=0.5)
            (chosen,) = [r for r in rows if r["chosen"]]
            ax.scatter([chosen["lr"]], [chosen["val_loss_mean"]], color=f"C{i}", s=160, marker="*", zorder=5)
        ax.set_xscale("log")
        ax.set_xticks(c["lrs"], [f"{lr:g}" for lr in c["lrs"]])
        ax.minorticks_off()
        ax.set(xlabel="peak learning rate", ylabel=f"final validation loss, {val_label(c['validation'])}",
               title="every rate: mean over seeds (line), each seed (dots), chosen (star)")  # fmt: skip
    for ax in axes:
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    band = "bands: lowest to highest seed; lines: mean over seeds" if max(n_seeds) > 1 else "one seed: no band"
    fig.text(0.5, 0.01, f"{band}; training loss: mean over the {SMOOTH} steps centred on each step (fewer at the "
             f"start, where the window shrinks to stay centred; the last {SMOOTH // 2} steps not drawn)", ha="center",
             fontsize=8)  # fmt: skip
    fig.tight_layout(rect=(0, 0.04, 1, 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _smooth(values: list[float], k: int) -> list[float]:
    """A centred moving mean over k values. At the start its window shrinks symmetrically (the first
    point is the first value: no trailing-mean lag, no kink where a window fills; the loss falls there
    by far more than a batch's noise). At the end, where the curve is flat and a narrow window would
    draw one batch's noise, the last k // 2 points, which no full centred window fits, are left out."""
    half = k // 2
    return [statistics.mean(values[i - min(half, i) : i + min(half, i) + 1]) for i in range(len(values) - half)]


def dumps(study: dict) -> str:
    """The study as JSON: its settings and summary indented, each run (with its curves) on one line."""
    head = json.dumps({k: v for k, v in study.items() if k != "runs"}, indent=1)
    runs = ",\n  ".join(json.dumps(r) for r in study["runs"])
    return f'{head[:-2]},\n "runs": [\n  {runs}\n ]\n}}\n'


def validation_config(runs: list[dict], args: argparse.Namespace, split_windows: int | None) -> dict:
    """Which validation the study reports: the whole split when every run has it, else as logged."""
    eval_batches = [int(args.extra[i + 1]) for i, f in enumerate(args.extra) if f == "--eval-batches"]
    logged = (eval_batches[-1] if eval_batches else TrainConfig().eval_batches) * args.batch_size
    logged = min(logged, split_windows) if split_windows is not None else logged
    missing = [f"{r['variant']}-s{r['seed']} (lr {r['lr']:g})" for r in runs if "val_split" not in r]
    if missing:
        print(f"no weights or validation.json, so the logged validation for every run: {', '.join(missing)}")
        return {"measure": "logged", "windows": logged, "split_windows": split_windows}
    windows = min(r["val_split"]["windows"] for r in runs)
    return {"measure": "split", "windows": windows, "split_windows": split_windows, "logged_windows": logged}


def effective_lr(lr: float | None, args: argparse.Namespace) -> float:
    """The rate a run trains at: `lr`, else the --lr given after --, else the trainer's."""
    given = [float(args.extra[i + 1]) for i, f in enumerate(args.extra) if f == "--lr"]
    return lr if lr is not None else given[-1] if given else DEFAULT_LR


SETTINGS = ("model", "dataset", "steps", "batch_size", "extra")  # a study's runs share these


def recorded(path: Path, args: argparse.Namespace) -> tuple[dict, dict]:
    """The settings and the runs a study's RESULTS.json already records (each with its whole-split
    validation), by (variant, rate, seed): a study carried on on another machine, without the run
    directories, does not run them again. Refused if the file records a study of other settings."""
    if not path.exists():
        return {}, {}
    prior = json.loads(path.read_text())
    for key in SETTINGS:
        if prior["config"][key] != getattr(args, key):
            raise SystemExit(
                f"{path} records a study with {key} {prior['config'][key]!r}, not {getattr(args, key)!r}: "
                "move it, or use another --results"
            )
    runs = {(r["variant"], r["lr"], r["seed"]): r for r in prior["runs"] if "val_split" in r}
    return prior["config"], runs


def write(results: Path, runs: list[dict], args: argparse.Namespace, prior: dict, here: Path | None) -> None:
    """RESULTS.json, .md and .png from the runs finished so far; `here`: a run directory of them on this
    machine (the corpus's sizes), None where every run is on record only."""
    runs = sorted(runs, key=lambda r: (args.variants.index(r["variant"]), r["lr"], args.seeds.index(r["seed"])))
    context = from_preset(args.model).context
    extra_context = [args.extra[i + 1] for i, f in enumerate(args.extra) if f == "--context"]
    config = {"model": args.model, "dataset": args.dataset}
    config["variants"] = [v for v in args.variants if any(r["variant"] == v for r in runs)]
    config["seeds"] = [s for s in args.seeds if any(r["seed"] == s for r in runs)]
    config.update(steps=args.steps, batch_size=args.batch_size, extra=args.extra)
    config["context"] = int(extra_context[-1]) if extra_context else context
    config["lrs"] = sorted({r["lr"] for r in runs})
    if here is not None:
        config["train_tokens"], split_windows = corpus_sizes(here, args.dataset, config["context"])
    else:
        config["train_tokens"], split_windows = prior["train_tokens"], prior["validation"]["split_windows"]
    config["validation"] = validation_config(runs, args, split_windows)
    study = {"config": config, **analyse(runs, config), "runs": runs}
    results.parent.mkdir(parents=True, exist_ok=True)
    Path(f"{results}.json").write_text(dumps(study))
    Path(f"{results}.md").write_text(report(study))
    plot(study, Path(f"{results}.png"))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--model", default="8m")
    p.add_argument("--dataset", default="chitchat")
    default = ["none", "wq", "wgate", "wq-control", "wgate-control", "none-like-wq", "none-like-wgate"]
    p.add_argument("--variants", nargs="+", default=default)
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--lrs", nargs="+", type=float, help="peak learning rates: each variant compared at its best")
    p.add_argument("--steps", type=int, default=1000)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--eval-every", type=int, default=100)
    p.add_argument("--val-windows", type=int, help="validate the final weights on the first N windows (default: all)")
    p.add_argument("--out", type=Path, default=Path("runs/study"), help="run directories (large: not committed)")
    p.add_argument("--results", type=Path, help="RESULTS.json, RESULTS.md, RESULTS.png (default: OUT/study)")
    p.add_argument("extra", nargs="*", help="more trainer.main flags for every run, after --")
    args = p.parse_args(argv)
    if args.lrs and "--lr" in args.extra:
        raise SystemExit("give the learning rates with --lrs, not --lr after --")
    variants = [Variant.parse(v, args.model) for v in args.variants]
    lrs = args.lrs or [None]
    results = args.results or args.out / "study"
    prior, kept = recorded(Path(f"{results}.json"), args)
    start = time.time()
    # seed by seed (every variant and rate of a seed, then the next): a stopped sweep has whole seeds to report
    grid = {(v.name, effective_lr(lr, args), s): (v, lr, s) for s in args.seeds for v in variants for lr in lrs}
    away = {key for key, (v, lr, s) in grid.items() if not run_dir(args.out, v.name, s, lr).exists()}
    done = {key: kept[key] for key in grid if key in kept}  # on record: kept in every write until reached
    here = None  # the last run directory of this invocation
    for key, (v, lr, s) in grid.items():
        if key not in done or key not in away:  # to run, or to collect again from its directory here
            here = run(v, s, lr, args)
            done[key] = collect(v, s, here, args, lr)
            write(results, list(done.values()), args, prior, here)  # a stopped study keeps every finished run
    if here is None:  # every run on record: its report again
        write(results, list(done.values()), args, prior, None)
    print(report(json.loads(Path(f"{results}.json").read_text())))
    print(f"{results}.json, .md, .png ({time.time() - start:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
