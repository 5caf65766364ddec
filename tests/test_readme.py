"""README.md and docs/: the README stays short, every relative link resolves, and every
`python -m cxr_tf.X` command in the README parses with X's own argument parser."""

from __future__ import annotations

import argparse
import importlib
import re
import shlex
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
PAGES = [README, *sorted((ROOT / "docs").glob("*.md"))]
MAX_README_LINES = 200
# Pages another tool writes; linked before they land. Remove a name once its page is committed.
_LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
_FENCE = re.compile(r"^```(\w*)\n(.*?)^```", re.S | re.M)


def _code_blocks(text: str, langs=("bash", "sh", "shell")) -> list[str]:
    return [body for lang, body in _FENCE.findall(text) if lang in langs]


def _commands(block: str) -> list[list[str]]:
    """The simple commands of a shell block: continuation lines joined, comments dropped, split
    at `&&`, `||`, `;` and `|`."""
    commands: list[list[str]] = []
    for line in block.replace("\\\n", " ").splitlines():
        current: list[str] = []
        for tok in shlex.split(line, comments=True):
            if tok in ("&&", "||", ";", "|"):
                commands.append(current)
                current = []
            else:
                current.append(tok)
        commands.append(current)
    return [c for c in commands if c]


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def _anchors(page: Path) -> set[str]:
    text = _FENCE.sub("", page.read_text())
    return {_slug(m) for m in re.findall(r"^#+ (.*)$", text, re.M)}


def test_readme_is_short():
    lines = README.read_text().count("\n")
    assert lines <= MAX_README_LINES, (
        f"README.md has {lines} lines; keep it under {MAX_README_LINES} and move depth to docs/"
    )


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_resolve(page):
    text = _FENCE.sub("", page.read_text())
    broken = []
    for target in _LINK.findall(text):
        if re.match(r"[a-z]+:", target):  # https:, mailto:
            continue
        path, _, anchor = target.partition("#")
        dest = (page.parent / path).resolve() if path else page
        missing_anchor = anchor and dest.suffix == ".md" and anchor not in _anchors(dest)
        if not dest.exists() or missing_anchor:
            broken.append(target)
    assert not broken, f"{page.name}: links to nothing: {broken}"


def _readme_cli_commands() -> list[tuple[str, list[str], str, str | None]]:
    """(module, argv, cwd, clone) for each `python -m cxr_tf.X ...` in the README: in its shell
    blocks, and in inline code.

    `cwd` is where the command runs relative to the folder the block starts in, following `cd`;
    `clone` is the folder a `git clone URL DIR` earlier in the block made, if any.
    """
    text = README.read_text()
    found = []
    # inline ones (troubleshooting) run from the clone
    for span in re.findall(r"`(python -m cxr_tf\.[^`]+)`", _FENCE.sub("", text)):
        cmd = shlex.split(span)
        found.append((cmd[2], cmd[3:], ".", None))
    for block in _code_blocks(text):
        cwd, clone = ".", None
        for cmd in _commands(block):
            if cmd[:2] == ["git", "clone"] and len(cmd) >= 4:
                clone = cmd[3]
            elif cmd[0] == "cd" and len(cmd) == 2:
                cwd = cmd[1]
            elif len(cmd) >= 3 and cmd[0] in ("python", "python3") and cmd[2].startswith("cxr_tf."):
                assert cmd[1] == "-m", cmd
                found.append((cmd[2], cmd[3:], cwd, clone))
    return found


CLI_COMMANDS = _readme_cli_commands()


def test_the_readme_has_cli_commands_to_check():
    modules = {m for m, *_ in CLI_COMMANDS}
    assert {"cxr_tf.convert", "cxr_tf.train", "cxr_tf.evaluate"} <= modules


class _Parsed(Exception):
    """Raised in place of running a command once its arguments parsed."""


@pytest.mark.parametrize(
    "module,argv,cwd,clone", CLI_COMMANDS, ids=[f"{m} {' '.join(a)}" for m, a, *_ in CLI_COMMANDS]
)
def test_readme_command_parses(module, argv, cwd, clone, monkeypatch, capsys):
    parse_args = argparse.ArgumentParser.parse_args

    def parse_then_stop(self, args=None, namespace=None):
        parse_args(self, args, namespace)  # exits with status 2 on a flag the CLI lacks
        raise _Parsed

    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", parse_then_stop)
    main = importlib.import_module(module).main
    try:
        main(list(argv))
    except SystemExit as err:
        pytest.fail(
            f"`python -m {module} {' '.join(argv)}`: {capsys.readouterr().err.strip()} "
            f"(exit {err.code})"
        )
    except _Parsed:
        pass
    else:
        pytest.fail(f"{module}.main returned without parsing its arguments")


@pytest.mark.parametrize(
    "argv,cwd,clone",
    [(a, c, k) for m, a, c, k in CLI_COMMANDS if m == "cxr_tf.train"],
    ids=lambda v: " ".join(v) if isinstance(v, list) else str(v),
)
def test_readme_train_configs_exist_where_the_command_runs(argv, cwd, clone):
    config = Path(argv[argv.index("--config") + 1])
    here = Path(cwd)
    if clone is not None and here != Path(clone):
        # run from the folder holding the clone: the path must go into it
        assert config.parts[0] == Path(clone).name, (
            f"--config {config} runs outside the clone {clone}/: give {clone}/{config}"
        )
        config = Path(*config.parts[1:])
    assert config.parts[0] == "training" and (ROOT / config).is_file(), (
        f"--config {config}: no such file in this repository's training/"
    )


def test_the_two_commands_are_the_dev_script_s():
    text = README.read_text()
    section = text.split("## The two commands", 1)[1].split("\n## ", 1)[0]
    (block,) = _code_blocks(section)
    assert [c[:2] for c in _commands(block)] == [["./dev", "demo"], ["./dev", "test"]]
    dev = (ROOT / "dev").read_text()
    for name, target in (("demo", "-m cxr_tf.demo"), ("test", "-m pytest")):
        assert re.search(rf"^\s*{name}\) exec .*{re.escape(target)}", dev, re.M), name
