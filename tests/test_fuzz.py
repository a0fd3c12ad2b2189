"""A fuzz of the command line: argument lists for every command, generated from the options each
command declares (its Typer signature), with values valid and not: numbers including nan, inf,
huge, negative and zero; unicode and Rich-markup strings; paths that are missing, are
directories, or are binary files. Whatever is drawn, the command ends without an uncaught
exception; when it fails, it says so in at most one line on stderr and leaves the store as it was.

Work is bounded so that a valid draw finishes quickly: sizes and counts (epochs, --train-size,
--limit, ...) are drawn small, training gets tiny splits unless the draw gives its own, and the
options that start other processes or compile (--nproc above 1, --compile) are not drawn."""

import inspect
import os
import typing
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.models import ArgumentInfo, OptionInfo
from typer.testing import CliRunner

from sgtool.cli import app
from sgtool.models import MODELS
from tests.conftest import SHARED_DATA

pytestmark = pytest.mark.slow
runner = CliRunner()

# Options whose value is an amount of work: drawn small, never huge.
WORK = {"epochs", "train_size", "test_size", "batch_size", "train_batch_size", "limit", "n", "steps", "restarts",
        "random_seeds", "adv_steps", "width", "heads", "max_len", "jobs", "gpus_per_job", "slurm_time"}
NOT_DRAWN = {"compile", "nproc", "executor"}  # they start other processes or compile for a minute
FLOATS = [float("nan"), float("inf"), float("-inf"), 1e308, -1.0, 0.0, 0.3, 1.0, 2.5]
MARKUP = ["[/]", "[bold]x", "[/x]", "ünïcødé ☃", "", "a,b", " "]


def commands() -> dict[str, dict[str, tuple]]:
    """command -> parameter -> (kind: "option" | "argument", base type, flags or None)."""
    out = {}
    for cmd in app.registered_commands:
        name = cmd.name or cmd.callback.__name__.replace("_", "-")
        params = {}
        hints = typing.get_type_hints(cmd.callback, include_extras=True)  # the CLI modules' annotations are strings
        for p in inspect.signature(cmd.callback).parameters.values():
            args = typing.get_args(hints.get(p.name, p.annotation))
            info = next((a for a in args if isinstance(a, (OptionInfo, ArgumentInfo))), None)
            if info is None or p.name in NOT_DRAWN:
                continue
            t = args[0]
            inner = [a for a in typing.get_args(t) if a is not type(None)]
            base = inner[0] if inner else t
            if typing.get_origin(base) is list:
                base = list
            kind = "argument" if isinstance(info, ArgumentInfo) else "option"
            decls = tuple(info.param_decls or ())
            if isinstance(info.default, str) and info.default.startswith("-"):  # Option("--flag") in Annotated
                decls = (info.default, *decls)
            params[p.name] = (kind, base, decls if kind == "option" else None)
        out[name] = params
    return out


COMMANDS = commands()


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A store with one tiny run and its evaluations, and files of every awkward kind."""
    root = tmp_path_factory.mktemp("fuzz")
    runs = root / "runs"
    r = runner.invoke(app, ["train", "--dataset", "synthetic", "--model", "mlp", "--trainer", "standard",
                            "--train-size", "32", "--test-size", "8", "--epochs", "1", "--runs-dir", str(runs)])
    assert r.exit_code == 0, r.output
    run_id = next(p.name for p in runs.iterdir())
    files = root / "files"
    files.mkdir()
    (files / "binary.bin").write_bytes(bytes(range(256)))
    (files / "utf16.yaml").write_bytes("epochs: 1\n".encode("utf-16"))
    (files / "twice.yaml").write_text("epochs: 1\nepochs: 2\n")
    (files / "ok.yaml").write_text("epochs: 1\ntrain-size: 16\n")
    (files / "afile").write_text("x")
    paths = [str(files / "missing.yaml"), str(files), str(files / "binary.bin"), str(files / "utf16.yaml"),
             str(files / "twice.yaml"), str(files / "ok.yaml"), str(files / "afile" / "x.png"), str(root / "o.png")]
    return {"root": root, "runs": runs, "run": run_id, "paths": paths}


def _choices() -> dict[str, tuple]:
    """Each option's valid names, from the config declarations: drawn too, so that a draw gets
    past the checks and runs."""
    import dataclasses

    from sgtool.config import AttackConfig, ExplainConfig, MaskEvalConfig, TrainConfig

    out = {}
    for cls in (TrainConfig, MaskEvalConfig, AttackConfig, ExplainConfig):
        for f in dataclasses.fields(cls):
            if f.metadata.get("choices"):
                out.setdefault(f.name, tuple(f.metadata["choices"]))
    out.update(methods=("grad", "random", "fgsm", "pgd"), fill=("zero", "mean", "random"), format=("table", "md"))
    return out


CHOICES = _choices()
TRAIN_FLAGS = {f.name for f in __import__("dataclasses").fields(__import__("sgtool.config", fromlist=["x"]).TrainConfig)
               } | {"train_seed", "train_batch_size", "config"}


def valid(name: str, base) -> st.SearchStrategy | None:
    if name in CHOICES:
        return st.sampled_from(CHOICES[name])
    if base is int:
        return st.sampled_from([1, 2])
    if base is float:
        return st.sampled_from([0.1, 0.3] if name not in ("lr",) else [0.01, 0.1])
    return None


def value(name: str, base, world, clean: bool = False) -> st.SearchStrategy:
    """Values for one option: the awkward ones, or with `clean` valid ones, so that the checks
    past parsing are reached too."""
    if clean and (good := valid(name, base)) is not None:
        return good
    if base is bool:
        return st.just(None)  # a flag: present or not
    if base is int:
        small = [-1, 0, 1, 2, 3]
        return st.sampled_from(small if name in WORK else [*small, 2**63, 10**12])
    if base is float:
        return st.sampled_from(FLOATS)
    if base is Path or name in ("config", "data_dir", "embeddings", "out", "path"):
        return st.sampled_from(world["paths"])
    if name == "dataset":
        return st.sampled_from(["synthetic", "synthetic-text", "tsb-middle-box", "mnist", *MARKUP,
                                f"npz:{world['paths'][0]}", f"npz:{world['paths'][2]}", "uea:[x]", "eraser:x"])
    if name == "model":
        return st.sampled_from([*MODELS, "[/]", "no.such:factory", "tests.toys:exits", "tests.toys:wrong_logits"])
    if name == "trainer":
        return st.sampled_from(["standard", "sgt", "asgt", "[/]"])
    if name in ("run_ids", "run_id"):
        return st.sampled_from([world["run"], world["run"][:4], "[/x]", "nosuch"])
    if name == "where":
        return st.sampled_from(["trainer=standard", "x", "[/]=1", "mask-frac=0.5"])
    return st.one_of(st.sampled_from(MARKUP), st.text(max_size=6))


@st.composite
def argv(draw, world):
    name = draw(st.sampled_from(sorted(COMMANDS)))
    params = COMMANDS[name]
    out, given_ = [name], set()
    clean = draw(st.booleans())  # half of the draws hold valid values only, where options have them
    for p, (kind, base, _) in params.items():
        if kind == "argument" and (clean or draw(st.booleans())):
            v = draw(value(p, base, world) if not clean or p != "run_ids" else st.just(world["run"]))
            out.append(str(v))
    options = [p for p, (kind, *_) in params.items() if kind == "option"]
    if clean and name in ("mask-eval", "attack", "explain"):  # a run named by id takes no training flags
        options = [p for p in options if p not in TRAIN_FLAGS]
    for p in draw(st.lists(st.sampled_from(options), max_size=4, unique=True)) if options else []:
        _, base, decls = params[p]
        flag = decls[0] if decls else f"--{p.replace('_', '-')}"
        if base is bool:
            on, _, off = flag.partition("/")
            out.append(off if off and draw(st.booleans()) else on)
        else:
            out += [flag, str(draw(value(p, base, world, clean)))]
        given_.add(p)
    if name == "train":  # tiny splits and one epoch, unless the draw said otherwise
        for p, v in (("train_size", "16"), ("test_size", "8"), ("epochs", "1")):
            if p not in given_:
                out += [f"--{p.replace('_', '-')}", v]
    return out


def snapshot(root: Path) -> dict:
    return {p: (p.stat().st_size, p.stat().st_mtime_ns) for p in root.rglob("*") if p.is_file()}


def run_command(args: list[str], env: dict, capsys, monkeypatch) -> tuple[int, str]:
    """The `sgtool` command itself (sgtool.cli.main, which also turns click's own parse errors into
    one line), in this process: (exit code, stderr). An uncaught exception propagates."""
    import signal

    from sgtool.cli import main

    for k, v in env.items():
        monkeypatch.setenv(k, v)
    monkeypatch.setattr("sys.argv", ["sgtool", *args])
    monkeypatch.setattr(signal, "signal", lambda *a: None)  # main's SIGTERM handler: not for pytest's process
    capsys.readouterr()
    code = main()
    return code, capsys.readouterr().err


@settings(max_examples=250, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(data=st.data())
def test_any_argument_list_ends_cleanly(world, data, monkeypatch, capsys):
    args = data.draw(argv(world))
    monkeypatch.chdir(world["root"])  # what a command writes by default (explain.png, reports/) stays here
    env = {"SGTOOL_RUNS_DIR": str(world["runs"]), "SGTOOL_OFFLINE": "1",
           "SGTOOL_DATA_DIR": str(SHARED_DATA if SHARED_DATA.is_dir() else world["root"] / "data")}
    before = snapshot(world["runs"])
    code, err = run_command(args, env, capsys, monkeypatch)
    if code != 0:
        lines = [ln for ln in err.splitlines() if ln.strip()]
        assert len(lines) <= 1, (args, err)
        assert snapshot(world["runs"]) == before, args


def test_every_command_is_drawn_from():
    assert set(COMMANDS) == {"train", "runs", "unlock", "datasets", "mask-eval", "attack", "explain", "report",
                             "sweep"}
    assert all(COMMANDS[c] for c in ("train", "mask-eval", "attack", "explain", "report", "sweep", "unlock"))
    assert os.environ["SGTOOL_OFFLINE"] == "1"
