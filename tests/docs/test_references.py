"""Every "SPEC §n" cited in the code, the tests and the docs is a section of docs/math.md, and the README is small."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
CITATION = re.compile(r"SPEC\s+((?:§\d+)(?:\s*(?:,|and|or|–|-)\s*§\d+)*)")


def _sections() -> set[str]:
    headings = re.findall(r"^#+\s+§(\d+)\b", (ROOT / "docs" / "math.md").read_text(encoding="utf-8"), re.MULTILINE)
    return set(headings)


def _cited() -> dict[str, set[str]]:
    cited: dict[str, set[str]] = {}
    files = [ROOT / "README.md", *ROOT.joinpath("src").rglob("*"), *ROOT.joinpath("docs").rglob("*.md"),
             *(path for folder in ("tests", "examples", "benchmarks") for path in ROOT.joinpath(folder).rglob("*.py"))]
    for path in files:
        if path.suffix not in (".py", ".md", ".html", ".js", ".css") or not path.is_file():
            continue
        for match in CITATION.finditer(path.read_text(encoding="utf-8")):
            cited.setdefault(str(path.relative_to(ROOT)), set()).update(re.findall(r"§(\d+)", match.group(1)))
    return cited


def test_every_spec_citation_is_a_section_of_the_math_page() -> None:
    sections = _sections()
    assert {"1", "2", "3", "4", "5", "6", "7"} <= sections
    cited = _cited()
    assert cited, "no SPEC citation found: the pattern is wrong"
    unresolved = {path: sorted(numbers - sections) for path, numbers in cited.items() if numbers - sections}
    assert not unresolved, f"SPEC sections cited but not in docs/math.md: {unresolved}"


def test_readme_is_a_landing_page() -> None:
    readme = (ROOT / "README.md").read_bytes()
    assert len(readme) <= 12 * 1024
    assert b"#the-spec" not in readme
