"""The figures docs/reproduction.md quotes in its prose, computed from the committed results
(docs/results/*.json), section by section.

    python bench/findings.py          # every section's figures, as the document writes them

The tables of the document are bench/study.py's, unedited (tests/test_bench.py); these are the
figures of its sentences. tests/test_findings.py checks both ways: every number in a section's prose
is one of that section's figures here (or a constant of `CONSTANTS`, which says why it is not data),
and every figure here is in its section. A figure is text as the prose writes it ("-0.122",
"[+0.004, +0.017]", "4.4%"): signed where the prose gives a sign.
"""

from __future__ import annotations

import json
import math
import statistics
import sys
from functools import cache
from pathlib import Path

RESULTS = Path(__file__).resolve().parents[1] / "docs" / "results"

# Numbers in the prose that are not results: each with why.
CONSTANTS = {
    "2511.10653": "the paper's arXiv number",
    "10": "qubits of the paper's circuit (README)",
    "10%": "the paper's stated parameter saving; the share of steps the learning rate is chosen on",
    "20": "the bottleneck's width, 2·n_q",
    "0": "an interval that excludes 0",
    "1": "MDEs near 1",
    "2": "cores of the CPU machine; replicas of the Ray pool; d_model -> 2·n_q",
    "3": "~3 circuit evaluations a token with adjoint gradients (bench/study.py's accounting)",
    "121": "circuits a token with fd: 1 + 2 x 60 (README)",
    "60": "shifted angles of the default circuit, |Θ| + 2·n_q = 40 + 20 (README)",
    "95%": "the intervals' confidence",
    "0.01": "the trainer's default --fd-delta (the fd study ran with it)",
    "80%": "the MDE's power",
    "5%": "the MDE's significance level",
    "25": "the plots' centred training-loss mean (bench/study.py's SMOOTH)",
    "12": "the steps at the end of a plot that no centred 25-step window fits",
}


@cache
def load(name: str) -> dict:
    return json.loads((RESULTS / f"{name}.json").read_text())


def runs(study: dict, variant: str, lr: float | None = None) -> list[dict]:
    """A variant's runs by seed; with `lr`, only those at that rate (a sweep)."""
    chosen = (r for r in study["runs"] if r["variant"] == variant and lr in (None, r["lr"]))
    return sorted(chosen, key=lambda r: r["seed"])


def row(study: dict, variant: str) -> dict:
    return next(r for r in study["summary"] if r["variant"] == variant)


def signed(x: float, nd: int = 3) -> str:
    return f"{x:+.{nd}f}"


def plain(x: float, nd: int = 3) -> str:
    return f"{x:.{nd}f}"


def sci(x: float, nd: int) -> str:
    """1.23e8, as the prose writes it."""
    mantissa, exponent = f"{x:.{nd}e}".split("e")
    return f"{mantissa}e{int(exponent)}"


def span(values: list[float], sign: bool = True) -> str:
    """The range of some differences: "+0.003 to +0.012"."""
    fmt = "+.3f" if sign else ".3f"
    return f"{min(values):{fmt}} to {max(values):{fmt}}"


def interval(ci: list[float]) -> str:
    return f"[{ci[0]:+.3f}, {ci[1]:+.3f}]"


def final(study: dict, run: dict) -> float:
    """A run's final validation loss as its study's table reports it: on the whole split, or as logged."""
    return run["val_split"]["loss"] if study["config"]["validation"]["measure"] == "split" else run["final_val_loss"]


def final_diffs(study: dict, a: str, b: str, lrs: dict[str, float] | None = None) -> list[float]:
    """Seed by seed: a's final validation loss (as the study's table reports it) minus b's; with
    `lrs`, each variant's runs at its rate there (a sweep), else all its runs (a study of one rate)."""
    rate = (lambda name: None) if lrs is None else lrs.get
    ref = {r["seed"]: final(study, r) for r in runs(study, b, rate(b))}
    return [final(study, r) - ref[r["seed"]] for r in runs(study, a, rate(a)) if r["seed"] in ref]


def curve_gap(study: dict, a: str, b: str) -> dict[int, float]:
    """Evaluation step -> a's validation loss minus b's, averaged over the seeds both ran."""
    pairs = [(dict(x["val"]), dict(y["val"])) for x in runs(study, a) for y in runs(study, b) if x["seed"] == y["seed"]]
    steps = sorted(set.intersection(*(set(p) & set(q) for p, q in pairs)))
    return {s: statistics.mean(p[s] - q[s] for p, q in pairs) for s in steps}


def mean_curve(study: dict, variant: str) -> dict[int, float]:
    curves = [dict(r["val"]) for r in runs(study, variant)]
    return {s: statistics.mean(c[s] for c in curves) for s in curves[0]}


def fewer_params(study: dict, variant: str) -> str:
    return f"{1 - row(study, variant)['params'] / row(study, 'none')['params']:.1%}"


def passes(study: dict) -> str:
    """Passes over the training data a run made, as the table's header gives it."""
    c = study["config"]
    return f"{c['steps'] * c['batch_size'] * c['context'] / c['train_tokens']:.2f}"


def lr_text(lr: float) -> str:
    """3e-3, as the prose writes a rate."""
    return sci(lr, 0)


def pct(sorted_values: list[float], q: float) -> float:
    """The q-quantile of sorted values (the smallest with at least a share q at or below it)."""
    return sorted_values[math.ceil(q * len(sorted_values)) - 1]


def windows_text(study: dict) -> str:
    """Which validation windows a study's table reports, as the prose writes it."""
    c, v = study["config"], study["config"]["validation"]
    tokens = f"({v['windows'] * c['context']:,} tokens)"
    if v["measure"] == "split":
        return f"all {v['windows']} windows of the split {tokens}"
    return f"first {v['windows']} of the split's {v['split_windows']} windows {tokens}"


def tokens_per_run(study: dict) -> str:
    c = study["config"]
    n = c["steps"] * c["batch_size"] * c["context"]
    return f"{n / 1e6:.1f}M" if n >= 1e6 else f"{n / 1e3:.0f}k"


def tiny_zh() -> dict[str, str]:
    s = load("study-tiny-zh")
    c = s["config"]
    wq, ctl, control = row(s, "wq"), row(s, "wq-control"), "diff_vs_control"
    return {
        "seeds": f"{len(c['seeds'])} seeds",
        "vocabulary": f"{int(c['extra'][c['extra'].index('--vocab-size') + 1]):,}-token vocabulary",
        "train tokens": f"{c['train_tokens']:,} tokens",
        "window": f"one window of {c['validation']['windows'] * c['context']} tokens",
        "passes": f"{c['steps']} steps are {passes(s)} passes",
        "wq vs none": f"{signed(wq['diff_vs_none'])} {interval(wq['diff_ci95'])} (MDE {plain(wq['diff_mde'])})",
        "control vs none": f"{signed(ctl['diff_vs_none'])} {interval(ctl['diff_ci95'])}, MDE {plain(ctl['diff_mde'])}",
        "wq vs control": f"{signed(wq[control])} {interval(wq[f'{control}_ci95'])}",
        "control sd": f"sd {plain(ctl['val_loss_std'])}",
    }


def tiny_en() -> dict[str, str]:
    s = load("study-tiny-en")
    c, v = s["config"], s["config"]["validation"]
    wq, gate, ctl = row(s, "wq"), row(s, "wgate"), row(s, "wq-control")
    wgate = {r["seed"]: final(s, r) for r in runs(s, "wgate")}
    lag = max(wgate, key=wgate.get)
    others = sorted(plain(x) for seed, x in wgate.items() if seed != lag)
    narrow = {r["seed"]: final(s, r) for r in runs(s, "none-like-wgate")}
    narrow_lag = max(narrow, key=narrow.get)
    gate_ctl = [final(s, r) for r in runs(s, "wgate-control")]
    return {
        "seeds": f"{len(c['seeds'])} seeds",
        "steps and tokens": f"{c['steps']} steps ({tokens_per_run(s)} tokens a run",
        "validation": f"all {v['split_windows']} windows of the split, {v['windows'] * c['context']:,} tokens",
        "wq vs none": f"{signed(wq['diff_vs_none'])} {interval(wq['diff_ci95'])} from it (MDE {plain(wq['diff_mde'])})",
        "wq-control vs none": f"{signed(ctl['diff_vs_none'])} {interval(ctl['diff_ci95'])}",
        "wq vs control": f"{signed(wq['diff_vs_control'])} {interval(wq['diff_vs_control_ci95'])} (MDE "
        f"{plain(wq['diff_vs_control_mde'])})",
        "wgate vs none": f"{signed(gate['diff_vs_none'])} {interval(gate['diff_ci95'])}",
        "wgate lagging": f"seed {lag}: {plain(wgate[lag])} against {' and '.join(others)} for the other two",
        "none-like-wgate lagging": f"seed {narrow_lag}: {plain(narrow[narrow_lag])}",
        "wgate-control": f"sd {plain(row(s, 'wgate-control')['val_loss_std'])}, its seeds within "
        f"{plain(max(gate_ctl) - min(gate_ctl))}",
    }


def eight_m() -> dict[str, str]:
    s = load("study-8m")
    c, v = s["config"], s["config"]["validation"]
    hours = sum(r["train_s"] for r in s["runs"]) / 3600
    minutes = {name: [r["train_s"] / 60 for r in runs(s, name)] for name in c["variants"]}
    circuit = [m for name, ms in minutes.items() if name in ("wq", "wgate") for m in ms]
    classical = [m for name, ms in minutes.items() if name not in ("wq", "wgate") for m in ms]
    step_s = {name: [r["train_s"] / r["steps"] for r in runs(s, name)] for name in c["variants"]}
    narrow = [g for name in ("none-like-wq", "none-like-wgate") for g in curve_gap(s, name, "none").values()]
    gate_circuit, q_circuit = curve_gap(s, "wgate", "wgate-control"), curve_gap(s, "wq", "wq-control")
    gate_rank = curve_gap(s, "wgate-control", "none")
    wq_none, ctl_none = curve_gap(s, "wq", "none"), curve_gap(s, "wq-control", "none")
    last = max(wq_none)
    drops = [mean_curve(s, name)[last - 200] - mean_curve(s, name)[last] for name in c["variants"]]
    wq, gate, ctl, gctl = row(s, "wq"), row(s, "wgate"), row(s, "wq-control"), row(s, "wgate-control")
    nq, ng = row(s, "none-like-wq"), row(s, "none-like-wgate")

    def after(gaps: dict[int, float], step: int) -> str:
        return span([g for k, g in gaps.items() if k >= step])

    return {
        "heading": f"{c['steps']:,} steps, {len(c['seeds'])} seeds",
        "tokens and passes": f"{tokens_per_run(s)} tokens a run, {passes(s)} passes",
        "runs and hours": f"{len(s['runs'])} runs, {hours:.1f} hours",
        "run minutes": f"a classical run {min(classical):.0f}-{max(classical):.0f} minutes, a circuit run "
        f"{min(circuit):.0f}-{max(circuit):.0f}",
        "validation": windows_text(s),
        "curves": f"logged on the first {v.get('logged_windows', v['windows'])} windows",
        "fewer params": f"({fewer_params(s, 'wq')} fewer) or of",
        "fewer params wgate": f"({fewer_params(s, 'wgate')} fewer), ends",
        "narrow": f"{signed(nq['diff_vs_none'])} {interval(nq['diff_ci95'])} and {signed(ng['diff_vs_none'])} "
        f"{interval(ng['diff_ci95'])}",
        "narrow mde": f"MDEs of {plain(nq['diff_mde'])} and {plain(ng['diff_mde'])}",
        "narrow every evaluation": f"by {span(narrow, sign=False)}",
        "wq-control vs none": f"{signed(ctl['diff_vs_none'])} {interval(ctl['diff_ci95'])} "
        f"(MDE {plain(ctl['diff_mde'])})",
        "control seeds": f"ends {', '.join(plain(final(s, r)) for r in runs(s, 'wq-control'))} (seeds in order)",
        "wgate-control vs none": f"{signed(gctl['diff_vs_none'])} {interval(gctl['diff_ci95'])}, at every seed "
        f"({', '.join(signed(d) for d in final_diffs(s, 'wgate-control', 'none'))})",
        "wgate-control from 200": f"from step 200 on ({after(gate_rank, 200)})",
        "wq vs control": f"{signed(wq['diff_vs_control'])} {interval(wq['diff_vs_control_ci95'])} "
        f"({', '.join(signed(d) for d in final_diffs(s, 'wq', 'wq-control'))} by seed; MDE "
        f"{plain(wq['diff_vs_control_mde'])})",
        "wgate vs control": f"{signed(gate['diff_vs_control'])} {interval(gate['diff_vs_control_ci95'])} "
        f"({', '.join(signed(d) for d in final_diffs(s, 'wgate', 'wgate-control'))})",
        "wgate vs control steps": f"at every evaluation ({after(gate_circuit, 0)})",
        "wq vs control steps": f"{after(q_circuit, 0)} over the evaluations",
        "wq vs none": f"{signed(wq['diff_vs_none'])} {interval(wq['diff_ci95'])}, with {fewer_params(s, 'wq')} fewer",
        "speed-up": f"{row(s, 'wq-control')['tokens_per_s'] / wq['tokens_per_s']:.1f}x faster",
        "wgate vs none": f"({fewer_params(s, 'wgate')} fewer parameters) ends {signed(gate['diff_vs_none'])} "
        f"{interval(gate['diff_ci95'])}",
        "drop": f"by {span(drops, sign=False)} over the last 200 steps",
        "wq lead grows": f"from {signed(wq_none[300])} at step 300 to {signed(wq_none[last])} at the end",
        "control lead grows": f"from {signed(ctl_none[300])} to {signed(ctl_none[last])}",
        "lr": f"the same learning rate, {lr_text(c['lrs'][0])}",
        "control own rate": f"At its own rate, {lr_text(row(load('study-8m-lr'), 'wq-control')['lr'])}",
        "step times": f"{step_s['none'][0]:.2f} s at seed 0 against {min(step_s['none'][1:]):.2f}-"
        f"{max(step_s['none'][1:]):.2f} s at its other seeds",
    }


def sweep() -> dict[str, str]:
    """The learning-rate sweep (`8m`, none / wq / wq-control at three rates): each variant at the rate
    its held-out training loss chose, on the whole validation split."""
    s, study = load("study-8m-lr"), load("study-8m")
    c = s["config"]
    chosen = {r["variant"]: r["lr"] for r in s["summary"]}
    sweep_rows = {(r["variant"], r["lr"]): r for r in s["sweep"]}
    wq, ctl = row(s, "wq"), row(s, "wq-control")
    best_val = {name: min((r for r in s["sweep"] if r["variant"] == name), key=lambda r: r["val_loss_mean"])["lr"]
                for name in c["variants"]}  # fmt: skip
    agree = [name for name in c["variants"] if best_val[name] == chosen[name]]
    edge = [name for name in c["variants"] if chosen[name] == min(c["lrs"])]
    old = study["config"]["lrs"][0]
    none_cost = sweep_rows[("none", old)]["val_loss_mean"] - sweep_rows[("none", chosen["none"])]["val_loss_mean"]
    wq_old = statistics.mean(final_diffs(s, "wq", "none", {"wq": old, "none": old}))
    shared = all(r in runs(study, name) for name in c["variants"] for r in runs(s, name, old))
    ctl_old = [final(s, r) for r in runs(s, "wq-control", old)]
    hours = sum(r["train_s"] for r in s["runs"]) / 3600
    comparisons = [(wq, "diff", "none"), (wq, "diff_vs_control", "wq-control"), (ctl, "diff", "none")]
    windows_se = [r[f"{key}_se_windows"] for r, key, _ in comparisons]
    diffs = [final_diffs(s, r["variant"], base, chosen) for r, _, base in comparisons]
    seeds_se = [statistics.stdev(d) / math.sqrt(len(d)) for d in diffs]  # the seeds' standard error of each mean Δ
    return {
        "steps": f"{c['steps']:,} steps",
        "passes": f"make {passes(s)} of one",
        "runs": f"{len(s['runs'])} runs",
        "hours": f"{hours:.1f} hours",
        "chosen": ", ".join(f"{name} {lr_text(chosen[name])}" for name in c["variants"]),
        "agree": f"{len(agree)} of {len(c['variants'])}" if len(agree) < len(c["variants"]) else "every variant",
        "edge": " and ".join(edge) or "no variant",
        "none cost": f"{plain(none_cost)} nats",
        "wq vs none": f"{signed(wq['diff_vs_none'])} {interval(wq['diff_ci95'])} (MDE {plain(wq['diff_mde'])})",
        "wq vs control": f"{signed(wq['diff_vs_control'])} {interval(wq['diff_vs_control_ci95'])} (MDE "
        f"{plain(wq['diff_vs_control_mde'])})",
        "control vs none": f"{signed(ctl['diff_vs_none'])} {interval(ctl['diff_ci95'])} (MDE {plain(ctl['diff_mde'])})",
        "windows se": f"{plain(min(windows_se), 4)} to {plain(max(windows_se), 4)}",
        "seeds se": f"{plain(min(seeds_se), 4)} to {plain(max(seeds_se), 4)}",
        "wq at old": f"{signed(wq_old)} from the classical model at {lr_text(old)}",
        "shared": f"at {lr_text(old)} are the study's" if shared else f"at {lr_text(old)} are not the study's",
        "control at old": f"ends {', '.join(plain(x) for x in ctl_old)}",
    }


def fd_study() -> dict[str, str]:
    s, main = load("study-8m-fd"), load("study-8m")
    (adjoint_run,), (fd_run,) = runs(s, "wq"), runs(s, "wq+fd@ray")
    adj, fd = dict(adjoint_run["train"]), dict(fd_run["train"])
    same = 0
    while same + 1 in adj and round(adj[same + 1], 4) == round(fd[same + 1], 4):
        same += 1
    gaps = sorted(abs(fd[k] - adj[k]) for k in adj)
    long = next(dict(r["train"]) for r in runs(main, "wq") if r["seed"] == adjoint_run["seed"])  # 1,000-step schedule
    schedule = sorted(abs(long[k] - adj[k]) for k in adj)
    batch_to_batch = [abs(adj[k] - adj[k - 1]) for k in adj if k - 1 in adj]
    r_adj, r_fd = row(s, "wq"), row(s, "wq+fd@ray")
    worst = r_fd["max_train_gap_step"]
    val_adj, val_fd = dict(adjoint_run["val"]), dict(fd_run["val"])
    last = s["config"]["steps"]
    a, b = fd_run["val_split"], adjoint_run["val_split"]  # the final weights on the whole split
    window_diffs = [x - y for x, y in zip(a["losses"], b["losses"])]
    end = (
        f"{a['loss']:.5f} against {b['loss']:.5f} at step {last} on the whole split (standard error of the "
        f"difference over its windows {statistics.stdev(window_diffs) / math.sqrt(len(window_diffs)):.5f})"
    )
    return {
        "heading": f"seed {adjoint_run['seed']}, {s['config']['steps']} steps",
        "same": f"for the first {same} steps (step {same + 1} differs by {sci(abs(fd[same + 1] - adj[same + 1]), 1)})",
        "gaps": f"median {plain(statistics.median(gaps))} and 90th percentile {plain(pct(gaps, 0.9))}",
        "batch to batch": f"median change of {statistics.median(batch_to_batch):.2f}",
        "largest": f"{r_fd['max_train_gap']:.2f} at step {worst}",
        "largest losses": f"({adj[worst]:.3f} against {fd[worst]:.3f})",
        "val": f"{val_fd[100]:.3f} against {val_adj[100]:.3f} at step 100, {end}",
        "schedule": f"{main['config']['steps']:,}-step schedule",
        "schedule gaps": f"(median gap {plain(statistics.median(schedule))}, 90th percentile "
        f"{plain(pct(schedule, 0.9))})",
        "evaluations": f"{r_fd['circuit_evaluations'] / r_adj['circuit_evaluations']:.0f}x the circuit evaluations "
        f"({sci(r_fd['circuit_evaluations'], 2)} against {sci(r_adj['circuit_evaluations'], 1)}",
        "slower": f"{r_adj['tokens_per_s'] / r_fd['tokens_per_s']:.1f}x slower here ({r_fd['tokens_per_s']:,.0f} "
        f"against {r_adj['tokens_per_s']:,.0f} tokens/s",
    }


def fd_check() -> dict[str, str]:
    s, study = load("fd-check"), load("study-8m-fd")
    c = s["config"]
    cell = {(r["step"], r["delta"], g): v for r in s["rows"] for g, v in r["groups"].items()}
    steps, deltas = c["checkpoints"], c["deltas"]

    def rel(group: str, delta: float) -> str:
        values = [cell[(st, delta, group)]["rel_error"] for st in steps]
        low, high = sci(min(values), 1), sci(max(values), 1)
        return low if low == high else f"{low} to {high}"

    cos = [1 - cell[(st, d, "whole model")]["cosine"] for st in steps for d in deltas]
    best = min(deltas, key=lambda d: max(cell[(st, d, "whole model")]["rel_error"] for st in steps))
    checked = [abs(w["loss"] - w["logged"]) for w in s["weights_check"] if w["logged"] is not None]
    reference = dict(next(r for r in study["runs"] if r["variant"] == "wq" and r["seed"] == c["seed"])["train"])
    again = max(abs(loss - reference[step]) for step, loss in s["train"])
    return {
        "run": f"{c['steps']} steps of {c['batch_size']} x {c['context']} tokens",
        "again": "the same, to the 5 decimals both files keep, at every step"
        if again == 0
        else f"within {sci(again, 0)} at every step",
        "checkpoints": f"steps {', '.join(map(str, steps[:-1]))} and {steps[-1]}",
        "deltas": f"δ = {', '.join(f'{d:g}' for d in deltas[:-1])} and {deltas[-1]:g}",
        "check batch": f"{c['check_batch']} sequences",
        "weights": "bit for bit" if max(checked) == 0 else f"within {sci(max(checked), 0)}",
        "whole at 0.01": f"relative error of {rel('whole model', 0.01)}",
        "theta at 0.01": f"θ to {rel('circuit θ', 0.01)}",
        "theta at 0.1": f"at δ = 0.1 it is {rel('circuit θ', 0.1)}",
        "whole at 0.1": f"whole model's error at δ = 0.1 is {rel('whole model', 0.1)}",
        "theta at 0.0001": f"at δ = 0.0001 it is {rel('circuit θ', 1e-4)}",
        "cosine": f"1 - cosine at most {sci(max(cos), 0)}",
        "best": f"smallest at δ = {best:g}",
    }


def one_fifty_m() -> dict[str, str]:
    s, four, cpu = load("study-150m"), load("study-150m-logged"), load("study-8m")
    c = s["config"]
    drops = [mean_curve(s, name)[200] - mean_curve(s, name)[300] for name in c["variants"]]
    ctl, wq, ctl4, wq4 = row(s, "wq-control"), row(s, "wq"), row(four, "wq-control"), row(four, "wq")
    windows_se = [
        r[k] for r, k in ((wq, "diff_se_windows"), (wq, "diff_vs_control_se_windows"), (ctl, "diff_se_windows"))
    ]
    sd = {name: row(s, name)["val_loss_std"] for name in c["variants"]}
    return {
        "heading": f"{c['steps']} steps, {len(c['seeds'])} seeds",
        "run": f"{c['steps']} steps of {c['batch_size']} x {c['context']} tokens ({tokens_per_run(s)} tokens a run), "
        f"learning rate {lr_text(c['lrs'][0])} (not {lr_text(cpu['config']['lrs'][0])}",
        "validation": windows_text(s),
        "wq vs none": f"{signed(wq['diff_vs_none'])} {interval(wq['diff_ci95'])} (MDE {plain(wq['diff_mde'])})",
        "control vs none": f"{signed(ctl['diff_vs_none'])} {interval(ctl['diff_ci95'])} (MDE {plain(ctl['diff_mde'])}; "
        f"{', '.join(signed(d) for d in final_diffs(s, 'wq-control', 'none'))} by seed)",
        "wq vs control": f"{signed(wq['diff_vs_control'])} {interval(wq['diff_vs_control_ci95'])} (MDE "
        f"{plain(wq['diff_vs_control_mde'])}; {', '.join(signed(d) for d in final_diffs(s, 'wq', 'wq-control'))})",
        "spread": f"sd {plain(sd['wq'])} against {plain(sd['none'])} and {plain(sd['wq-control'])}",
        "windows se": f"{plain(min(windows_se), 4)} to {plain(max(windows_se), 4)}",
        "four seeds": f"{len(four['config']['seeds'])} seeds",
        "four windows": windows_text(four),
        "four": f"{signed(wq4['diff_vs_none'])} {interval(wq4['diff_ci95'])} for wq, "
        f"{signed(ctl4['diff_vs_none'])} {interval(ctl4['diff_ci95'])} for its control, and "
        f"{signed(wq4['diff_vs_control'])} {interval(wq4['diff_vs_control_ci95'])}",
        "drop": f"{min(drops):.2f}-{max(drops):.2f} over the last 100 steps",
    }


def cannot_say() -> dict[str, str]:
    zh, en = load("study-tiny-zh"), load("study-tiny-en")
    params = [row(zh, "none")["params"], row(en, "none")["params"]]
    return {"tiny params": f"{min(params) / 1e6:.2f}M-{max(params) / 1e6:.2f}M parameters"}


# A section of docs/reproduction.md (by the start of its heading) -> the figures its prose may quote.
SECTIONS = {
    "`tiny` on Chinese": [tiny_zh],
    "`tiny` on English": [tiny_en],
    "`8m` on English": [eight_m],
    "The paper's gradient method": [fd_study],
    "The fd gradient at fixed weights": [fd_check],
    "`150m`": [one_fifty_m],
    "The learning-rate sweep": [sweep],
    "What this cannot say": [cannot_say],
}
SUMMARY_SECTIONS = ("What this reproduction finds", "What this cannot say")  # may quote any section's figures


def figures() -> dict[str, dict[str, str]]:
    """Section -> figure name -> text."""
    return {section: {k: v for f in fns for k, v in f().items()} for section, fns in SECTIONS.items()}


def main() -> int:
    for section, figs in figures().items():
        print(f"## {section}")
        for name, text in figs.items():
            print(f"  {name}: {text}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
