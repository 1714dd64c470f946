"""The README shows only commands and options that exist."""

import pathlib
import re
import shlex

from pipelines.cli import build_parser

ROOT = pathlib.Path(__file__).resolve().parents[1]


def readme_commands() -> list[list[str]]:
    """Every `bittune …` command line in the README's code blocks (continuations joined)."""
    text = (ROOT / "README.md").read_text()
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


def test_every_readme_command_and_option_exists():
    commands = readme_commands()
    assert len(commands) >= 12
    parser = build_parser()
    subcommands = parser._subparsers._group_actions[0].choices
    for words in commands:
        assert words[0] in subcommands, words
        known = {
            option for action in subcommands[words[0]]._actions for option in action.option_strings
        }
        for word in words[1:]:
            if word.startswith("--"):
                assert word.split("=", 1)[0] in known, (words[0], word)


def test_every_command_s_help_names_defaults():
    help_text = build_parser()._subparsers._group_actions[0].choices["evaluate"].format_help()
    assert "(default 0.0)" in " ".join(help_text.split())  # --threshold says its default
