"""Options and helpers every ``dhtstore`` command shares: where the data directory and
the store are, and how a failure is reported (one line, no traceback).

Resolution, in one place:
- data directory: ``--data-dir``, else ``DHTSTORE_DATA_DIR``, else ``~/.dhtstore``;
- store URL: ``--store``, else ``DHTSTORE_STORE``, else ``store`` in the data
  directory's config.toml, else ``sqlite+aiosqlite:///<data dir>/dhtstore.db``.
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import anyio
import click

from ..config import CONFIG_FILE_NAME, DEFAULT_DATA_DIR, IDENTITY_FILE_NAME, Config, ConfigError, load
from ..data.engine import StoreError, default_store_url

T = TypeVar("T")


@dataclass(frozen=True)
class Location:
    """Where a command finds the node's files and store."""

    data_dir: Path
    store_option: str | None  # --store / DHTSTORE_STORE, when given

    @property
    def config_file(self) -> Path:
        return self.data_dir / CONFIG_FILE_NAME

    @property
    def identity_file(self) -> Path:
        return self.data_dir / IDENTITY_FILE_NAME

    def config(self) -> Config:
        """The data directory's config, or the defaults when it has none yet."""
        return load(self.config_file) if self.config_file.exists() else Config()

    def store_url(self) -> str:
        return self.store_option or self.config().store or default_store_url(self.data_dir)


def location_options(command: Callable[..., Any]) -> Callable[..., Any]:
    """Add ``--data-dir`` and ``--store`` to a command; it receives ``where: Location``."""

    @click.option(
        "--store",
        "store",
        envvar="DHTSTORE_STORE",
        metavar="URL",
        help="Database URL (sqlite+aiosqlite:///PATH or postgresql+asyncpg://…). [env: DHTSTORE_STORE]",
    )
    @click.option(
        "--data-dir",
        "data_dir",
        envvar="DHTSTORE_DATA_DIR",
        type=click.Path(file_okay=False, path_type=Path),
        default=DEFAULT_DATA_DIR,
        show_default=True,
        help="Directory with the config, identity key and default store. [env: DHTSTORE_DATA_DIR]",
    )
    @functools.wraps(command)
    def wrapper(*args: Any, data_dir: Path, store: str | None, **kwargs: Any) -> Any:
        where = Location(data_dir.expanduser().absolute(), store or None)
        return command(*args, where=where, **kwargs)

    return wrapper


def run(fn: Callable[..., Awaitable[T]], *args: Any) -> T:
    """Run an async command body; store and config errors become one-line errors."""
    try:
        return anyio.run(fn, *args)
    except (StoreError, ConfigError) as exc:
        raise click.ClickException(str(exc)) from None


def fail(message: str) -> click.ClickException:
    return click.ClickException(message)
