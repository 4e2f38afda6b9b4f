"""The install prints no deprecation warning of our own making (setuptools' `project.license` table)."""

from __future__ import annotations

import re
import tomllib

import pytest

from incident_engine.config import REPO_ROOT

pytestmark = pytest.mark.unit


def test_license_is_an_spdx_expression_and_setuptools_accepts_it() -> None:
    project = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())
    assert project["project"]["license"] == "Apache-2.0"  # a table ({text = ...}) is deprecated
    assert not any(c.startswith("License ::") for c in project["project"].get("classifiers", []))
    (setuptools,) = [r for r in project["build-system"]["requires"] if r.startswith("setuptools")]
    minimum = re.fullmatch(r"setuptools>=(\d+)(?:\.\d+)*", setuptools)
    assert minimum and int(minimum[1]) >= 77, setuptools  # SPDX strings need setuptools 77
