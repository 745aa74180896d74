"""The wheel's package names, the one thing pyproject.toml can't say by itself.

The source folders stay vault/, api/ and cli/ (the layout the design card names), but the
wheel must not claim generic top-level names in site-packages, where any other distribution
may install an ``api`` or a ``cli``: api/ ships as ``blo_vault.api`` and cli/ as
``blo_vault.cli``; vault/ keeps its name. policies/ ships inside vault as ``vault/_policies``.
Every folder below them is listed, so a new subpackage or data folder ships without editing
this file (tests/integration/test_packaging.py checks the wheel).
"""

from __future__ import annotations

from setuptools import find_namespace_packages, setup

# source folder -> the package it installs as
SOURCES = {
    "vault": "vault",
    "policies": "vault._policies",
    "api": "blo_vault.api",
    "cli": "blo_vault.cli",
}


def packages_in(folder: str, name: str) -> list[str]:
    """``name`` and every folder under ``folder`` as a package below it."""
    below = find_namespace_packages(where=folder, exclude=["__pycache__", "*.__pycache__"])
    return [name, *(f"{name}.{sub}" for sub in below)]


setup(
    packages=[pkg for folder, name in SOURCES.items() for pkg in packages_in(folder, name)],
    package_dir={name: folder for folder, name in SOURCES.items()},
)
