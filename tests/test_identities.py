"""Named identities: several keys in one data directory (``--identity NAME``), each
named in status lines and metrics."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest
from click.testing import CliRunner
from prometheus_client import generate_latest

from dhtstore.cli import main
from dhtstore.cli.run import _format_status
from dhtstore.config import ConfigError, identity_path, read_identity
from dhtstore.crypto.keys import PrivateKey
from dhtstore.node import Node, NodeOptions


def invoke(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(main, list(args))
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    return result.exit_code, result.output


def test_identity_paths(tmp_path: Path) -> None:
    assert identity_path(tmp_path, None) == tmp_path / "identity.key"
    assert identity_path(tmp_path, "default") == tmp_path / "identity.key"
    assert identity_path(tmp_path, "head-1.eu_2") == tmp_path / "identities" / "head-1.eu_2.key"


@pytest.mark.parametrize("name", ["", "../x", "a/b", ".hidden", "x" * 65, "a b", "é"])
def test_identity_names_that_could_leave_the_directory_are_refused(tmp_path: Path, name: str) -> None:
    with pytest.raises(ConfigError, match="identity name"):
        identity_path(tmp_path, name)


def test_init_creates_named_identities_beside_the_default(tmp_path: Path) -> None:
    data = str(tmp_path / "node")
    code, out = invoke("init", "--data-dir", data)
    assert code == 0, out
    ids = {}
    for name in ("a", "b"):
        code, out = invoke("init", "--data-dir", data, "--identity", name)
        assert code == 0, out
        key_file = tmp_path / "node" / "identities" / f"{name}.key"
        assert f"created {key_file}" in out and "config:   kept existing" in out
        assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
        ids[name] = str(read_identity(key_file).peer_id())
        assert f"peer id:  {ids[name]} (identity {name})" in out
    assert stat.S_IMODE((tmp_path / "node" / "identities").stat().st_mode) == 0o700
    default = str(read_identity(tmp_path / "node" / "identity.key").peer_id())
    assert len({default, *ids.values()}) == 3

    code, out = invoke("init", "--data-dir", data, "--identity", "a")  # again: kept
    assert code == 0 and f"kept existing {tmp_path / 'node' / 'identities' / 'a.key'}" in out
    assert f"peer id:  {ids['a']} (identity a)" in out


def test_bad_identity_name_is_a_usage_error(tmp_path: Path) -> None:
    code, out = invoke("init", "--data-dir", str(tmp_path), "--identity", "../escape")
    assert code == 2 and "Invalid value for --identity" in out and "Traceback" not in out
    assert not (tmp_path.parent / "escape.key").exists()


def test_run_with_a_missing_identity_names_the_init_command(tmp_path: Path) -> None:
    data = str(tmp_path / "node")
    assert invoke("init", "--data-dir", data)[0] == 0
    code, out = invoke("run", "--data-dir", data, "--identity", "b2", "--listen", "/ip4/127.0.0.1/tcp/0")
    assert code == 1
    assert out.strip() == f"Error: no identity key at {tmp_path / 'node' / 'identities' / 'b2.key'}: run `dhtstore init --identity b2`"


@pytest.mark.anyio
async def test_status_and_metrics_name_the_identity(sqlite_store_url: str) -> None:
    options = NodeOptions(
        identity=PrivateKey.generate(), store_url=sqlite_store_url, listen=["/ip4/127.0.0.1/tcp/0"],
        reprovide=False, identity_name="head-2",
    )
    async with Node.start(options) as node:
        status = node.status()
        assert status["identity"] == "head-2" and status["store"] == "up"
        assert _format_status(status).startswith("status: identity=head-2 store=up table=0")
        scraped = generate_latest(node.metrics.registry).decode()
    who = f'identity="head-2",peer_id="{node.peer_id}"'
    assert f"dhtstore_routing_table_peers{{{who}}} 0.0" in scraped
    assert f"dhtstore_store_up{{{who}}} 1.0" in scraped
