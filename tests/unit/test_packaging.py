"""The package's layout: every folder of Python code is packaged, and nothing in the repository root
shadows a standard-library module (the repository root is on sys.path in `python -c`, pytest, ...)."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_every_code_folder_is_a_listed_package() -> None:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    listed = set(config["packages"])
    for package, folder in config["package-dir"].items():
        for path in sorted((ROOT / folder).rglob("*.py")):
            if "__pycache__" in path.parts:
                continue
            sub = path.parent.relative_to(ROOT / folder).parts
            name = ".".join((package, *sub))
            assert name in listed, f"{path.relative_to(ROOT)} is in {name}, which pyproject.toml omits"


def test_no_top_level_folder_shadows_the_standard_library() -> None:
    for entry in sorted(ROOT.iterdir()):
        module = entry.stem if entry.suffix == ".py" else entry.name
        if module not in sys.stdlib_module_names:
            continue
        regular = entry.is_file() or (entry / "__init__.py").exists()
        assert not regular, f"{entry.name} would shadow the standard library's {module} module"


def test_the_standard_library_imports_from_the_repository_root() -> None:
    # -I would drop the current directory from sys.path: `-c` keeps it, as a user's shell would.
    result = subprocess.run(
        [sys.executable, "-S", "-c", "import json, operator; print(operator.__file__)"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert str(ROOT) not in result.stdout
