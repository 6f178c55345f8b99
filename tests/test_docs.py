"""The user docs (README.md and docs/*.md): every link, anchor and image resolves inside the
repository, and no page tells the story of the project's own development.

Fast and self-contained: it reads Markdown files, no server, no models.
"""

from __future__ import annotations

import re
import sys
from collections import Counter
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOC_FILES = sorted([ROOT / "README.md", *(ROOT / "docs").rglob("*.md")])
IMAGES = ROOT / "docs" / "img"

FENCE = re.compile(r"^\s*(```|~~~)")
INLINE_CODE = re.compile(r"(`+)(?:(?!\1).)+?\1")
# [text](target) and ![alt](target); the target stops at whitespace or the closing parenthesis
INLINE_LINK = re.compile(r"(!?)\[((?:[^\[\]]|\[[^\]]*\])*)\]\(\s*<?([^)\s>]*)>?(?:\s+\"[^\"]*\")?\s*\)")
REFERENCE_DEF = re.compile(r"^\s{0,3}\[([^\]]+)\]:\s*<?(\S+?)>?(?:\s+\"[^\"]*\")?\s*$")
HTML_SRC = re.compile(r"<(?:img|a)\b[^>]*\b(?:src|href)=\"([^\"]+)\"", re.I)
HEADING = re.compile(r"^\s{0,3}(#{1,6})\s+(.*?)\s*#*\s*$")
EXTERNAL = re.compile(r"^(?:[a-z][a-z0-9+.-]*:|//)", re.I)

# Phrases that narrate how the project was built rather than what it does.
ORDINALS = (
    r"first|second|third|fourth|fifth|sixth|seventh|eighth|ninth|tenth|eleventh|twelfth|thirteenth|"
    r"fourteenth|fifteenth|sixteenth|seventeenth|eighteenth|nineteenth|twentieth|"
    r"twenty[- ](?:first|second|third|fourth|fifth|sixth|seventh|eighth|ninth)|thirtieth|\d+(?:st|nd|rd|th)"
)
STORY = [
    (re.compile(r"\bsession\b", re.I), "'session'"),
    (re.compile(r"\bissue\s+#?\d", re.I), "an issue number"),
    (re.compile(r"\bgoal\s+\d", re.I), "a numbered goal"),
    (re.compile(rf"\b(?:{ORDINALS})\s+(?:session|round)s?\b", re.I), "an ordinal session or round"),
    (re.compile(r"\bthis round\b", re.I), "'this round'"),
    (re.compile(r"\blast time\b", re.I), "'last time'"),
]
ISSUE_REF = re.compile(r"(?<![\w&/])#\d+\b")  # '#4' outside code (an issue or PR number)


def rel(path: Path) -> str:
    return str(path.relative_to(ROOT))


def prose_lines(text: str) -> list[tuple[int, str]]:
    """(line number, line) outside fenced code blocks, with inline code spans blanked."""
    out, fenced = [], False
    for n, line in enumerate(text.splitlines(), 1):
        if FENCE.match(line):
            fenced = not fenced
            continue
        if not fenced:
            out.append((n, INLINE_CODE.sub(lambda m: " " * len(m.group(0)), line)))
    return out


def slugify(heading: str) -> str:
    """GitHub's heading anchor: markup dropped, lowercase, punctuation other than '-' and '_'
    removed, spaces to hyphens."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # links and images keep their text
    text = re.sub(r"<[^>]+>", "", text)  # inline HTML
    text = text.replace("`", "").lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    """Every anchor a Markdown file defines: heading slugs (duplicates get -1, -2, ...) and
    explicit <a name|id="..."> targets."""
    seen: Counter[str] = Counter()
    out: set[str] = set()
    text = path.read_text(encoding="utf-8")
    for _, line in prose_lines_raw(text):
        m = HEADING.match(line)
        if m:
            slug = slugify(m.group(2))
            out.add(slug if not seen[slug] else f"{slug}-{seen[slug]}")
            seen[slug] += 1
        out.update(re.findall(r"<a\s+(?:name|id)=\"([^\"]+)\"", line))
    return out


def prose_lines_raw(text: str) -> list[tuple[int, str]]:
    """Lines outside fenced code blocks, unchanged (headings keep their inline code)."""
    out, fenced = [], False
    for n, line in enumerate(text.splitlines(), 1):
        if FENCE.match(line):
            fenced = not fenced
            continue
        if not fenced:
            out.append((n, line))
    return out


def links(path: Path) -> list[tuple[int, str, bool]]:
    """(line, target, is_image) for every inline link, image, reference definition and HTML
    src/href outside code."""
    out = []
    text = path.read_text(encoding="utf-8")
    for n, line in prose_lines(text):
        for m in INLINE_LINK.finditer(line):
            out.append((n, m.group(3), m.group(1) == "!"))
        m = REFERENCE_DEF.match(line)
        if m:
            out.append((n, m.group(2), False))
        for m in HTML_SRC.finditer(line):
            out.append((n, m.group(1), "<img" in line.lower()))
    return out


def check_file(path: Path) -> list[str]:
    """Every broken relative link, missing image and unknown anchor in one Markdown file."""
    problems = []
    for n, target, is_image in links(path):
        where = f"{rel(path)}:{n}: {target!r}"
        if not target:
            problems.append(f"{where}: empty link target")
            continue
        if EXTERNAL.match(target):
            continue  # http(s), mailto: not part of the repository
        if target.startswith("/"):
            problems.append(f"{where}: absolute path; link relative to the file (or to a full URL)")
            continue
        file_part, _, anchor = target.partition("#")
        dest = (path.parent / file_part).resolve() if file_part else path
        if not dest.exists():
            problems.append(f"{where}: {'image' if is_image else 'file'} does not exist")
            continue
        try:
            dest.relative_to(ROOT)
        except ValueError:
            problems.append(f"{where}: points outside the repository")
            continue
        if is_image and not dest.is_file():
            problems.append(f"{where}: image is not a file")
        if anchor:
            if dest.suffix.lower() != ".md":
                problems.append(f"{where}: anchor into a non-Markdown file")
            elif anchor not in anchors(dest):
                problems.append(f"{where}: no heading with anchor #{anchor} in {rel(dest)}")
    return problems


def story_phrases(path: Path) -> list[str]:
    problems = []
    text = path.read_text(encoding="utf-8")
    for n, line in enumerate(text.splitlines(), 1):
        for pattern, what in STORY:
            for m in pattern.finditer(line):
                problems.append(f"{rel(path)}:{n}: {what}: {m.group(0)!r}")
    for n, line in prose_lines(text):
        line = INLINE_LINK.sub(lambda m: m.group(0).split("](", 1)[0], line)  # link targets may hold #anchors
        for m in ISSUE_REF.finditer(line):
            problems.append(f"{rel(path)}:{n}: an issue reference: {m.group(0)!r}")
    return problems


def test_there_are_docs() -> None:
    assert ROOT / "README.md" in DOC_FILES
    assert len(DOC_FILES) > 5, DOC_FILES


@pytest.mark.parametrize("path", DOC_FILES, ids=rel)
def test_links_anchors_and_images_resolve(path: Path) -> None:
    assert check_file(path) == []


@pytest.mark.parametrize("path", DOC_FILES, ids=rel)
def test_no_development_story(path: Path) -> None:
    assert story_phrases(path) == []


def test_every_image_in_docs_img_is_shown() -> None:
    shown = {(p.parent / t).resolve() for p in DOC_FILES for _, t, img in links(p) if img and not EXTERNAL.match(t)}
    unused = [rel(i) for i in sorted(IMAGES.glob("*")) if i.is_file() and i.resolve() not in shown]
    assert unused == []


def test_readme_keeps_the_ci_test_command_and_no_shared_links() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert "python3 -m venv .venv && .venv/bin/pip install -q -e '.[test]' && .venv/bin/python -m pytest" in readme
    assert "shared/" not in readme


# -- the checker itself: it must fail when a link breaks ------------------------------------------
def test_slugs_follow_github_rules() -> None:
    assert slugify("Job fields") == "job-fields"
    assert slugify("`mix_hard_negatives`") == "mix_hard_negatives"
    assert slugify("Code options: `augment`, `momentum_queue`") == "code-options-augment-momentum_queue"
    assert slugify("Synthetic negatives (MoCHi)") == "synthetic-negatives-mochi"
    assert slugify("Tried, did not help") == "tried-did-not-help"
    assert slugify("A teacher's prior, v2.0") == "a-teachers-prior-v20"


def test_the_checker_finds_broken_links(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys.modules[__name__], "ROOT", tmp_path)
    (tmp_path / "img").mkdir()
    (tmp_path / "img" / "a.png").write_bytes(b"\x89PNG")
    (tmp_path / "other.md").write_text("# Other page\n\n## Two words\n\n## Two words\n")
    page = tmp_path / "page.md"
    page.write_text(
        "# Title\n\n"
        "[ok](other.md) [ok](other.md#two-words) [ok](other.md#two-words-1) [ok](#title) "
        "![ok](img/a.png) [web](https://example.com/x#y)\n"
        "[gone](missing.md) [bad anchor](other.md#nope) [bad local](#nothing) ![gone](img/b.png)\n"
        "[abs](/docs)\n[ref]: nowhere.md\n"
        "`[in code](missing-too.md)`\n\n"
        "```\n[in a fence](missing-three.md)\n```\n"
    )
    problems = check_file(page)
    assert len(problems) == 6, problems
    for bad in ("missing.md", "#nope", "#nothing", "img/b.png", "/docs", "nowhere.md"):
        assert any(bad in p for p in problems), (bad, problems)


def test_the_checker_finds_development_story(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys.modules[__name__], "ROOT", tmp_path)
    page = tmp_path / "story.md"
    page.write_text(
        "Measured in the twelfth session.\nSee issue 4 and #12.\nThis round we tried it; last time it failed.\n"
        "The twenty-third round.\nGoal 1 is met.\n"
        "Fine: `#12` in code, [a link](other.md#12-steps), three rounds x 10 s, sessions of users.\n"
    )
    found = story_phrases(page)
    assert len(found) == 8, found
    assert not any(":6:" in p for p in found), found
