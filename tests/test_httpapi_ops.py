"""The operator's kit: every metric the Grafana dashboard queries exists, with the labels
it uses, in a running node's registry; the systemd unit passes ``systemd-analyze
verify`` and keeps the stop policy; ``db stats`` and ``db current`` print JSON."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from collections import defaultdict
from collections.abc import Callable
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import aiohttp
import anyio
import pytest
from click.testing import CliRunner

from dhtstore.cli import main
from dhtstore.data.schema import head_revision
from dhtstore.node import Node

ROOT = Path(__file__).resolve().parent.parent
DASHBOARD = ROOT / "scripts" / "ops" / "grafana-dashboard.json"
UNIT = ROOT / "scripts" / "ops" / "dhtstore.service"
SCRAPE_LABELS = {"instance", "job"}  # added by Prometheus, not by the node
PROMQL_WORDS = {"sum", "max", "min", "rate", "increase", "histogram_quantile", "by", "le"}


def dashboard_queries() -> list[str]:
    panels = json.loads(DASHBOARD.read_text())["panels"]
    return [target["expr"] for panel in panels for target in panel["targets"]]


def used_labels(expr: str) -> dict[str, set[str]]:
    """metric name -> labels the expression matches on or groups by."""
    grouped = {label.strip() for group in re.findall(r"by \(([^)]*)\)", expr) for label in group.split(",")}
    out: dict[str, set[str]] = {}
    for name, matchers in re.findall(r"(dhtstore_\w+)(?:\{([^}]*)\})?", expr):
        matched = {m.split("=")[0].strip().rstrip("!~") for m in matchers.split(",") if m.strip()}
        out[name] = (matched | grouped) - SCRAPE_LABELS - ({"le"} if not name.endswith("_bucket") else set())
    return out


def test_dashboard_parses_the_way_the_test_reads_it() -> None:
    expr = 'sum by (type, outcome) (rate(dhtstore_requests_total{instance=~"$instance"}[5m]))'
    assert used_labels(expr) == {"dhtstore_requests_total": {"type", "outcome"}}
    assert len(dashboard_queries()) >= 12


@pytest.mark.anyio
async def test_every_dashboard_metric_is_in_a_running_nodes_registry(
    loopback_options: Callable[..., Any], sqlite_store_url: str
) -> None:
    async with AsyncExitStack() as stack:
        a = await stack.enter_async_context(Node.start(loopback_options(sqlite_store_url, reprovide=True)))
        host, port = await stack.enter_async_context(a.routing_api().serve("127.0.0.1", 0))  # as `dhtstore run --http`
        async with aiohttp.ClientSession() as http, http.get(f"http://{host}:{port}/routing/v1/peers/{a.peer_id}") as response:
            assert response.status == 200
        b = await stack.enter_async_context(Node.start(loopback_options(None, [a.addresses()[0]])))
        with anyio.fail_after(10):
            await b.upkeep.bootstrapped.wait()
            while not a.stats().requests:  # a has served b's FIND_NODEs
                await anyio.sleep(0.05)
        await a.closest_peers(a.peer_id.to_bytes())  # a lookup: the latency histogram has samples
        a.store_rows = {"provider_records": 0}  # what the periodic row count sets
        samples: dict[str, set[str]] = defaultdict(set)
        for family in a.metrics.registry.collect():
            for sample in family.samples:
                samples[sample.name] |= set(sample.labels)
    missing = []
    for expr in dashboard_queries():
        for name, labels in used_labels(expr).items():
            if name not in samples:
                missing.append(f"{name} (in {expr})")
            elif labels - samples[name]:
                missing.append(f"{name} has no label {sorted(labels - samples[name])}")
    assert missing == []


def test_systemd_unit_verifies_and_keeps_the_stop_policy(tmp_path: Path) -> None:
    text = UNIT.read_text()
    settings = dict(line.split("=", 1) for line in text.splitlines() if "=" in line and not line.startswith("#"))
    assert settings["Restart"] == "on-failure"  # SIGTERM stops cleanly with status 0: no restart
    assert settings["KillSignal"] == "SIGTERM" and int(settings["TimeoutStopSec"]) > 30  # the final snapshot's bound
    for option in ("NoNewPrivileges", "ProtectSystem", "ProtectHome", "PrivateTmp", "RestrictAddressFamilies", "SystemCallFilter", "CapabilityBoundingSet"):
        assert option in settings, option
    analyze = shutil.which("systemd-analyze")
    dhtstore = shutil.which("dhtstore")
    if analyze is None or dhtstore is None:
        pytest.skip("systemd-analyze or the dhtstore command not installed")
    unit = tmp_path / "dhtstore.service"
    unit.write_text(text.replace("/usr/local/bin/dhtstore", dhtstore))
    result = subprocess.run([analyze, "verify", str(unit)], capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0 and result.stderr == "", result.stderr


def test_db_stats_and_current_json(tmp_path: Path) -> None:
    runner = CliRunner()
    data = str(tmp_path / "node")
    assert runner.invoke(main, ["init", "--data-dir", data]).exit_code == 0
    current = runner.invoke(main, ["db", "current", "--data-dir", data, "--json"])
    assert current.exit_code == 0, current.output
    fields = json.loads(current.output)
    assert fields["revision"] == fields["head"] == head_revision() and fields["at_head"] is True
    assert fields["store"].startswith("sqlite+aiosqlite:///")
    stats = runner.invoke(main, ["db", "stats", "--data-dir", data, "--json"])
    assert stats.exit_code == 0, stats.output
    figures = json.loads(stats.output)
    assert figures["rows"]["provider_records"] == 0 and "peers" in figures["rows"]
    assert figures["provider_records_expiring_within_hour"] == 0 and figures["size_bytes"] > 0


def test_http_address_from_the_flag_or_the_config_is_checked(tmp_path: Path) -> None:
    runner = CliRunner()
    data = tmp_path / "node"
    assert runner.invoke(main, ["init", "--data-dir", str(data)]).exit_code == 0
    result = runner.invoke(main, ["run", "--data-dir", str(data), "--http", "8080"])
    assert result.exit_code != 0 and "--http '8080': expected HOST:PORT" in result.output
    config = data / "config.toml"
    config.write_text(config.read_text().replace('http = ""', 'http = "localhost"'))
    result = runner.invoke(main, ["run", "--data-dir", str(data)])
    assert result.exit_code != 0 and "http 'localhost': expected HOST:PORT" in result.output
