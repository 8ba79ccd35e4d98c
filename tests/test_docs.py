"""The README and docs/ stay true: every `promptstep` command line in their code blocks names a command and
options that exist, with values its config accepts (parsed and validated as the CLI would, without running)."""

import re
import shlex
from pathlib import Path

import pytest

from promptstep.cli import COMMANDS
from promptstep.config import build_config
from promptstep.errors import InputError

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def command_lines(page: Path) -> list[str]:
    """The `promptstep ...` lines of a page's bash code blocks (continuations joined, comments dropped)."""
    found, block, fence = [], [], None
    for line in page.read_text(encoding="utf-8").splitlines():
        if line.startswith("```"):
            fence = line[3:].strip() if fence is None else None
            continue
        if fence == "bash":
            block.append(line)
    text = "\n".join(block).replace("\\\n", " ")
    for line in text.splitlines():
        line = line.split(" #")[0].strip()
        match = re.search(r"(?:^|\s|/)promptstep(?:\.cli)?\s+(\S.*)$", line)
        if match:
            found.append(match.group(1))
    return found


CASES = [(page.name, line) for page in PAGES for line in command_lines(page)]


def test_the_pages_show_commands():
    assert len(CASES) > 40 and {"README.md", "devices-and-faults.md"} <= {page for page, _ in CASES}


@pytest.mark.parametrize(("page", "line"), CASES)
def test_every_command_line_shown_parses_and_validates(page, line, monkeypatch):
    monkeypatch.chdir(ROOT)  # presets are named relative to the repository
    tokens = shlex.split(line)
    name, rest = tokens[0], tokens[1:]
    assert name in COMMANDS, f"{page}: unknown command in: promptstep {line}"
    command = COMMANDS[name]
    if rest in (["--help"], ["-h"]):
        return
    positionals = []
    while rest and not rest[0].startswith("--"):
        positionals.append(rest.pop(0))
    overrides, preset = {}, None
    for key, value in zip(rest[::2], rest[1::2]):
        assert key.startswith("--") and not value.startswith("--"), f"{page}: {line}"
        if key == "--config":
            preset = value
        elif key != "--threads":
            overrides[key[2:]] = value
    assert len(rest) % 2 == 0, f"{page}: an option without a value in: {line}"
    if positionals:
        assert command.positional, f"{page}: {name} takes no positional argument: {line}"
        overrides[command.positional] = positionals if command.many else positionals[0]
    try:
        build_config(command.config, preset, overrides)
    except InputError as err:  # a GPU this machine lacks is the only refusal a shown command may meet
        assert "cuda" in line and ("cuda" in str(err).lower() or "gpu" in str(err).lower()), f"{page}: {line}: {err}"


# Pages the README links to that other branches write (knowledge injection, specificity, performance).
PENDING: set[str] = set()


def _anchors(page: Path) -> set[str]:
    """GitHub's anchors for a page's headings: lower case, punctuation dropped, spaces to hyphens."""
    anchors, fenced = set(), False
    for line in page.read_text(encoding="utf-8").splitlines():
        fenced ^= line.startswith("```")
        if not fenced and line.startswith("#"):
            title = line.lstrip("#").strip().lower()
            anchors.add(re.sub(r"[^\w\- ]", "", title).replace(" ", "-"))
    return anchors


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_links_between_pages_resolve(page):
    for target in re.findall(r"\]\(([^)\s]+)\)", page.read_text(encoding="utf-8")):
        if re.match(r"[a-z]+:", target):
            continue
        path, _, anchor = target.partition("#")
        file = (page.parent / path).resolve() if path else page
        if str(file.relative_to(ROOT)) in PENDING:
            continue
        assert file.exists(), f"{page.name}: broken link {target}"
        if anchor and file.suffix == ".md":
            assert anchor in _anchors(file), f"{page.name}: no heading for #{anchor} in {file.name}"
