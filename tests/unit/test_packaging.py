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


DATAPLANE = ROOT / "sfu" / "dataplane"


def test_the_dataplane_crate_has_the_one_version() -> None:
    from voxa.common.version import VERSION

    crate = tomllib.loads((DATAPLANE / "Cargo.toml").read_text())["package"]
    assert crate["version"] == VERSION, "sfu/dataplane/Cargo.toml's version must be voxa.common.version's"
    # Cargo.lock is committed and the build runs `--locked`: it must name the same version.
    lock = tomllib.loads((DATAPLANE / "Cargo.lock").read_text())["package"]
    (locked,) = [p["version"] for p in lock if p["name"] == crate["name"]]
    assert locked == VERSION, "sfu/dataplane/Cargo.lock is stale: run `cargo update -w` in sfu/dataplane"


def test_the_dataplane_is_built_by_the_maturin_its_build_system_names() -> None:
    requires = tomllib.loads((DATAPLANE / "pyproject.toml").read_text())["build-system"]["requires"]
    (wanted,) = [r for r in requires if r.startswith("maturin")]
    script = (ROOT / ".ci" / "dataplane.sh").read_text()
    assert f"MATURIN_SPEC='{wanted}'" in script, ".ci/dataplane.sh must install the crate's maturin range"
    # The Dockerfile's dataplane-source stage (a plain `docker build`) installs the same range.
    assert f'pip install -q "{wanted}"' in (ROOT / "Dockerfile").read_text()


def test_the_dataplane_wheel_ships_its_type_stub() -> None:
    # maturin puts <module-name>.pyi next to pyproject.toml into the wheel, with py.typed; mypy reads
    # it from site-packages.
    module = tomllib.loads((DATAPLANE / "pyproject.toml").read_text())["tool"]["maturin"]["module-name"]
    assert (DATAPLANE / f"{module}.pyi").is_file()
