"""The README for a newcomer, the docs site for the rest: both checked, so neither drifts from the project."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

import mhtag

ROOT = Path(__file__).resolve().parents[1]


def test_the_readme_is_short_and_ci_runs_exactly_its_test_command():
    readme = (ROOT / "README.md").read_text()
    assert len(readme.splitlines()) <= 250
    first_block = re.search(r"```bash\n(.*?)```", readme, re.S).group(1).splitlines()
    test_command = first_block[1].split("#")[0].strip()
    assert test_command.startswith(".venv/bin/pytest")
    assert (ROOT / ".ci" / "run").read_text().strip().splitlines()[-1].strip() == test_command


def test_every_page_the_readme_links_exists():
    readme = (ROOT / "README.md").read_text()
    links = re.findall(r"\]\(((?:docs|benchmarks)/[^)#]+)\)", readme)
    assert links and all((ROOT / link).exists() for link in links), [x for x in links if not (ROOT / x).exists()]


@pytest.mark.slow
def test_the_docs_site_builds_strict_and_documents_the_public_api(tmp_path):
    mkdocs = Path(sys.executable).with_name("mkdocs")
    done = subprocess.run([str(mkdocs), "build", "--strict", "-d", str(tmp_path / "site")], cwd=ROOT,
                          capture_output=True, text=True, timeout=300, env={**os.environ, "NO_MKDOCS_2_WARNING": "1"})
    assert done.returncode == 0, done.stderr[-3000:]
    api = (tmp_path / "site" / "api" / "index.html").read_text()
    missing = [name for name in mhtag.__all__ if 'id="mhtag.' not in api or name not in api]
    assert not missing, missing
