"""README.md and docs/*.md tell the truth: every Python block runs, every
``retroprop`` shell command runs (in a cheap form), and every other shell
command is listed here with the reason it is not run.

Python blocks run as written, each on its own in a fresh namespace (so each
must be self-contained), in a temporary working directory. Shell blocks
(```bash / ```sh) are split into commands; ``retroprop ...`` commands run
through ``retroprop.cli.main`` with ``--epochs 1`` (the cheap form: the
commands' other options as written). Fenced blocks without a language, or
marked ``text``, are synopses and output, not code.
"""
import pathlib
import re
import shlex

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md"] + sorted((ROOT / "docs").glob("*.md"))
FENCE = re.compile(r"^```([\w+-]*)[^\n]*\n(.*?)^```", re.M | re.S)

# Shell commands that are not run here, by their first words, and why.
NOT_RUN = {
    "apt-get": "installs system packages (root, network); .ci/run does it on a fresh machine",
    "pip install": "installs into the environment; .ci/run and .ci/wheel do it in fresh venvs",
    "pip wheel": "builds a wheel (minutes); .ci/wheel does it",
    "auditwheel": "repairs a built wheel; .ci/wheel does it",
    ".ci/wheel": "builds, repairs and installs a wheel (minutes); called by .ci/run",
    "python -m pytest": "the test suite itself",
    "python benchmarks/": "benchmarks take minutes and compete for the cores; their figures "
                          "in README are quoted from one run of the command beside them",
    "cmake": "configures/compiles the C benchmarks (CMake build)",
    "OMP_NUM_THREADS=2 ./build/bench/": "runs a compiled C benchmark",
    "RETROPROP_SIMD=": "runs the given command with a forced ISA level; tests/test_simd_env.py "
                       "checks the variable",
}


def blocks():
    """(file, index, language, code) of every fenced block."""
    for path in DOCS:
        text = path.read_text(encoding="utf-8")
        for i, m in enumerate(FENCE.finditer(text)):
            yield path.relative_to(ROOT).as_posix(), i, m.group(1).lower(), m.group(2)


PYTHON = [pytest.param(code, id=f"{name}#{i}") for name, i, lang, code in blocks()
          if lang == "python"]


def shell_blocks():
    """(id, [commands]) of every shell block, commands in order."""
    out = []
    for name, i, lang, code in blocks():
        if lang not in ("bash", "sh", "shell", "console"):
            continue
        commands = []
        for line in code.replace("\\\n", " ").splitlines():
            line = line.split(" #", 1)[0].strip()
            if line.startswith("$ "):
                line = line[2:]
            if line and not line.startswith("#"):
                commands += [c.strip() for c in line.split("&&")]
        out.append((f"{name}#{i}", commands))
    return out


def shell_commands():
    return [(where, c) for where, commands in shell_blocks() for c in commands]


def test_docs_have_blocks():
    assert len(PYTHON) >= 5
    assert any(cmd.startswith("retroprop ") for _, cmd in shell_commands())


@pytest.mark.parametrize("code", PYTHON)
def test_python_block_runs(code, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MPLBACKEND", "Agg")
    exec(compile(code, "<doc block>", "exec"), {"__name__": "__doc_block__"})


def _cheap(argv):
    """The command with --epochs 1 (2 when resuming a run the block trained for 1)."""
    argv = list(argv)
    if argv and argv[0] == "train":
        epochs = "2" if "--resume" in argv else "1"
        if "--epochs" in argv:
            argv[argv.index("--epochs") + 1] = epochs
        else:
            argv += ["--epochs", epochs]
    return argv


def _prepare(argv, tmp_path):
    """Files a command reads that no earlier command of its block wrote: a model to
    evaluate (trained on digits), an input to predict."""
    from retroprop import cli
    import numpy as np
    for i, arg in enumerate(argv):
        if arg.endswith(".rpz") and argv[0] != "train" and not (tmp_path / arg).exists():
            assert cli.main(["train", "--dataset", "digits", "--model", "mlp", "--epochs", "1",
                             "--quiet", "--out", arg]) == 0
        if i and argv[i - 1] == "--input" and not (tmp_path / arg).exists():
            np.save(tmp_path / arg, np.random.default_rng(0).random((3, 8, 8, 1)))


def test_every_shell_command_is_run_or_listed():
    for where, command in shell_commands():
        listed = any(command.startswith(prefix) for prefix in NOT_RUN)
        assert listed or command.startswith("retroprop "), (
            f"{where}: shell command {command!r} is neither a retroprop command nor listed in "
            f"NOT_RUN with the reason it is not run")


@pytest.mark.parametrize("where,commands", shell_blocks(), ids=[w for w, _ in shell_blocks()])
def test_shell_block(where, commands, tmp_path, monkeypatch, capsys):
    """The block's retroprop commands, in order, in one directory (cheap form)."""
    from retroprop import cli
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MPLBACKEND", "Agg")
    ran = []
    for command in commands:
        if any(command.startswith(prefix) for prefix in NOT_RUN):
            continue
        argv = _cheap(shlex.split(command)[1:])
        _prepare(argv, tmp_path)
        status = cli.main(argv)
        out = capsys.readouterr()
        assert status == 0, f"{where}: {command} exited {status}:\n{out.out}\n{out.err}"
        ran.append(command)
    if not ran:
        reasons = sorted({reason for prefix, reason in NOT_RUN.items()
                          for c in commands if c.startswith(prefix)})
        pytest.skip("not run: " + "; ".join(reasons))


def test_readme_vanishing_gradient_table_is_what_the_command_prints():
    """README's kernel-gradient table (layers 1, 4, 7, 10) and the full tables of
    docs/VANISHING_GRADIENTS.md, against ``benchmarks/vanishing_gradients.py``."""
    import importlib.util
    spec = importlib.util.spec_from_file_location(
        "vanishing_gradients", ROOT / "benchmarks" / "vanishing_gradients.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    columns = bench.measure()
    titles = [title for title, _, _ in bench.CONFIGS]

    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    rows = re.findall(r"^\| (\d+)(?: \([a-z ]+\))? \| ([^\n]+) \|$", readme, re.M)
    rows = [(int(layer), cells.split(" | ")) for layer, cells in rows
            if len(cells.split(" | ")) == len(titles)]
    assert [layer for layer, _ in rows] == [1, 4, 7, 10]
    for layer, cells in rows:
        expected = [f"{columns[t][layer - 1]['grad_std']:.1e}" for t in titles]
        assert cells == expected, f"README row {layer}: {cells} != command {expected}"

    doc = (ROOT / "docs" / "VANISHING_GRADIENTS.md").read_text(encoding="utf-8")
    tables = re.findall(r"\| layer \| tanh.*?\n\n", doc, re.S)
    for table, key in zip(tables, ("grad_std", "act_std")):
        lines = [line for line in table.splitlines() if re.match(r"\| \d+ \|", line)]
        assert len(lines) == 10
        for i, line in enumerate(lines):
            cells = [c.strip() for c in line.strip("|").split("|")][1:]
            assert cells == [f"{columns[t][i][key]:.3e}" for t in titles], (key, line)
