"""One bad Run is listed with its reason and skipped; the dashboard answers only to its own host names."""

from __future__ import annotations

import json

import pytest

from attnlab.core.runs import RunInfo, save_run
from attnlab.dashboard.data import DashboardData


def _trace():
    from tests.cli.test_faults import make_trace

    return make_trace()


@pytest.fixture
def served(tmp_path):
    good = save_run(tmp_path / "good", {"main": _trace()}, RunInfo(model={"name": "m", "family": "bert"}))
    for name, change in (("model-string", {"model": "toy-gpt"}), ("plan-string", {"plan": "vhr"}),
                         ("traces-list", {"traces": []}), ("created-string", {"created": "today"})):
        bad = save_run(tmp_path / name, {"main": _trace()}, RunInfo(model={"name": "m"}))
        manifest = json.loads((bad / "manifest.json").read_text())
        manifest.update(change)
        (bad / "manifest.json").write_text(json.dumps(manifest))
    return tmp_path, good


def test_invalid_runs_are_listed_with_a_reason_and_skipped(served):
    root, _ = served
    data = DashboardData([root])
    assert [r.run_id for r in data.runs()] == ["0:good"]
    reasons = {r.run_id: r.error for r in data.all_runs() if r.error}
    assert sorted(reasons) == ["0:created-string", "0:model-string", "0:plan-string", "0:traces-list"]
    assert "model: Input should be a valid dictionary" in reasons["0:model-string"]
    assert all("\n" not in reason for reason in reasons.values())


def test_pages_render_beside_bad_runs_and_foreign_hosts_are_refused(served):
    from attnlab.dashboard.app import create_app

    root, _ = served
    app = create_app([root], host="127.0.0.1")
    client = app.server.test_client()
    for host in ("localhost", "127.0.0.1:8050", "localhost:8050", "[::1]:8050"):
        assert client.get("/", headers={"Host": host}).status_code == 200, host
    layout = client.get("/_dash-layout", headers={"Host": "127.0.0.1:8050"})
    text = json.dumps(layout.get_json())
    assert layout.status_code == 200 and "0:good" in text
    assert "0:model-string" not in text  # the Run selector offers valid Runs only
    for host in ("attacker.example", "attacker.example:8050", "127.0.0.1.attacker.example"):
        assert client.get("/", headers={"Host": host}).status_code == 403, host
        assert client.get("/_dash-layout", headers={"Host": host}).status_code == 403, host
