"""The README and the pages under docs/ show only commands and options that exist, link only
to files that exist, and the README stays short enough for a newcomer to read."""

import pathlib
import re
import shlex

import pytest

from pipelines.cli import build_parser

ROOT = pathlib.Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
PAGES = [README, *sorted((ROOT / "docs").glob("*.md"))]
README_MAX_LINES = 250


def page_id(page: pathlib.Path) -> str:
    return str(page.relative_to(ROOT))


def page_commands(page: pathlib.Path) -> list[list[str]]:
    """Every `bittune …` command line in a page's code blocks (continuations joined)."""
    text = page.read_text()
    blocks = re.findall(r"```(?:console|bash)\n(.*?)```", text, flags=re.DOTALL)
    commands = []
    for block in blocks:
        joined = block.replace("\\\n", " ")
        for line in joined.splitlines():
            line = line.strip().removeprefix("$ ")
            if not line.startswith(("bittune ", "./dev bittune ")):
                continue  # outputs, and other programs
            words = shlex.split(line.replace("…", "x"), comments=True)
            while words and words[0] in ("./dev",):
                words = words[1:]
            if words[:1] == ["bittune"] and len(words) > 1:
                commands.append(words[1:])
    return commands


def test_the_pages_show_commands():
    counted = {page_id(page): len(page_commands(page)) for page in PAGES}
    assert sum(counted.values()) >= 12, counted
    assert counted["README.md"] >= 5, counted  # the README still shows the main ones
    assert counted["docs/commands.md"] >= 8, counted


@pytest.mark.parametrize("page", PAGES, ids=page_id)
def test_every_command_and_option_exists(page):
    parser = build_parser()
    subcommands = parser._subparsers._group_actions[0].choices
    for words in page_commands(page):
        assert words[0] in subcommands, (page_id(page), words)
        known = {
            option for action in subcommands[words[0]]._actions for option in action.option_strings
        }
        for word in words[1:]:
            if word.startswith("--"):
                assert word.split("=", 1)[0] in known, (page_id(page), words[0], word)


def test_the_readme_is_short():
    lines = README.read_text().splitlines()
    assert len(lines) <= README_MAX_LINES, f"README.md has {len(lines)} lines"


def _links(text: str) -> list[str]:
    """The targets of the Markdown links in ``text``, outside code blocks and code spans."""
    text = re.sub(r"```.*?```", "", text, flags=re.DOTALL)
    text = re.sub(r"`[^`\n]*`", lambda m: "x" * len(m[0]) if "](" not in m[0] else m[0], text)
    targets = re.findall(r"\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)", text)
    return [t for t in targets if not re.match(r"[a-z][a-z0-9+.-]*:", t)]  # not http:, mailto:


def _anchor(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = heading.strip().lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def _anchors(page: pathlib.Path) -> set[str]:
    text = re.sub(r"```.*?```", "", page.read_text(), flags=re.DOTALL)
    return {_anchor(h) for h in re.findall(r"^#{1,6} (.+)$", text, flags=re.MULTILINE)}


def test_every_relative_link_points_to_an_existing_file():
    checked = 0
    broken = []
    for page in PAGES:
        for target in _links(page.read_text()):
            path, _, fragment = target.partition("#")
            resolved = (page.parent / path).resolve() if path else page
            checked += 1
            if not resolved.exists():
                broken.append(f"{page_id(page)}: {target} (no such file)")
            elif fragment and resolved.suffix == ".md" and fragment not in _anchors(resolved):
                broken.append(f"{page_id(page)}: {target} (no such heading)")
    assert checked >= 20
    assert not broken, "\n".join(broken)


def test_the_link_checker_sees_links_and_anchors():
    text = "see [a](docs/a.md#x-y), `[not](a link)`, [web](https://x.org) and\n```\n[no](z)\n```"
    assert _links(text) == ["docs/a.md#x-y"]
    assert _anchor("`bittune run` — the pipeline, locally") == "bittune-run--the-pipeline-locally"
    assert _anchor("Set-up: two commands") == "set-up-two-commands"


def test_every_command_s_help_names_defaults():
    help_text = build_parser()._subparsers._group_actions[0].choices["evaluate"].format_help()
    assert "(default 0.0)" in " ".join(help_text.split())  # --blessing-threshold's default
