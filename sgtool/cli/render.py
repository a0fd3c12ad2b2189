"""How the commands show their results: rich tables that read whole in an 80-column terminal,
the progress bars, and one renderer per evaluation. Every string that comes from the user or
from a run (ids, names, paths, messages) is escaped before rich renders it. pandas and the
report's formatting are imported where a table is drawn, after the work that loaded them, so
that `sgtool --help` stays quick."""

from __future__ import annotations

from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table


def _live_width(c: Console) -> Console:
    """rich fixes a console's width from COLUMNS when it is made; forgetting it makes every print
    measure the terminal (or COLUMNS) afresh, so a resized terminal, a pipe or a test's COLUMNS
    all get tables of their own width."""
    c._width = None
    return c


console = _live_width(Console())
err_console = _live_width(Console(stderr=True))


def one_line(text: str) -> str:
    """A message kept on one line: control characters and line separators (a file name or a flag
    value can hold them) are shown as escapes, as Python writes them."""
    return "".join(ch if ch.isprintable() or ch == " " else repr(ch)[1:-1] for ch in str(text))


def warn(lines) -> None:
    for w in lines:
        err_console.print(f"[yellow]warning:[/yellow] {escape(one_line(w))}", highlight=False, soft_wrap=True)


def say(text: str) -> None:
    """A line of plain text (no markup), as it is."""
    console.print(escape(text), highlight=False, soft_wrap=True)


def progress_bar() -> Progress:
    """A bar on stderr. On a terminal it stays once done; elsewhere (a pipe, a log, a test) it is
    never drawn, so that stderr holds only warnings and errors."""
    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TextColumn("{task.fields[info]}"), TimeElapsedColumn(), TimeRemainingColumn(),
                    console=err_console, disable=not err_console.is_terminal)


def plain(fields: dict) -> dict:
    """A progress task's text fields escaped: they hold names from the user and the store."""
    return {k: escape(v) if isinstance(v, str) and k in ("description", "info") else v for k, v in fields.items()}


def lazy_task(bar: Progress, description: str):
    """update(**fields) for a task of `bar` that is added at its first update, so that a command
    that fails early or finds its result cached draws no empty bar."""
    ids = []

    def update(**fields):
        if not ids:
            ids.append(bar.add_task(escape(description), total=None, info=""))
        bar.update(ids[0], **plain(fields))

    return update


class PlainTable(Table):
    """A rich Table whose titles and cells are text, never markup."""

    def add_row(self, *cells, **kw):
        super().add_row(*[escape(c) if isinstance(c, str) else c for c in cells], **kw)


def table(*headers: str, numbers=(), title: str | None = None, caption: str | None = None,
          min_widths: dict | None = None) -> Table:
    """A rich table that reads whole in an 80-column terminal: columns of numbers never wrap
    (a number is never cut), and text columns fold rather than end in an ellipsis. `numbers`
    names the numeric columns (by header); a header may hold a newline to stay narrow;
    `min_widths` keeps short words of a text column whole (status: "completed")."""
    t = PlainTable(title=title and escape(title), caption=caption and escape(caption), title_justify="left",
                   caption_justify="left")
    for h in headers:
        h = escape(h)
        if h in numbers:
            t.add_column(h, no_wrap=True, justify="right")
        else:
            t.add_column(h, overflow="fold", min_width=(min_widths or {}).get(h))
    return t


def method_header(name: str) -> str:
    """A saliency method's name as a narrow, two-line column header: smooth/grad, deeplift/shap."""
    for tail in ("shap", "grad", "authors", "backprop"):
        if name.endswith(tail) and len(name) > len(tail) + 2:
            return name[: -len(tail)].rstrip("-") + "\n" + tail
    return name


# The summary's metrics, in tables narrow enough for 80 columns: (title, [(key, header)]).
SUMMARY_TABLES = [
    ("accuracy drop: area under the curve, and deletion / insertion AUC",
     [("auc", "auc"), ("auc_vs_random", "vs random"), ("deletion_auc", "deletion"),
      ("insertion_auc", "insertion")]),
    ("ground truth: weighted precision and recall of the saliency",
     [("aup", "AUP"), ("aur", "AUR"), ("aupr", "AUPR"), ("precision_at_gt", "P@GT"),
      ("diff_aup", "ΔAUP perm"), ("diff_aur", "ΔAUR perm")]),
    ("ground truth by step and by feature",
     [("time_aup", "time AUP"), ("time_aur", "time AUR"), ("feature_aup", "feat AUP"),
      ("feature_aur", "feat AUR")]),
    ("ERASER faithfulness (AOPC over the fractions; @r: at the rationales' share)",
     [("comprehensiveness", "compr"), ("sufficiency", "suff"), ("comprehensiveness_at_r", "compr@r"),
      ("sufficiency_at_r", "suff@r")]),
    ("ERASER plausibility against the human rationales",
     [("auprc", "AUPRC"), ("token_precision", "tok P"), ("token_recall", "tok R"), ("token_f1", "tok F1"),
      ("iou_f1", "IOU F1")]),
]


def num(v, signed: bool = False) -> str:
    """A number as every table prints it: 3 decimals, '-' for none."""
    return "-" if v is None else (f"{v:+.3f}" if signed else f"{v:.3f}")


def run_line(run: dict, res: dict, what: str) -> None:
    """The header of an evaluation's tables: the run, what it is, and whether it was cached."""
    c = run["config"]
    console.print(f"run [bold]{escape(run['id'])}[/bold] ({escape(str(c.get('dataset')))} / "
                  f"{escape(str(c.get('model')))} / {escape(str(c.get('trainer')))}): {escape(what)}"
                  f"{' (cached)' if res['cached'] else ''}", highlight=False, soft_wrap=True)


def print_written(res: dict, files: str) -> None:
    say(f"{'cached' if res['cached'] else 'written'}: {files}")


def print_mask_eval(run: dict, res: dict) -> None:
    """A header line, the accuracy curve (fractions as rows, methods as columns) and the summary
    metrics, each table narrow enough for an 80-column terminal."""
    cfg = res["config"]
    n = res["rows"][0]["n"] if res["rows"] else 0
    what = f"order {cfg.order}, fill {cfg.fill}" if cfg.fill else "tokens removed"
    run_line(run, res, f"clean accuracy {res['clean_accuracy']:.3f}, n {n}, {what}")
    curves = [("accuracy", "accuracy as the most salient features are removed"),
              ("comprehensiveness", "comprehensiveness: p(ŷ|x) - p(ŷ|x without the top tokens) (higher is better)"),
              ("sufficiency", "sufficiency: p(ŷ|x) - p(ŷ|the top tokens alone) (lower is better)")]
    methods = list(dict.fromkeys(r["method"] for r in res["rows"]))
    heads = [method_header(m) for m in methods]
    for key, title in curves:
        if not res["rows"] or key not in res["rows"][0]:
            continue
        val = {(r["method"], r["fraction"]): r[key] for r in res["rows"]}
        t = table("removed" if key == "accuracy" else "top", *heads, numbers=("removed", "top", *heads), title=title)
        for f in sorted({r["fraction"] for r in res["rows"]}):
            t.add_row(f"{f:g}", *[num(val.get((m, f))) for m in methods])
        console.print(t)
    for title, keys in SUMMARY_TABLES:
        keys = [(k, h) for k, h in keys if any(s.get(k) is not None for s in res["summary"])]
        if not keys:
            continue
        t = table("method", *[h for _, h in keys], numbers=[h for _, h in keys], title=title)
        for s in res["summary"]:
            t.add_row(s["method"], *[num(s.get(k), k.startswith(("auc_vs", "diff"))) for k, _ in keys])
        console.print(t)
    warn(res["warnings"])
    print_written(res, f"{res['path'].with_suffix('')}.csv, .summary.csv, .json")


def print_attack(run: dict, res: dict) -> None:
    """A header line, a table of accuracy (rows: methods and worst; columns: clean and each
    eps), the warnings in yellow, and where the results went."""
    from ..report.tables import fmt_eps

    rows = res["rows"]
    run_line(run, res, f"clean accuracy {res['clean_accuracy']:.3f}, n {rows[0]['n']}")
    eps = list(dict.fromkeys(r["eps"] for r in rows if r["method"] != "clean"))
    heads = [f"eps\n{fmt_eps(e)}" for e in eps]
    t = table("method", "clean", *heads, numbers=("clean", *heads), title="robust accuracy")
    for m in dict.fromkeys(r["method"] for r in rows if r["method"] != "clean"):
        acc = {r["eps"]: r["accuracy"] for r in rows if r["method"] == m}
        t.add_row(m, num(res["clean_accuracy"]), *[num(acc[e]) for e in eps],
                  style="bold" if m == "worst" else None)
    console.print(t)
    warn(res["warnings"])
    print_written(res, f"{res['path']}, .json" + (f", {res['examples'].name}" if res.get("examples") else ""))


def print_frame(df, title: str | None = None, caption: str | None = None, labels=None) -> None:
    """A DataFrame of display strings as rich tables that fit the terminal: the label columns
    (those up to `n`, or `labels`) start every table, and the value columns are split over as
    many tables as the width needs, so that no number is cut."""
    df = df.rename(columns=str)
    cols = list(df.columns)
    if labels is None:
        labels = cols[: cols.index("n") + 1] if "n" in cols else cols[:1]
    values = [c for c in cols if c not in labels]

    def width(c):  # a column's printed width: its widest cell or header word, plus borders
        words = [len(w) for w in c.split()] if c in labels else [len(c)]  # value columns never wrap
        return max([len(str(v)) for v in df[c]] + words) + 3

    keys = [c for c in labels if c not in ("n", "method")]
    if len(keys) > 1 and sum(width(c) for c in labels) > console.width // 2:
        # Too many label columns to leave room for the numbers (runs of several kinds of data
        # differ in many settings): number the settings' combinations and print what each
        # number stands for above the table.
        combos = list(dict.fromkeys(df[keys].itertuples(index=False, name=None)))
        ids = {c: str(i + 1) for i, c in enumerate(combos)}
        if title:
            console.print(f"[italic]{escape(title)}[/italic]", highlight=False)
            title = None
        legend = Table.grid(padding=(0, 1))
        legend.add_column(justify="right", style="bold")
        legend.add_column(overflow="fold")  # a hanging indent under its number
        for c, i in ids.items():
            legend.add_row(i, escape(" · ".join(f"{k} {v}" for k, v in zip(keys, c) if v != "-")))
        console.print(legend, highlight=False)
        df = df.assign(**{"#": [ids[c] for c in df[keys].itertuples(index=False, name=None)]})
        labels = ["#"] + [c for c in labels if c not in keys]
        df = df[labels + values]
    room = max(console.width - 1 - sum(width(c) for c in labels), 20)
    chunks, cur, used = [], [], 0
    for c in values:
        if cur and used + width(c) > room:
            chunks.append(cur)
            cur, used = [], 0
        cur.append(c)
        used += width(c)
    chunks.append(cur)
    for i, chunk in enumerate(chunks):
        part = f" ({i + 1}/{len(chunks)})" if len(chunks) > 1 else ""
        t = table(*labels, *chunk, numbers=chunk, title=f"{title}{part}" if title else None,
                  caption=caption or None)
        for row in df[labels + chunk].itertuples(index=False):
            t.add_row(*[str(v) for v in row])
        console.print(t)


def print_rows(rows: list[dict], title: str) -> None:
    """Summary rows (dicts with the same keys) as a rich table; floats to 4 digits, None as '-'.
    Columns with one value in every row move into the caption, to fit narrow terminals."""
    import pandas as pd

    show = lambda v: "-" if v is None else f"{v:.4g}" if isinstance(v, float) else str(v)  # noqa: E731
    const = [k for k in rows[0] if len(rows) > 1 and len({show(r[k]) for r in rows}) == 1]
    keys = [k for k in rows[0] if k not in const]
    df = pd.DataFrame([{k.replace("_", "-"): show(r[k]) for k in keys} for r in rows])
    caption = " · ".join(f"{k.replace('_', '-')} {show(rows[0][k])}" for k in const) or None
    labels = [c for c in ("experiment", "run") if c in df.columns] or list(df.columns[:1])
    print_frame(df, title, caption, labels=labels)


