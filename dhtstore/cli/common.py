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
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, TypeVar

import anyio
import click

from ..config import (
    CONFIG_FILE_NAME,
    DEFAULT_DATA_DIR,
    DEFAULT_IDENTITY,
    Config,
    ConfigError,
    identity_path,
    load,
)
from ..data.engine import default_store_url
from ..errors import StoreError

T = TypeVar("T")


@dataclass(frozen=True)
class Location:
    """Where a command finds the node's files and store."""

    data_dir: Path
    store_option: str | None  # --store / DHTSTORE_STORE, when given
    identity: str = DEFAULT_IDENTITY  # --identity NAME (run, init)

    @property
    def config_file(self) -> Path:
        return self.data_dir / CONFIG_FILE_NAME

    @property
    def identity_file(self) -> Path:
        return identity_path(self.data_dir, self.identity)

    @property
    def init_command(self) -> str:
        """The command that creates this identity, for error messages."""
        return "dhtstore init" if self.identity == DEFAULT_IDENTITY else f"dhtstore init --identity {self.identity}"

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


def identity_option(command: Callable[..., Any]) -> Callable[..., Any]:
    """Add ``--identity NAME`` to a command that has ``location_options`` (apply it
    first, i.e. below ``@location_options``); it sets ``where.identity``."""

    @click.option(
        "--identity",
        "identity",
        envvar="DHTSTORE_IDENTITY",
        default=DEFAULT_IDENTITY,
        show_default=True,
        metavar="NAME",
        help="Which identity key: 'default' is identity.key, NAME is identities/NAME.key in the data directory. "
        "Several processes with different identities can share one config and one PostgreSQL store. [env: DHTSTORE_IDENTITY]",
    )
    @functools.wraps(command)
    def wrapper(*args: Any, where: Location, identity: str, **kwargs: Any) -> Any:
        try:
            identity_path(where.data_dir, identity)  # checks the name
        except ConfigError as exc:
            raise click.BadParameter(str(exc), param_hint="--identity") from None
        return command(*args, where=replace(where, identity=identity), **kwargs)

    return wrapper


def run(fn: Callable[..., Awaitable[T]], *args: Any) -> T:
    """Run an async command body; store and config errors become one-line errors."""
    try:
        return anyio.run(fn, *args)
    except (StoreError, ConfigError) as exc:
        raise click.ClickException(str(exc)) from None
    except OSError as exc:  # e.g. a data directory we may not write
        where = f"{exc.filename}: " if exc.filename else ""
        raise click.ClickException(f"{where}{exc.strerror or exc}") from None


def fail(message: str) -> click.ClickException:
    return click.ClickException(message)
