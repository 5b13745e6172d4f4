"""docs/reproduction.md's sentences against the committed results: every number in a section's prose
is one of the figures bench/findings.py computes for that section from docs/results/*.json (or one
of its constants, each listed with why it is not a result), and every such figure is quoted in its
section. The tables and the lines bench/study.py generates with them are checked in test_bench.py."""

import importlib.util
import json
import re
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[1]
DOC = ROOT / "docs" / "reproduction.md"
# a number as the prose writes it: 4.4%, 1.8x, -0.122, 2.97e8, 16,384; not part of a name (8m, H200, rank-20)
NUMBER = re.compile(r"(?<![\w.+\-])[-+]?\d+(?:,\d{3})*(?:\.\d+)?(?:e-?\d+)?(?:%|x)?(?![\w])")


@pytest.fixture(scope="module")
def findings():
    spec = importlib.util.spec_from_file_location("findings", ROOT / "bench" / "findings.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["findings"] = module
    spec.loader.exec_module(module)
    yield module
    del sys.modules["findings"]


def sections() -> dict[str, str]:
    """Heading -> its prose: no code, tables, images, link targets, inline code, or lines that
    bench/study.py generated (those of a committed table's .md)."""
    generated = {line for md in (ROOT / "docs" / "results").glob("*.md") for line in md.read_text().splitlines()}
    out, heading, in_code = {}, "", False
    for line in DOC.read_text().splitlines():
        if line.startswith("```"):
            in_code = not in_code
            continue
        if in_code or line.startswith(("    ", "\t", "|", "![")) or (line and line in generated):
            continue
        if line.startswith("#"):
            heading = line.lstrip("#").strip()
            out[heading] = ""
        line = re.sub(r"`[^`]*`", "", line)  # inline code: commands, flags, names
        line = re.sub(r"\]\([^)]*\)", "]", line)  # link targets
        out[heading] = out.get(heading, "") + line + "\n"
    return out


def numbers(text: str) -> list[str]:
    return NUMBER.findall(text)


def allowed(number: str, figures: set[str]) -> bool:
    """A signed number must be a figure with that sign; an unsigned one, a figure of either sign."""
    if number[0] in "+-":
        return number in figures
    return number in figures or f"+{number}" in figures or f"-{number}" in figures


def section_figures(findings, heading: str) -> dict[str, str] | None:
    """The figures a section may quote: its studies' ({} for a section of constants only), or all
    of them for a summary section (None)."""
    if heading.startswith(findings.SUMMARY_SECTIONS):
        return None
    for start, figures in findings.figures().items():
        if heading.startswith(start):
            return figures
    return {}


def test_every_number_in_the_prose_is_a_figure_of_its_section(findings):
    every = {n for figures in findings.figures().values() for text in figures.values() for n in numbers(text)}
    constants = set(findings.CONSTANTS)
    wrong = []
    for heading, text in sections().items():
        figures = section_figures(findings, heading)
        own = every if figures is None else {n for t in figures.values() for n in numbers(t)}
        wrong += [f"{heading!r}: {n}" for n in numbers(text) if not allowed(n, own | constants)]
    assert not wrong, "numbers in docs/reproduction.md that bench/findings.py does not compute:\n" + "\n".join(wrong)


def test_every_figure_is_quoted_in_its_section(findings):
    prose = sections()
    missing = []
    for start, figures in findings.figures().items():
        (heading,) = [h for h in prose if h.startswith(start)]
        text = " ".join(prose[heading].split())  # line breaks as spaces
        missing += [f"{start!r}: {name} = {value!r}" for name, value in figures.items() if value not in text]
    assert not missing, "figures of bench/findings.py not in their section:\n" + "\n".join(missing)


def test_the_number_pattern_reads_the_prose_as_written():
    text = "-0.122 [-0.146, -0.097] (MDE 0.031), 4.4% fewer, 1.8x faster, 2.97e8, 16,384 tokens, 8m, H200, rank-20."
    assert numbers(text) == ["-0.122", "-0.146", "-0.097", "0.031", "4.4%", "1.8x", "2.97e8", "16,384"]
    assert allowed("0.122", {"-0.122"}) and not allowed("+0.122", {"-0.122"})


def test_fd_check_table_is_what_its_results_generate_and_shown_unedited():
    spec = importlib.util.spec_from_file_location("fd_check", ROOT / "bench" / "fd_check.py")
    fd_check = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(fd_check)
    path = ROOT / "docs" / "results" / "fd-check.json"
    result = json.loads(path.read_text())
    assert json.loads(fd_check.dumps(result)) == result
    table = fd_check.report(result)
    assert table == path.with_suffix(".md").read_text()
    assert table.rstrip("\n") in DOC.read_text()
    # every checkpoint at every δ, each group's figures present
    config = result["config"]
    assert [(r["step"], r["delta"]) for r in result["rows"]] == [
        (s, d) for s in config["checkpoints"] for d in config["deltas"]
    ]
    assert all(set(r["groups"]) == set(fd_check.GROUPS) for r in result["rows"])
