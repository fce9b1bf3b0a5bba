"""The installed layout and the layering contracts stay complete as modules are added.

setup.cfg maps the repository's folders to one import name (runtime/ -> conveyor, handlers/ ->
conveyor.handlers, entrypoints/ -> conveyor.entrypoints) and lists the packages by hand; a package
missing there is absent from the wheel and so from every image. .importlinter lists the core's
modules by hand; a module missing there escapes the layering check.
"""

from __future__ import annotations

import configparser
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
FOLDERS = {
    "runtime": "conveyor",
    "handlers": "conveyor.handlers",
    "entrypoints": "conveyor.entrypoints",
    "gateway": "conveyor.gateway",
}
EDGES = {"conveyor.cli", "conveyor.__main__"}  # read the environment and exit; may register plugins
PLUGINS = {"conveyor.local", "conveyor.handlers", "conveyor.entrypoints", "conveyor.gateway", "conveyor.serve",
           "conveyor.sweep"}


def _packages_on_disk() -> set[str]:
    found = set()
    for folder, name in FOLDERS.items():
        for init in (REPO / folder).rglob("__init__.py"):
            relative = init.parent.relative_to(REPO / folder).parts
            if "__pycache__" in relative:
                continue
            found.add(".".join((name, *relative)))
    return found


def _setup_cfg() -> configparser.ConfigParser:
    parser = configparser.ConfigParser()
    parser.read(REPO / "setup.cfg")
    return parser


def _listed(value: str) -> set[str]:
    return {line.strip() for line in value.splitlines() if line.strip() and not line.strip().startswith("#")}


def test_every_package_folder_is_installed() -> None:
    listed = _listed(_setup_cfg()["options"]["packages"])
    on_disk = _packages_on_disk()
    assert on_disk - listed == set(), "add these to setup.cfg [options] packages"
    assert listed - on_disk == set(), "setup.cfg lists packages that do not exist"


def test_the_package_dir_maps_each_folder() -> None:
    mapping = {}
    for line in _listed(_setup_cfg()["options"]["package_dir"]):
        name, _, folder = line.partition("=")
        mapping[folder.strip()] = name.strip()
    assert mapping == FOLDERS


def _core_modules() -> set[str]:
    """Top-level modules and packages of conveyor, edges and plugins excluded."""
    names = set()
    for path in (REPO / "runtime").iterdir():
        if path.name.startswith(("_", ".")) and path.name != "__main__.py":
            continue
        if path.is_dir() and (path / "__init__.py").exists():
            names.add(f"conveyor.{path.name}")
        elif path.suffix == ".py":
            names.add(f"conveyor.{path.stem}")
    names.update({"conveyor.handlers", "conveyor.entrypoints", "conveyor.gateway"})
    return names - EDGES - PLUGINS


def test_every_core_module_is_under_the_layering_contract() -> None:
    contracts = configparser.ConfigParser()
    contracts.read(REPO / ".importlinter")
    core = contracts["importlinter:contract:core"]
    sources = _listed(core["source_modules"])
    assert _core_modules() - sources == set(), "add these core modules to .importlinter's core contract"
    assert sources - _core_modules() == set(), ".importlinter names core modules that do not exist"
    assert _listed(core["forbidden_modules"]) >= PLUGINS | EDGES
