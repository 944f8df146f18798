"""The documentation stays true to the code: the command reference matches every command's --help, every relative
link in README.md and docs/ reaches a file, and the README stays a short front door with CI's test command."""

import importlib.util
import re
from pathlib import Path

from tests.conftest import ROOT

REGENERATE = "run `./rx exec python docs/commands.py` and commit docs/commands.md"
LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)|^\[[^\]]+\]:\s*(\S+)", re.MULTILINE)
CODE = re.compile(r"^(```|~~~).*?^\1|`[^`\n]+`", re.MULTILINE | re.DOTALL)


def commands_module():
    spec = importlib.util.spec_from_file_location("docs_commands", ROOT / "docs" / "commands.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def markdown_files() -> list[Path]:
    return [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]


def relative_links(markdown: str) -> list[str]:
    """Link and image targets outside code, without web addresses or in-page anchors."""
    targets = [a or b for a, b in LINK.findall(CODE.sub("", markdown))]
    return [t for t in targets if not re.match(r"[a-z][a-z0-9+.-]*:|#", t)]


def test_command_reference_matches_every_help():
    commands = commands_module()
    expected = commands.help_texts()
    written = commands.sections((ROOT / "docs" / "commands.md").read_text(encoding="utf-8"))
    drifted = [c for c in {**expected, **written} if expected.get(c) != written.get(c)]
    assert not drifted, f"docs/commands.md is out of date for {', '.join(f'`{c}`' for c in drifted)}: {REGENERATE}"
    assert (ROOT / "docs" / "commands.md").read_text(encoding="utf-8") == commands.render(expected), REGENERATE


def test_relative_links_reach_files():
    broken = []
    for page in markdown_files():
        for target in relative_links(page.read_text(encoding="utf-8")):
            path = target.split("#")[0].split("?")[0]
            if not (page.parent / path).resolve().exists():
                broken.append(f"{page.relative_to(ROOT)}: {target}")
    assert not broken, "links to missing files:\n" + "\n".join(broken)


def test_link_finder_sees_links_and_skips_code():
    text = ("[a](docs/a.md) ![b](docs/b.png \"title\") [web](https://x.org) [anchor](#here) [c](c.md#part)\n"
            "[ref]: d.md\n`[no](inline.md)`\n```\n[no](fenced.md)\n```\n")
    assert relative_links(text) == ["docs/a.md", "docs/b.png", "c.md#part", "d.md"]


def test_readme_is_a_short_front_door():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert len(readme.splitlines()) <= 150
    assert "./rx test" in readme, ".ci/run runs the README's test command, ./rx test"
    assert "docs/app.png" in readme
