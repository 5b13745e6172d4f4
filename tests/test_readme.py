"""The README's Python snippet runs as written."""

import re
from pathlib import Path


def test_readme_python_snippet_runs():
    text = (Path(__file__).parents[1] / "README.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, re.S)
    assert blocks, "README has no python snippet"
    scope: dict = {}
    exec(compile(blocks[0], "README.md", "exec"), scope)
    assert scope["z"].shape == (1024, 10)
    assert scope["j_theta"].shape == (8, 10, 40) and scope["j_angles"].shape == (8, 10, 20)
    assert scope["g_angles"].shape == (1024, 20) and scope["noisy"].shape == (8, 10)


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
