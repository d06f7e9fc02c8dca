"""The README stays short and every `w12` command in its ```bash blocks is one the CLI accepts."""

import re
import shlex
from pathlib import Path

from w12_jax.cli import build_parser

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


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
    assert {c[0] for c in commands if c} >= {"train", "sample", "evaluate", "distill"}  # the README shows them all
    parser = build_parser()
    for argv in commands:
        parser.parse_args(argv)  # a bad command exits (status 2) and fails the test


def test_readme_is_short():
    assert len(README.splitlines()) <= 200


def test_every_linked_file_exists():
    """Each figure in the README cites a committed results file beside it: every relative link resolves."""
    targets = [t for t in re.findall(r"\]\(([^)#\s]+)", README) if not t.startswith(("http://", "https://"))]
    assert sum("results" in t for t in targets) >= 5
    missing = [t for t in targets if not (ROOT / t).exists()]
    assert not missing, missing


def test_ci_installs_from_the_lock_file_as_the_readme_says():
    install = "pip install -c requirements.lock -e '.[test]'"
    assert install in README and install in (ROOT / ".ci" / "run").read_text()
    pins = [line for line in (ROOT / "requirements.lock").read_text().splitlines() if line and line[0] != "#"]
    assert all(re.fullmatch(r"[A-Za-z0-9_.\-]+==[^=\s]+", line) for line in pins), pins
    assert {"jax", "jaxlib", "flax", "optax", "diffrax", "orbax-checkpoint", "ott-jax"} <= {
        line.split("==")[0].lower() for line in pins}


def test_every_cited_design_section_exists():
    """Each "design.md §N" in the package, experiments, benchmarks and README names a section of docs/design.md,
    and nothing points at a design file outside the repository."""
    sections = set(re.findall(r"^## (\d+)\. ", (ROOT / "docs" / "design.md").read_text(), flags=re.M))
    files = [ROOT / "README.md"] + [p for d in ("w12_jax", "experiments", "benchmarks") for p in (ROOT / d).rglob("*.py")]
    cited = {(p.name, n) for p in files for n in re.findall(r"design\.md §(\d+)", p.read_text())}
    assert len(cited) >= 20 and {n for _, n in cited} <= sections, sorted(c for c in cited if c[1] not in sections)
    assert not [p.name for p in files if re.search(r"DESIGN\.md|shared/", p.read_text())]


def test_readme_and_design_map_name_every_module():
    """The README's module list and design.md §15 name every module of the package (the rooms as they are)."""
    modules = [p.stem for p in (ROOT / "w12_jax").glob("*.py") if p.stem not in ("__init__", "__main__")]
    readme = (ROOT / "README.md").read_text()
    listed = readme[readme.index("Modules ("):readme.index("`cli`.", readme.index("Modules (")) + 6]
    design = (ROOT / "docs" / "design.md").read_text()
    section = design[design.index("## 15."):]
    assert len(modules) >= 25
    assert [m for m in modules if f"`{m}`" not in listed] == []
    assert [m for m in modules if f"`{m}`" not in section] == []
