"""The README stays short and every `w12` command in its ```bash blocks is one the CLI accepts."""

import re
import shlex
from pathlib import Path

from w12_jax.cli import build_parser

README = (Path(__file__).resolve().parents[1] / "README.md").read_text()


def readme_commands() -> list[list[str]]:
    """The argv of every `w12 ...` command in the README's ```bash blocks (after `&&`, before `#`)."""
    out = []
    for block in re.findall(r"```bash\n(.*?)```", README, flags=re.S):
        for line in block.splitlines():
            for part in line.split("&&"):
                words = shlex.split(part, comments=True)
                if words and words[0] == "w12":
                    out.append(words[1:])
    return out


def test_every_readme_command_parses():
    commands = readme_commands()
    assert {c[0] for c in commands if c} >= {"train", "sample", "evaluate"}  # the README shows them all
    parser = build_parser()
    for argv in commands:
        parser.parse_args(argv)  # a bad command exits (status 2) and fails the test


def test_readme_is_short():
    assert len(README.splitlines()) <= 200
