"""The documentation: the generated preset reference is current, links resolve, the README stays a front door."""

from __future__ import annotations

import re
from pathlib import Path

from engine.config import PROJECT_ROOT
from engine.preset_reference import REGENERATE, render_markdown

DOC_FILES = [PROJECT_ROOT / "README.md", PROJECT_ROOT / "CONTRIBUTING.md", *sorted((PROJECT_ROOT / "docs").glob("*.md"))]
README_LIMIT = 12_500  # bytes: the README is what the tool is, the two commands and links; the manual lives in docs/

INLINE_LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
REFERENCE_LINK = re.compile(r"^\s{0,3}\[[^\]]+\]:\s*<?(\S+?)>?(?:\s+\"[^\"]*\")?\s*$")
FENCE = re.compile(r"^\s{0,3}(```|~~~)")
HEADING = re.compile(r"^\s{0,3}#{1,6}\s+(.*?)\s*#*\s*$")


def prose_lines(text: str) -> list[str]:
    """The lines outside fenced code blocks, inline code spans removed (a link shown as code is not a link)."""
    lines, in_fence = [], False
    for line in text.splitlines():
        if FENCE.match(line):
            in_fence = not in_fence
            continue
        if not in_fence:
            lines.append(re.sub(r"(`+).*?\1", "", line))
    return lines


def links(text: str) -> list[str]:
    found = []
    for line in prose_lines(text):
        found += INLINE_LINK.findall(line)
        match = REFERENCE_LINK.match(line)
        if match:
            found.append(match.group(1))
    return found


def github_slug(heading: str) -> str:
    """The anchor GitHub gives a heading: its text lowercased, punctuation dropped, spaces as hyphens."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link in a heading anchors on its text
    text = text.replace("`", "").replace("*", "").lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    """Every heading anchor of a markdown file; a repeated heading gets -1, -2, ... as on GitHub."""
    seen: dict[str, int] = {}
    out = set()
    in_fence = False
    for line in path.read_text(encoding="utf-8").splitlines():
        if FENCE.match(line):
            in_fence = not in_fence
            continue
        match = None if in_fence else HEADING.match(line)
        if match:
            slug = github_slug(match.group(1))
            count = seen.get(slug, 0)
            seen[slug] = count + 1
            out.add(slug if count == 0 else f"{slug}-{count}")
    return out


def broken_links(doc: Path) -> list[str]:
    problems = []
    for target in links(doc.read_text(encoding="utf-8")):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target, re.IGNORECASE):  # https:, mailto: ... are not checked here
            continue
        path_part, _, anchor = target.partition("#")
        linked = (doc.parent / path_part).resolve() if path_part else doc
        if not linked.exists():
            problems.append(f"{doc.relative_to(PROJECT_ROOT)}: {target} (no such file)")
        elif anchor and linked.suffix == ".md" and anchor.lower() not in anchors(linked):
            problems.append(f"{doc.relative_to(PROJECT_ROOT)}: {target} (no heading #{anchor} in {linked.name})")
    return problems


def test_presets_reference_matches_the_schema() -> None:
    """Guards against docs/presets.md going stale: a field added, renamed, re-defaulted or re-documented in
    engine/config.py without regenerating the reference users read."""
    committed = (PROJECT_ROOT / "docs" / "presets.md").read_text(encoding="utf-8")
    assert committed == render_markdown(), f"docs/presets.md is stale; regenerate it: {REGENERATE}"


def test_the_reference_shows_each_tables_own_defaults() -> None:
    """Guards against the generator reading defaults from the section classes: [pretrain] and [sft] share
    TrainStage but not its defaults, and the reference must show SFT's own learning rate and data."""
    text = render_markdown()
    pretrain = text.split("## [pretrain]")[1].split("## [")[0]
    sft = text.split("## [sft]")[1].split("## [")[0]
    assert '`"dataset/pretrain.jsonl"`' in pretrain and '`"dataset/sft.jsonl"`' in sft
    assert "`0.0005`" in pretrain and "`0.0001`" in sft


def test_relative_links_resolve() -> None:
    """Guards against links into docs/ that lead nowhere after a file is moved or renamed, or a heading
    retitled (a #anchor that no longer exists scrolls nowhere on GitHub)."""
    assert (PROJECT_ROOT / "CONTRIBUTING.md").exists()
    checked = [target for doc in DOC_FILES for target in links(doc.read_text(encoding="utf-8"))]
    assert len(checked) > 10, "the link finder found almost no links: it is broken, not the docs"
    problems = [problem for doc in DOC_FILES for problem in broken_links(doc)]
    assert not problems, "broken links:\n" + "\n".join(problems)


def test_link_checker_reads_links_and_anchors_as_github_does() -> None:
    """Guards against a checker that passes everything: code is not a link, anchors are GitHub's slugs."""
    text = "See [cli](docs/cli.md#run) and `[not](a/link.md)`.\n```\n[nor](this.md)\n```\n[ref]: docs/data.md\n"
    assert links(text) == ["docs/cli.md#run", "docs/data.md"]
    assert github_slug("The `run` directory: files & states") == "the-run-directory-files--states"
    assert github_slug("Several GPUs, several nodes (torchrun)") == "several-gpus-several-nodes-torchrun"


def test_readme_is_a_front_door() -> None:
    """Guards against the README growing back into a manual: details belong in docs/, linked from it."""
    size = (PROJECT_ROOT / "README.md").stat().st_size
    assert size < README_LIMIT, f"README.md is {size:,} bytes (limit {README_LIMIT:,}): move the detail into docs/"
