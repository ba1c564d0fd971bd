"""The documents a new user reads first: LICENSE (MIT, as setup.cfg says), CITATION.cff (CFF 1.2.0
with the method and models it runs), and the READMEs, whose links must lead somewhere and whose
commands must exist."""

import configparser
import re
from pathlib import Path

import pytest
import yaml

from virnucpro.cli import build_parser

ROOT = Path(__file__).resolve().parents[1]
MANUALS = [ROOT / "README.md", ROOT / "bench" / "README.md", ROOT / "tests" / "slurm" / "README.md",
           ROOT / "virnucpro" / "data" / "example" / "README.md"]
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
FENCE = re.compile(r"^```.*?^```", re.S | re.M)
# CFF 1.2.0's patterns for these fields (schema.json of citation-file-format)
DOI = re.compile(r"^10\.\d{4,9}(\.\d+)?/[A-Za-z0-9:/_;\-.()\[\]\\]+$")
URL = re.compile(r"^(https|http|ftp|sftp)://.+")


def test_license_is_the_mit_text_that_setup_cfg_names():
    setup = configparser.ConfigParser()
    setup.read(ROOT / "setup.cfg")
    assert setup["metadata"]["license"] == "MIT"
    text = (ROOT / "LICENSE").read_text()
    assert text.startswith("MIT License") and "virnucpro contributors" in text
    assert "Permission is hereby granted, free of charge" in text and 'THE SOFTWARE IS PROVIDED "AS IS"' in text


def test_citation_cff_is_cff_1_2_0_citing_virnucpro_dnabert_s_and_esm_2():
    cff = yaml.safe_load((ROOT / "CITATION.cff").read_text())
    assert cff["cff-version"] == "1.2.0"
    assert {"authors", "message", "title"} <= set(cff) and cff["type"] == "software" and cff["license"] == "MIT"
    assert all(author.get("name") or author.get("family-names") for author in cff["authors"])
    references = cff["references"]
    for ref in references:
        assert {"authors", "title", "type"} <= set(ref), ref
        assert all(isinstance(ref[key], int) for key in ("year", "volume", "start", "end") if key in ref), ref
        assert "doi" not in ref or DOI.match(ref["doi"]), ref["doi"]
        assert all(URL.match(ref[key]) for key in ("url", "repository-code") if key in ref), ref
    titles = " | ".join(ref["title"] for ref in references)
    assert "VirNucPro" in titles and "DNABERT-S" in titles
    esm2 = next(ref for ref in references if ref.get("journal") == "Science")
    assert esm2["year"] == 2023 and esm2["authors"][0]["family-names"] == "Lin"
    assert next(r for r in references if "VirNucPro" in r["title"])["authors"][0] == {"family-names": "Li",
                                                                                      "given-names": "Jing"}


def heading_anchors(markdown: str) -> set[str]:
    """GitHub's anchors: lower case, punctuation but '-' and '_' dropped, spaces to '-'."""
    headings = re.findall(r"^#+ (.+)$", FENCE.sub("", markdown), re.M)
    return {re.sub(r"[^\w\- ]", "", h.strip().lower()).replace(" ", "-") for h in headings}


@pytest.mark.parametrize("manual", MANUALS, ids=lambda p: str(p.relative_to(ROOT)))
def test_manual_links_lead_to_files_and_headings_that_exist(manual):
    text = FENCE.sub("", manual.read_text())
    local = [t for t in LINK.findall(text) if not re.match(r"[a-z]+:", t)]
    assert local or manual.name == "README.md"
    for target in local:
        path, _, anchor = target.partition("#")
        file = (manual.parent / path).resolve() if path else manual
        assert file.exists(), f"{manual.name}: link to {target}: no such file"
        if anchor:
            assert anchor in heading_anchors(file.read_text()), f"{manual.name}: link to {target}: no such heading"


def test_readme_has_the_manual_sections_and_the_performance_history_lives_in_bench():
    readme = (ROOT / "README.md").read_text()
    sections = re.findall(r"^## (.+)$", FENCE.sub("", readme), re.M)
    for wanted in ("Set up", "Running on real data", "SLURM", "Outputs", "Models", "The method", "The workdir",
                   "Performance", "Development"):
        assert wanted in sections, sections
    performance = readme.split("\n## Performance\n", 1)[1].split("\n## ", 1)[0]
    assert len(performance.splitlines()) < 40 and "bench/README.md" in performance
    assert "--compare ddcc749" in (ROOT / "bench" / "README.md").read_text()


def test_commands_the_readme_names_exist():
    commands = set(next(a for a in build_parser()._actions if a.dest == "command").choices)
    text = "\n".join(path.read_text() for path in MANUALS[:2])
    named = set(re.findall(r"virnucpro-slurm ([a-z][a-z0-9-]*)", text))
    assert named and named <= commands, named - commands


def test_demo_run_folder_is_ignored_by_git():
    ignored = (ROOT / ".gitignore").read_text().split()
    assert "demo-run/" in ignored
