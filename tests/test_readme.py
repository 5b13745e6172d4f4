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
