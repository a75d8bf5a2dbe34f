"""``dhtstore init`` and ``dhtstore db …`` on SQLite and PostgreSQL."""

from __future__ import annotations

import stat
from pathlib import Path

import anyio
import pytest
from click.testing import CliRunner

from dhtstore.cli import main
from dhtstore.config import AMINO_BOOTSTRAP_PEERS, load
from dhtstore.crypto.keys import KeyType, PrivateKey
from dhtstore.data.schema import head_revision
from dhtstore.multihash import SHA2_256, Multihash
from dhtstore.providerstore.sql import open_provider_store


def invoke(*args: str, env: dict[str, str] | None = None) -> tuple[int, str]:
    result = CliRunner().invoke(main, list(args), env=env)
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    return result.exit_code, result.output


def one_line_error(output: str) -> str:
    lines = output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), output
    assert "Traceback" not in output
    return lines[0]


def test_init_creates_key_config_and_store(tmp_path: Path) -> None:
    data = tmp_path / "node"
    code, out = invoke("init", "--data-dir", str(data))
    assert code == 0, out
    key_file = data / "identity.key"
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    key = PrivateKey.from_protobuf(key_file.read_bytes())
    assert key.key_type is KeyType.Ed25519
    assert str(key.peer_id()) in out
    config = load(data / "config.toml")
    assert config.listen == ("/ip4/0.0.0.0/tcp/4001", "/ip4/0.0.0.0/udp/4001/quic-v1") and config.bootstrap == AMINO_BOOTSTRAP_PEERS
    assert (data / "dhtstore.db").is_file()
    code, out = invoke("db", "current", "--data-dir", str(data))
    assert code == 0 and f"revision {head_revision()} (head)" in out


def test_init_again_keeps_the_identity(tmp_path: Path) -> None:
    env = {"DHTSTORE_DATA_DIR": str(tmp_path / "node")}
    assert invoke("init", env=env)[0] == 0
    before = (tmp_path / "node" / "identity.key").read_bytes()
    code, out = invoke("init", env=env)
    assert code == 0 and "kept existing" in out
    assert (tmp_path / "node" / "identity.key").read_bytes() == before


def test_stats_counts_rows_and_expiring_records(tmp_path: Path) -> None:
    data = tmp_path / "node"
    invoke("init", "--data-dir", str(data))

    async def add() -> None:
        peer = PrivateKey.generate().peer_id()
        async with open_provider_store(f"sqlite+aiosqlite:///{data / 'dhtstore.db'}") as store:
            for i in range(3):
                await store.add_provider(Multihash(SHA2_256, bytes([i]) * 32).to_bytes(), peer)

    anyio.run(add)
    code, out = invoke("db", "stats", "--data-dir", str(data))
    assert code == 0, out
    rows = dict(line.split() for line in out.splitlines() if line.startswith("  "))
    assert rows["provider_records"] == "3" and rows["peers"] == "1" and rows["value_records"] == "0"
    assert "expiring within the hour: 0" in out
    assert "size: " in out and "bytes" in out


def test_downgrade_then_stats_names_the_upgrade_command(tmp_path: Path) -> None:
    data = str(tmp_path / "node")
    invoke("init", "--data-dir", data)
    code, out = invoke("db", "downgrade", "base", "--data-dir", data)
    assert code == 0 and "not initialised" in out
    code, out = invoke("db", "stats", "--data-dir", data)
    assert code == 1 and "dhtstore db upgrade" in one_line_error(out)
    code, out = invoke("db", "upgrade", "--data-dir", data)
    assert code == 0 and "(head)" in out


def test_history_lists_revisions() -> None:
    code, out = invoke("db", "history")
    assert code == 0 and head_revision() in out


@pytest.mark.parametrize(
    "args, message",
    [
        (["db", "stats", "--store", "postgresql+asyncpg://postgres@127.0.0.1:1/none"], "cannot open store"),
        (["db", "current", "--store", "postgresql+asyncpg://postgres@127.0.0.1:1/none"], "cannot open store"),
        (["db", "stats", "--store", "oracle://x@y/z"], "unsupported store"),
        (["db", "upgrade", "nonsense", "--store", "sqlite+aiosqlite:///{tmp}/s.db"], "Can't locate revision"),
        (["db", "stats", "--data-dir", "{tmp}/absent"], "dhtstore init"),
        (["db", "upgrade", "--store", "sqlite+aiosqlite:///{tmp}/file/sub/s.db"], "cannot create the store's directory"),
        (["init", "--data-dir", "{tmp}/file/sub"], "Not a directory"),
    ],
)
def test_errors_are_one_line(tmp_path: Path, args: list[str], message: str) -> None:
    (tmp_path / "file").write_text("a file where a directory should be")
    code, out = invoke(*(a.replace("{tmp}", str(tmp_path)) for a in args))
    assert code == 1 and message in one_line_error(out)


def test_broken_config_is_one_line(tmp_path: Path) -> None:
    (tmp_path / "config.toml").write_text("mode = 'sometimes'\n")
    code, out = invoke("db", "stats", "--data-dir", str(tmp_path))
    assert code == 1 and "mode" in one_line_error(out)


def test_init_and_stats_on_postgresql(tmp_path: Path, pg_store_url: str) -> None:
    env = {"DHTSTORE_STORE": pg_store_url}
    code, out = invoke("init", "--data-dir", str(tmp_path / "node"), env=env)
    assert code == 0, out
    assert load(tmp_path / "node" / "config.toml").store == pg_store_url
    code, out = invoke("db", "stats", env=env)
    assert code == 0 and "provider_records" in out and "bytes" in out


def test_security_order_comes_from_the_config(tmp_path: Path) -> None:
    from dhtstore.cli.common import Location
    from dhtstore.cli.run import _node_options

    data = tmp_path / "node"
    assert invoke("init", "--data-dir", str(data))[0] == 0
    config_file = data / "config.toml"
    assert load(config_file).security == ("noise", "tls")  # the default init writes
    text = config_file.read_text()
    assert 'security = [\n  "noise",\n  "tls",\n]' in text
    config_file.write_text(text.replace('security = [\n  "noise",\n  "tls",\n]', 'security = ["tls"]'))
    where = Location(data, None)
    options = _node_options(where, where.config(), listen=(), bootstrap=(), mode=None, lan=False, allow_private=None, store=False)
    assert tuple(options.security) == ("tls",)
    for bad in ('["tls", "ssh"]', "[]", '["noise", "noise"]', '"tls"'):
        config_file.write_text(f"security = {bad}\n")
        code, out = invoke("db", "stats", "--data-dir", str(data))
        assert code == 1 and "security" in one_line_error(out), bad
