"""The README's Python snippet runs as written and computes what it says, and its accounting table
is what `describe` says."""

import math
import re
from pathlib import Path

import torch


def test_readme_python_snippet_runs():
    """The snippet's results against references computed another way: Qulacs (an independent
    simulator, float64, exact adjoint), the analytic effect of fd's step, and the binomial
    statistics of 1,000 shots."""
    import qworker

    text = (Path(__file__).parents[1] / "README.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, re.S)
    assert blocks, "README has no python snippet"
    scope: dict = {}
    exec(compile(blocks[0], "README.md", "exec"), scope)
    assert scope["z"].shape == (1024, 10)
    assert scope["j_theta"].shape == (8, 10, 40) and scope["j_angles"].shape == (8, 10, 20)
    assert scope["g_angles"].shape == (1024, 20) and scope["noisy"].shape == (8, 10)

    spec, theta, angles = scope["spec"], scope["theta"].double(), scope["angles"].double()
    exact = qworker.expectations(spec, theta, angles, backend="qulacs")  # (1024, 10)
    torch.testing.assert_close(scope["z"].double(), exact, atol=3e-6, rtol=0)  # float32 rounding
    # shift is exact: the adjoint Jacobians of Qulacs, to float32 rounding
    j_theta, j_angles = qworker.jacobians(spec, theta, angles[:8], method="adjoint", backend="qulacs")
    torch.testing.assert_close(scope["j_theta"].double(), j_theta, atol=1e-5, rtol=0)
    torch.testing.assert_close(scope["j_angles"].double(), j_angles, atol=1e-5, rtol=0)
    # fd: every angle drives one rotation, so <Z_i> is a·cos x + b·sin x + c in each of them, and a
    # central difference of step δ is exactly sin(δ)/δ times the derivative; what is left is float32
    # rounding (~1e-6 a value, ~1e-4 a difference quotient of step 1e-2): at most 10 of those in a
    # token's angle gradient, and 10,240 of random sign (~1e-2) in theta's, summed over the tokens
    g_theta, g_angles = qworker.vjp(spec, theta, angles, torch.ones_like(exact), method="adjoint", backend="qulacs")
    shrink = math.sin(1e-2) / 1e-2
    torch.testing.assert_close(scope["g_angles"].double(), shrink * g_angles, atol=1e-3, rtol=0)
    torch.testing.assert_close(scope["g_theta"].double(), shrink * g_theta, atol=1e-2, rtol=0)
    # 1,000 shots: each estimate is (n_0 - n_1) / 1000, a multiple of 2/1000, within 5 standard errors
    noisy, shots = scope["noisy"].double(), 1000
    assert ((noisy * shots / 2) - (noisy * shots / 2).round()).abs().max() < 1e-3, noisy
    se = ((1 - exact[:8] ** 2) / shots).sqrt().clamp_min(1e-3)
    assert ((noisy - exact[:8]).abs() / se).max() < 5  # 80 estimates


def test_readme_accounting_table_is_what_describe_says():
    """Every row of the README's model accounting table, to the digit, from trainer.model.accounting.describe."""
    from trainer.model.accounting import describe
    from trainer.model.config import from_preset

    text = (Path(__file__).parents[1] / "README.md").read_text()
    table = text[text.index("| preset | quantum | parameters |") :].split("\n\n")[0].splitlines()[2:]
    rows = [[c.strip() for c in line.strip("|").split("|")] for line in table]
    assert {(r[0], r[1]) for r in rows} == {("8m", "wq"), ("8m", "wgate"), ("150m", "wq"), ("150m", "wgate")}
    for preset, quantum, params, fewer_params, fewer_flops, _paper in rows:
        d = describe(from_preset(preset, quantum=quantum))
        flops = 100 * (1 - d["flops_per_token"] / d["flops_per_token_none"])
        assert [params, fewer_params, fewer_flops] == [
            f"{d['params']['total']:,}",
            f"{d['param_reduction_pct']:.1f}%",
            f"{flops:.1f}%",
        ], (preset, quantum)
