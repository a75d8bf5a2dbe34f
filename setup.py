"""Only what pyproject.toml cannot say: the Alembic revisions in the top-level
``migrations/`` ship inside the package as ``dhtstore.migrations``."""

from setuptools import find_packages, setup

setup(
    packages=[*find_packages(include=["dhtstore*"]), "dhtstore.migrations", "dhtstore.migrations.versions"],
    package_dir={"dhtstore.migrations": "migrations"},
)
