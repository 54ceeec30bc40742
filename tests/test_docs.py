"""Citations of the design documents resolve inside the repository (issue 26).

Code comments cite the design documents as `docs/METHODS.md §3`; a clone has no notes folder beside it, so a
citation of a file outside the repository (`METHODS.md §3`, `shared/BENCHMARKS.md`) or of a section the file
lacks (`docs/METHODS.md §9`) is a dead end for the reader. This test reads every text file the grep of issue 26
covers and checks both. Inside `docs/` a bare `METHODS.md` means the file beside it.
"""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SCANNED = ["mmpo", "benchmarks", "tests", "configs", "docs", "README.md"]
SUFFIXES = {".py", ".md", ".yaml", ".yml", ".toml", ".txt"}
DOCS = "METHODS|BENCHMARKS|STYLE|ENVIRONMENT|DESIGN"
# a path-like prefix, the document's name, then ".md" (or, for the `METHODS §2` form, a section sign next)
CITATION = re.compile(rf"([\w./-]*?)\b({DOCS})(\.md\b|(?= §))")
SECTION = re.compile(r"§\s?(\d+(?:\.\d+)?[a-z]?)")


def sections(doc: Path) -> set[str]:
    """The section numbers a document has: `## 2.` -> "2", `### 1.4` -> "1.4", `### c.` under `## 2.` -> "2c"."""
    found, top = set(), None
    for line in doc.read_text(encoding="utf-8").splitlines():
        m = re.match(r"#{2,4} (\d+(?:\.\d+)?)\.?\s", line)
        if m:
            found.add(m.group(1))
            top = m.group(1).split(".")[0] if line.startswith("## ") else top
            continue
        m = re.match(r"#{3,4} ([a-z])\.\s", line)
        if m and top is not None:
            found.add(top + m.group(1))
    return found


def bad_citations(text: str, where: str, in_docs: bool) -> list[str]:
    """Every citation in `text` whose file is not in the repository, or whose `§N` that file lacks."""
    bad = []
    for lineno, line in enumerate(text.splitlines(), 1):
        matches = list(CITATION.finditer(line))
        for i, m in enumerate(matches):
            prefix, name = m.group(1), m.group(2) + ".md"
            if prefix == "" and (in_docs or m.group(3) != ".md"):
                prefix = "docs/"  # beside the citing file in docs/, or the `METHODS §2` shorthand
            doc = REPO / prefix / name
            if prefix != "docs/" or not doc.is_file():
                bad.append(f"{where}:{lineno}: {prefix}{name} is not a document of the repository (use docs/{name})")
                continue
            tail = line[m.end():matches[i + 1].start() if i + 1 < len(matches) else len(line)]
            missing = [s for s in SECTION.findall(tail) if s not in sections(doc)]
            if missing:
                bad.append(f"{where}:{lineno}: docs/{name} has no section {', '.join('§' + s for s in missing)}")
    return bad


def scanned_files():
    for top in SCANNED:
        path = REPO / top
        files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
        for f in files:
            # this file's own examples are dead citations on purpose
            if f.suffix in SUFFIXES and f.stat().st_size < 1_000_000 and f != Path(__file__).resolve():
                yield f


def test_every_design_doc_citation_resolves():
    bad = []
    for f in scanned_files():
        rel = f.relative_to(REPO)
        bad += bad_citations(f.read_text(encoding="utf-8", errors="replace"), str(rel), rel.parts[0] == "docs")
    assert not bad, "\n".join(bad)


def test_the_checker_catches_dead_citations():
    """The check itself: each kind of dead citation is reported, good ones are not."""
    assert bad_citations("Math: docs/METHODS.md §0-§6; docs/ENVIRONMENT.md §2c and §2e", "x.py", False) == []
    assert bad_citations('(docs/DESIGN.md "Evaluation"); METHODS §6.6; docs/STYLE.md principle 12', "x.py", False) == []
    assert bad_citations("see METHODS.md §3", "x.py", False) == [
        "x.py:1: METHODS.md is not a document of the repository (use docs/METHODS.md)"]
    assert bad_citations("a\n(shared/BENCHMARKS.md §1)", "x.py", False)[0].startswith("x.py:2: shared/BENCHMARKS.md")
    assert bad_citations("docs/METHODS.md §9", "x.py", False) == ["x.py:1: docs/METHODS.md has no section §9"]
    assert bad_citations("docs/ENVIRONMENT.md §2z", "x.py", False) == ["x.py:1: docs/ENVIRONMENT.md has no section §2z"]
    assert bad_citations("docs/NOTES.md", "x.py", False) == []  # not a design document name
    assert bad_citations("see METHODS.md §3", "docs/X.md", True) == []  # inside docs/: the file beside it


def test_sections_are_read_from_headings():
    assert {"0", "1", "3", "6.5", "6.6", "7"} <= sections(REPO / "docs/METHODS.md")
    assert {"1.1", "1.4", "2.1", "2.2", "4"} <= sections(REPO / "docs/BENCHMARKS.md")
    assert {"1", "2", "2a", "2c", "2d", "2e", "3"} <= sections(REPO / "docs/ENVIRONMENT.md")
