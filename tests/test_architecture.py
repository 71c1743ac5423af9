"""The import rules of docs/design.md, enforced with import-linter's contracts in pyproject.toml."""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _lint(cwd: Path) -> subprocess.CompletedProcess:
    exe = shutil.which("lint-imports", path=str(Path(sys.executable).parent)) or shutil.which("lint-imports")
    assert exe, "import-linter is a dev dependency: pip install -e '.[dev]'"
    return subprocess.run([exe, "--no-cache"], cwd=cwd, capture_output=True, text=True, timeout=300)


def _contracts() -> int:
    import tomllib

    return len(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]["contracts"])


def test_import_contracts_hold():
    out = _lint(ROOT)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-2000:]
    assert f"{_contracts()} kept, 0 broken" in out.stdout


@pytest.mark.parametrize("module, imports, contract", [
    ("cli/deploy.py", "fedattr.cli.app", "The CLI imports downhill"),  # deploy taking the CLI's helpers back
    ("cli/console.py", "fedattr.cli.runs", "The CLI imports downhill"),
    ("report/detectors.py", "fedattr.report.markdown", "The report imports downhill"),
    ("report/plots.py", "fedattr.report.markdown", "The report imports downhill"),
    ("report/detectors.py", "fedattr.report.plots", "The report imports downhill"),
    ("core/io.py", "fedattr.results.store", "core is shared by every package"),
])
def test_a_circle_coming_back_breaks_a_contract(tmp_path, module, imports, contract):
    """Each circle the package once had, put back as a call-time import, fails lint-imports."""
    shutil.copytree(ROOT / "fedattr", tmp_path / "fedattr", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    target = tmp_path / "fedattr" / module
    target.write_text(target.read_text() + f"\n\ndef _circle():\n    import {imports}  # noqa: F401\n")
    out = _lint(tmp_path)
    assert out.returncode != 0, out.stdout[-3000:]
    broken = out.stdout.split("Broken contracts")[-1]
    assert contract in broken, out.stdout[-3000:]
