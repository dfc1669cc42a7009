"""Every `method.md §N` the repository cites names a section of docs/method.md (a heading `## N.` or `### N.M`)."""
import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DOC = REPO / "docs" / "method.md"
# "method.md §7.5", "method.md §2, §7, §9", "method.md §2–4, §7.1", "method.md §7.5 and §9"
CITATION = re.compile(r"method\.md((?:\s*(?:,|and)?\s*§\d+(?:\.\d+)?(?:[–-]\d+)?)+)")
SECTION = re.compile(r"§(\d+(?:\.\d+)?)(?:[–-](\d+))?")


def cited() -> dict[str, set[str]]:
    """section -> the files citing it, over the code, tests, benchmarks and documentation."""
    found: dict[str, set[str]] = {}
    for path in sorted(REPO.rglob("*")):
        if path.suffix not in (".py", ".md", ".toml") or path == DOC or ".venv" in path.parts or not path.is_file():
            continue
        for match in CITATION.finditer(path.read_text(errors="replace")):
            for first, last in SECTION.findall(match.group(1)):
                numbers = [first] if not last else [str(n) for n in range(int(first), int(last) + 1)]
                for number in numbers:
                    found.setdefault(number, set()).add(str(path.relative_to(REPO)))
    return found


def headings() -> set[str]:
    return {m.group(1) for m in re.finditer(r"^#{2,3} (\d+(?:\.\d+)?)[. ]", DOC.read_text(), re.MULTILINE)}


def test_every_cited_section_of_method_md_exists():
    sections, references = headings(), cited()
    assert {"1", "2", "3", "4", "5", "7", "7.5", "8", "9", "10"} <= sections
    assert len(references) >= 10  # the pattern still finds the citations
    missing = {number: sorted(files) for number, files in references.items() if number not in sections}
    assert not missing, f"cited but not in docs/method.md: {missing}"
