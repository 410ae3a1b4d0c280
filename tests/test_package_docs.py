"""Each package's docstring maps its modules: every module of the package is named there (as `name`), and
every `name` listed at the start of a line of the job floor's map is a module. Read from the source (no
imports: the engine's would pull in torch)."""
import ast
import re
from pathlib import Path

import pytest

PACKAGE_ROOT = Path(__file__).resolve().parents[1] / "xtp_ray"
PACKAGES = sorted(p.parent for p in PACKAGE_ROOT.glob("*/__init__.py"))


def _docstring(package: Path) -> str:
    return ast.get_docstring(ast.parse((package / "__init__.py").read_text(encoding="utf-8"))) or ""


def _modules(package: Path) -> set[str]:
    return {p.stem for p in package.glob("*.py") if p.stem != "__init__"}


@pytest.mark.parametrize("package", PACKAGES, ids=lambda p: p.name)
def test_the_package_docstring_names_every_module(package):
    named = set(re.findall(r"`(\w+)", _docstring(package)))
    assert _modules(package) - named == set(), f"xtp_ray/{package.name}/__init__.py does not name them"


def test_the_job_floors_map_lists_its_modules_once_each_and_nothing_else():
    listed = re.findall(r"^- `(\w+)`: ", _docstring(PACKAGE_ROOT / "job"), re.M)
    assert sorted(listed) == sorted(_modules(PACKAGE_ROOT / "job"))
