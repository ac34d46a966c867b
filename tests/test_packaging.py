"""What `pip install` brings: the licence, the typing marker, the documents the units name."""

from __future__ import annotations

import re
import subprocess
import sys
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
INSTALL = "/opt/integrityd/"  # where the units expect the project installed (README)


def test_every_documentation_link_of_the_units_exists_in_the_wheel(tmp_path: Path) -> None:
    """Each unit's Documentation= names a file that an install into /opt/integrityd has."""
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
         "-w", str(tmp_path), str(REPO)],
        check=True, capture_output=True,
    )  # fmt: skip
    [wheel] = tmp_path.glob("integrityd-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    data = {n.split(".data/data/", 1)[1] for n in names if ".data/data/" in n}
    assert "integrityd/py.typed" in names
    assert any(n.endswith(".dist-info/licenses/LICENSE") for n in names)
    links = []
    for unit in sorted((REPO / "systemd").glob("integrityd*")):
        if not unit.is_file():
            continue  # integrityd.service.d: drop-ins add no Documentation=
        for line in unit.read_text().splitlines():
            if line.startswith("Documentation="):
                links += [(unit.name, uri) for uri in line.split("=", 1)[1].split()]
    assert {name for name, _ in links} == {
        p.name for p in (REPO / "systemd").glob("integrityd*.service")
    } | {p.name for p in (REPO / "systemd").glob("integrityd*.timer")}
    for name, uri in links:
        assert uri.startswith("file://" + INSTALL), (name, uri)
        assert uri.removeprefix("file://" + INSTALL) in data, (name, uri)


def test_the_readme_has_no_link_a_package_index_would_break() -> None:
    """Shown on a package index, a link to a file of the repository leads nowhere."""
    readme = (REPO / "README.md").read_text()
    relative = re.findall(r"\]\((?!https?://|#)([^)]*)\)", readme)
    assert relative == []
