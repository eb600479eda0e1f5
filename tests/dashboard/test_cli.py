"""``attnlab dashboard``: the command's options, its checks and what it refuses."""

from __future__ import annotations

import threading

import pytest
import typer
from typer.testing import CliRunner

from attnlab.cli import dashboard_cmd


@pytest.fixture
def cli():
    app = typer.Typer(add_completion=False)
    app.callback()(lambda: None)
    dashboard_cmd.register(app)
    return app


def test_help_lists_the_options(cli):
    result = CliRunner().invoke(cli, ["dashboard", "--help"])
    assert result.exit_code == 0
    for option in ("--host", "--port", "--no-browser", "RUN_DIR"):
        assert option in result.output


def test_missing_directory_is_a_one_line_error(cli, tmp_path):
    result = CliRunner().invoke(cli, ["dashboard", str(tmp_path / "nope"), "--no-browser"])
    assert result.exit_code == 2 and "not a directory" in result.output and "Traceback" not in result.output


def test_bad_port_is_refused_before_serving(cli, tmp_path):
    result = CliRunner().invoke(cli, ["dashboard", str(tmp_path), "--port", "70000", "--no-browser"])
    assert result.exit_code == 2 and "--port" in result.output


def test_serves_on_loopback_by_default(cli, tmp_path, monkeypatch):
    calls = {}

    def fake_run(self, host, port, debug):
        calls.update(host=host, port=port, debug=debug)

    monkeypatch.setattr("dash.Dash.run", fake_run)
    warmed = threading.Event()
    monkeypatch.setattr("attnlab.dashboard.app.warm_up", warmed.set)  # serve() imports it from there
    result = CliRunner().invoke(cli, ["dashboard", str(tmp_path), "--port", "8123", "--no-browser"])
    assert result.exit_code == 0, result.output
    assert calls == {"host": "127.0.0.1", "port": 8123, "debug": False}
    assert "warning" not in result.output
    assert warmed.wait(5), "the warm-up thread never started"


def test_other_hosts_are_served_with_a_warning(cli, tmp_path, monkeypatch):
    monkeypatch.setattr("dash.Dash.run", lambda self, host, port, debug: None)
    result = CliRunner().invoke(cli, ["dashboard", str(tmp_path), "--host", "0.0.0.0", "--no-browser"])
    assert result.exit_code == 0 and "warning: serving on 0.0.0.0" in result.output


@pytest.mark.parametrize("host, loopback", [("127.0.0.1", True), ("localhost", True), ("::1", True),
                                            ("127.0.0.2", True), ("0.0.0.0", False), ("192.168.1.4", False),
                                            ("example.org", False)])
def test_is_loopback(host, loopback):
    assert dashboard_cmd.is_loopback(host) is loopback


def test_no_directory_serves_the_demo(cli, tmp_path, monkeypatch):
    built = {}

    def fake_build(progress=True):
        built["progress"] = progress
        return tmp_path

    monkeypatch.setattr("attnlab.recipes.demo.build_demo_run", fake_build)
    monkeypatch.setattr("dash.Dash.run", lambda self, host, port, debug: None)
    result = CliRunner().invoke(cli, ["dashboard", "--no-browser"])
    assert result.exit_code == 0 and built == {"progress": True} and str(tmp_path) in result.output
