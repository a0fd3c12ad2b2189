"""benchmarks/common.py, through which every benchmark prints: the text keeps the script's layout,
and the Markdown page (--markdown PATH) holds the same cells, with the title, the command, the
date and the machine line. The page is read back here with a parser of its own, so that a bug the
writer shares with a reader cannot hide."""

import importlib.util
import re
from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def _common():
    spec = importlib.util.spec_from_file_location("common", BENCHMARKS / "common.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


common = _common()


def _unescape(text: str) -> str:
    return re.sub(r"\\(.)", r"\1", text.replace("&lt;", "<"))


def page_tables(markdown: str) -> list[list[list[str]]]:
    """Every Markdown table of a page as rows of cells (the header row first, the rule left out),
    each cell as it reads: a cell ends at a `|` that no backslash escapes."""
    tables, rows = [], None
    for line in markdown.splitlines() + [""]:
        if line.startswith("|"):
            cells = [_unescape(c.strip()) for c in re.split(r"(?<!\\)\|", line.strip())[1:-1]]
            if not all(re.fullmatch(r":?-{3,}:?", c) for c in cells):
                rows = (rows or []) + [cells]
        elif rows is not None:
            tables.append(rows)
            rows = None
    return tables


def paragraphs(markdown: str) -> list[str]:
    blocks = (p.strip() for p in markdown.split("\n\n"))
    return [_unescape(p) for p in blocks if p and not p.startswith(("|", "#"))]


def page_matches(markdown: str, printed_rows: list[list[str]]) -> bool:
    """Whether the page has a table whose cells are the printed table's, header row included."""
    return printed_rows in page_tables(markdown)


def small_run(tmp_path, capsys):
    """A page of a made-up benchmark: (printed text, the page)."""
    out = common.Output(argv=["/anywhere/benchmarks/bench.py", "--steps", "1", "--note", "two words"])
    table = out.table(("mode", "s/step", "ratio"), fmt="{:<10} {:>8} {:>7}",
                      title="2. step times at batch 8:")
    table.row("standard", f"{0.01234:.3f}", f"{1:.2f}")
    table.row("sgt|eval", f"{0.02712:.3f}", f"{2.2:.2f}")  # a | in a cell must not split it
    out.line("\n  floor: 2.10 = 2 + (a_b * c) / d,\n  and <b> is no tag")
    path = tmp_path / "results" / "bench.md"
    out.write(path, "Seconds per step")
    return capsys.readouterr().out, path.read_text()


def test_the_page_has_the_title_command_date_machine_and_the_printed_table(tmp_path, capsys):
    printed, page = small_run(tmp_path, capsys)
    lines = printed.splitlines()
    # The text is exactly the script's f-string layout, after the machine line.
    assert lines[0] == common.machine() and lines[0].startswith("machine: ")
    assert lines[1:5] == ["2. step times at batch 8:", f"{'mode':<10} {'s/step':>8} {'ratio':>7}",
                          f"{'standard':<10} {0.01234:8.3f} {1:7.2f}",
                          f"{'sgt|eval':<10} {0.02712:8.3f} {2.2:7.2f}"]
    assert page.splitlines()[0] == "# Seconds per step"
    made = paragraphs(page)[0]
    assert "`python benchmarks/bench.py --steps 1 --note 'two words'`" in made
    assert re.search(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC", made)
    assert paragraphs(page)[1:] == [lines[0], "2. step times at batch 8:",
                                    "floor: 2.10 = 2 + (a_b * c) / d, and <b> is no tag"]
    printed_rows = [line.split() for line in lines[2:5]]
    assert page_tables(page) == [printed_rows]
    assert page_matches(page, printed_rows)
    assert "| :--- | ---: | ---: |".replace(" ", "") in page  # the alignment of the fmt's fields


def test_a_page_whose_cell_differs_from_the_print_does_not_match(tmp_path, capsys):
    printed, page = small_run(tmp_path, capsys)
    printed_rows = [line.split() for line in printed.splitlines()[2:5]]
    tampered = page.replace("| 0.027 |", "| 0.028 |")
    assert tampered != page and not page_matches(tampered, printed_rows)
    printed_rows[1][2] = "1.01"
    assert not page_matches(page, printed_rows)


def test_a_figure_not_from_this_run_stays_off_the_page(tmp_path, capsys):
    """row(page=...) and line(page=...): the terminal shows what the store holds, the page only
    what this run measured (and note() says so on the page alone)."""
    out = common.Output(argv=["benchmarks/bench.py"])
    table = out.table(("epoch", "seconds"), fmt="{:>5} {:>7}")
    table.row("1", "12.5", page=["1", "-"])
    out.line("eval seconds (stored): 3", page=False)
    out.line("total (stored): 4", page="total stored, not timed in this call")
    out.note("seconds -: timed by an earlier call")
    printed = capsys.readouterr().out
    assert printed.splitlines()[1:] == ["epoch seconds", "    1    12.5", "eval seconds (stored): 3",
                                        "total (stored): 4"]
    page = out.markdown("t")
    assert page_tables(page) == [[["epoch", "seconds"], ["1", "-"]]]
    assert paragraphs(page)[2:] == ["total stored, not timed in this call",
                                    "seconds -: timed by an earlier call"]
    assert "12.5" not in page and "stored): 3" not in page


def test_write_replaces_a_stale_page_whole_and_none_writes_nothing(tmp_path, capsys):
    path = tmp_path / "bench.md"
    path.write_text("# old\n\n| mode | s/step |\n|---|---|\n| standard | 9.999 |\n")
    out = common.Output(argv=["benchmarks/bench.py"])
    out.table(("mode", "s/step"), [("standard", "0.123")])
    out.write(None, "t")
    assert "9.999" in path.read_text()
    out.write(path, "t")
    page = path.read_text()
    assert "9.999" not in page and page_tables(page) == [[["mode", "s/step"], ["standard", "0.123"]]]
    assert [p.name for p in tmp_path.iterdir()] == ["bench.md"]  # no temporary file left beside it
    capsys.readouterr()


def test_every_benchmark_prints_through_common_and_takes_markdown():
    """Read from the source, nothing run: each script makes an Output, takes --markdown and writes
    the page at its end."""
    scripts = sorted(p for p in BENCHMARKS.glob("*.py") if p.name != "common.py")
    assert len(scripts) == 12
    for path in scripts:
        src = path.read_text()
        for needed in ("add_markdown_argument(ap)", "out = Output()", "out.write(args.markdown, TITLE)"):
            assert needed in src, f"{path.name}: no {needed}"
