"""The companion is citable: CITATION.cff is valid Citation File Format 1.2.0 with the paper as
its preferred citation, the licence is the MIT licence that pyproject.toml declares, and the
README says how to cite.

The schema, ``vendor/cff-1.2.0.schema.json``, is the official CFF 1.2.0 JSON schema, copied
unchanged from the cffconvert 2.0.0 package on PyPI (``cffconvert/schemas/1.2.0/schema.json``),
so the check needs no network.
"""

from __future__ import annotations

import json
import tomllib

import jsonschema
import yaml

from gsfh_utils.lab.io import REPOSITORY_ROOT

SCHEMA = json.loads((REPOSITORY_ROOT / "vendor" / "cff-1.2.0.schema.json").read_text())
CITATION = yaml.safe_load((REPOSITORY_ROOT / "CITATION.cff").read_text())
ARXIV = "2312.11456"


def errors(citation: dict) -> list[str]:
    validator = jsonschema.Draft7Validator(SCHEMA, format_checker=jsonschema.FormatChecker())
    return [error.message for error in validator.iter_errors(citation)]


def test_citation_file_is_valid_cff_1_2_0():
    assert SCHEMA["$id"].endswith("/1.2.0/schema.json")
    assert CITATION["cff-version"] == "1.2.0"
    assert not errors(CITATION)


def test_the_schema_check_catches_an_invalid_file():
    broken = {key: value for key, value in CITATION.items() if key != "authors"}
    assert errors(broken)
    assert errors({**CITATION, "preferred-citation": {"type": "article"}})


def test_the_paper_is_the_preferred_citation():
    paper = CITATION["preferred-citation"]
    assert ARXIV in paper["doi"] and ARXIV in paper["url"]
    assert paper["authors"][0] == {"family-names": "Xiong", "given-names": "Wei"}
    assert len(paper["authors"]) == 8


def test_licence_matches_pyproject():
    project = tomllib.loads((REPOSITORY_ROOT / "pyproject.toml").read_text())["project"]
    assert project["license"] == {"text": "MIT"} and CITATION["license"] == "MIT"
    assert (REPOSITORY_ROOT / "LICENSE").read_text().startswith("MIT License\n")
    assert CITATION["version"] == project["version"]


def test_readme_says_how_to_cite():
    readme = (REPOSITORY_ROOT / "README.md").read_text()
    section = readme.split("## How to cite\n", 1)[1].split("\n## ", 1)[0]
    assert ARXIV in section and "CITATION.cff" in section
