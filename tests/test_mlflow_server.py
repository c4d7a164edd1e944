"""The real MLflow tracking server: a tiny study logged to it over HTTP, read back through the REST
API, the report built from it, and its UI rendered in headless Chromium: the experiment's page links a chart
per metric with a curve per method.

The UI screenshot is kept in `test-artifacts/` at the repository root, or in $TEST_ARTIFACTS.
"""

from __future__ import annotations

import html
import os
import re
import shutil
import subprocess
import sys
import urllib.request
from pathlib import Path
from urllib.parse import urlencode

import pandas as pd
import pytest

from flows.study import study_flow
from flows.report import main as report
from tasks.infra.servers import check_mlflow_server
from tasks.infra.tracking import chart_links
from tasks.studies import spec

from conftest import ROOT, api_json, colour, figure_pixels, free_port, subprocess_env, wait_for, write_params

TINY = {"n_samples": 8, "generations": 4, "seeds": 5}
ARTIFACTS = Path(os.environ.get("TEST_ARTIFACTS") or ROOT / "test-artifacts")
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory) -> str:
    """`mlflow server` on a free port with a SQLite store in a temp dir; its URL once /health answers."""
    folder, port = tmp_path_factory.mktemp("mlflow-server"), free_port()
    cmd = [str(Path(sys.executable).parent / "mlflow"), "server", "--backend-store-uri",
           f"sqlite:///{folder / 'mlflow.db'}", "--default-artifact-root", str(folder / "artifacts"),
           "--host", "127.0.0.1", "--port", str(port), "--workers", "1"]
    with open(folder / "server.log", "wb") as log:
        server = subprocess.Popen(cmd, env=subprocess_env(), stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"

    def healthy() -> bool:
        assert server.poll() is None, (folder / "server.log").read_text()[-3000:]
        with urllib.request.urlopen(f"{url}/health", timeout=5) as response:
            return response.read() == b"OK"

    try:
        wait_for(healthy, 120, "the MLflow server")
        yield url
    finally:
        server.terminate()
        server.wait(timeout=30)


@pytest.fixture(scope="module")
def served_study(mlflow_server, prefect_api, tmp_path_factory) -> Path:
    """The tiny Gaussian study, run in this process with MLFLOW_TRACKING_URI naming the server."""
    root = tmp_path_factory.mktemp("served-study")
    with pytest.MonkeyPatch.context() as env:
        env.setenv("MLFLOW_TRACKING_URI", mlflow_server)
        study_flow(study="gaussian", params_file=str(write_params(root, gaussian=TINY)), root=str(root))
    return root


def _rest(server: str, endpoint: str, body: dict | None = None, **query: str) -> dict:
    return api_json(f"{server}/api/2.0/mlflow/{endpoint}" + (f"?{urlencode(query)}" if query else ""), body)


def _experiment_id(server: str) -> str:
    return _rest(server, "experiments/get-by-name", experiment_name="gaussian")["experiment"]["experiment_id"]


def _runs(server: str) -> dict[str, dict[str, str]]:
    """Run id -> tags of every run of the gaussian experiment (POST runs/search)."""
    found = _rest(server, "runs/search", {"experiment_ids": [_experiment_id(server)], "max_results": 1000})
    return {r["info"]["run_id"]: {t["key"]: t["value"] for t in r["data"]["tags"]} for r in found["runs"]}


def _history(server: str, run_id: str, metric: str) -> dict[int, float]:
    """Step -> value of one metric of one run (GET metrics/get-history)."""
    found = _rest(server, "metrics/get-history", run_id=run_id, metric_key=metric).get("metrics", [])
    return {int(m["step"]): m["value"] for m in found}


def _seeds_csv(server: str, run_id: str) -> pd.DataFrame:
    """A method run's seeds.csv, downloaded through the server's artifact proxy."""
    with urllib.request.urlopen(f"{server}/get-artifact?{urlencode({'path': 'seeds.csv', 'run_uuid': run_id})}",
                                timeout=30) as response:
        return pd.read_csv(response)


def test_runs_read_over_rest_match_the_study_tables(mlflow_server, served_study):
    tags = _runs(mlflow_server)
    by_level = {level: {i: t for i, t in tags.items() if t["level"] == level} for level in ("study", "method")}
    (parent,) = by_level["study"]
    methods = {t["method"]: i for i, t in by_level["method"].items()}
    assert set(methods) == {"mle", "ple"} and len(tags) == 1 + 2 and "mlflow.parentRunId" not in tags[parent]
    assert all(tags[i]["mlflow.parentRunId"] == parent for i in methods.values())
    shared = {"experiment": "gaussian", "loop_mode": "replace", "point_keys": "", "device": "cpu"}
    assert all(shared.items() <= t.items() for t in tags.values())
    assert all(t["point"] == "" and t["distribution"] == "normal" for i, t in tags.items() if i != parent)

    tidy = pd.read_csv(served_study / "metrics/gaussian/per_generation.csv")
    for method, run_id in methods.items():
        pd.testing.assert_frame_equal(_seeds_csv(mlflow_server, run_id),
                                      tidy[tidy.method == method].reset_index(drop=True))
    curves = pd.read_csv(served_study / "metrics/gaussian/curves.csv")
    for method, rows in curves.groupby("method"):
        for column in curves.columns.drop(["method", "generation"]):
            assert _history(mlflow_server, methods[method], column) == dict(zip(rows.generation, rows[column]))


def _table_cells(markdown: str) -> dict[tuple[str, int, str], tuple[float, float]]:
    """(metric, generation, method) -> (mean, se) from the report's Markdown tables."""
    cells, metric, methods = {}, None, []
    for line in markdown.splitlines():
        if line.startswith("## "):
            metric = line[3:]
        elif line.startswith("| generation"):
            methods = [c.strip() for c in line.strip("|").split("|")][1:]
        elif line.startswith("| ") and metric:
            generation, *values = [c.strip() for c in line.strip("|").split("|")]
            for method, value in zip(methods, values):
                mean, se = value.split(" ± ")
                cells[(metric, int(generation), method)] = (float(mean), float(se))
    return cells


def test_report_from_the_server_has_the_numbers_of_the_curves(mlflow_server, served_study, tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server)
    monkeypatch.chdir(tmp_path)
    assert report(["gaussian", "--out", "reports"]) == 0
    cells = _table_cells((tmp_path / "reports/gaussian/table.md").read_text())
    curves = pd.read_csv(served_study / "metrics/gaussian/curves.csv").set_index(["method", "generation"])
    assert len(cells) == 2 * 4 * 2  # sigma_hat and sigma2_hat x generations x methods
    for (metric, generation, method), (mean, se) in cells.items():
        row = curves.loc[(method, generation)]
        assert mean == pytest.approx(row[f"{metric}_mean"], rel=1e-3)  # printed to 4 significant digits
        assert se == pytest.approx(row[f"{metric}_se"], rel=1e-3)
    figure = figure_pixels(tmp_path / "reports/gaussian/comparison.png", (5.2 * 2, 3.8))  # sigma_hat, sigma2_hat
    assert colour(figure) > 0.005  # mean lines and SE bands drawn


def test_report_bad_input_is_one_line_and_writes_nothing(mlflow_server, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    cases = [("gausian", mlflow_server, "unknown study 'gausian'"),
             ("grid", mlflow_server, "no finished run of study 'grid'"),
             ("gaussian", f"http://127.0.0.1:{free_port()}", "is unreachable"),
             ("gaussian", None, "no MLflow store at")]
    for study, uri, message in cases:
        if uri:
            monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
        else:
            monkeypatch.delenv("MLFLOW_TRACKING_URI")
        assert report([study]) == 2
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1, err
    assert not (tmp_path / "reports").exists() and not (tmp_path / ".mlflow").exists()


def _chromium(url: str, profile: Path, *args: str) -> str:
    """Headless Chromium on `url` with a fresh profile, run until the page settles (60 s of virtual time: the
    charts draw once their metric histories are in); its stdout."""
    cmd = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
           "--disable-background-networking", "--disable-component-update", "--disable-sync",
           f"--user-data-dir={profile}", "--virtual-time-budget=60000", *args, url]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=180)
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


def _text(dom: str) -> str:
    return " ".join(re.sub(r"<script.*?</script>|<style.*?</style>|<[^>]+>", " ", dom, flags=re.S).split())


def test_mlflow_ui_shows_the_main_metrics_with_a_curve_per_method(mlflow_server, served_study, tmp_path):
    """The experiment's page (where a click on the experiment leads) links, in its description, the chart view
    of the latest execution, whose address `make ui` prints: opened in a fresh browser, the method runs side by
    side, a curve per method in each metric's chart."""
    if CHROMIUM is None:
        pytest.skip("chromium not installed: apt-get install chromium")
    tags = _runs(mlflow_server)
    parent = next(t["mlflow.runName"] for t in tags.values() if t["level"] == "study")
    page = _chromium(f"{mlflow_server}/#/experiments/{_experiment_id(mlflow_server)}", tmp_path / "page", "--dump-dom")
    link = re.search(r'href="(#/experiments/[^"]+)"[^>]*>Metrics against generation, one curve per method</a>', page)
    assert link and f"of the execution {parent}" in _text(page), _text(page)[:3000]
    url = f"{mlflow_server}/{html.unescape(link.group(1))}"
    assert url == f"{mlflow_server}/{chart_links(mlflow_server)['gaussian']}"  # the address `make ui` prints
    text = _text(_chromium(url, tmp_path / "charts", "--dump-dom", "--window-size=1400,2400"))  # every chart in view
    assert "2 matching runs" in text, text[:3000]  # the method runs, not the parent
    for metric in spec("gaussian").report_metrics:
        for method in ("mle", "ple"):
            assert f"{method} ({metric}_mean)" in text, (method, metric, text[:3000])  # a legend entry
    screenshot = ARTIFACTS / "mlflow_ui_gaussian.png"
    screenshot.unlink(missing_ok=True)
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    _chromium(url, tmp_path / "screenshot", f"--screenshot={screenshot}", "--window-size=1400,1900")
    assert screenshot.stat().st_size > 20_000


def test_the_server_check_passes_on_a_real_server(mlflow_server, monkeypatch):
    """The REST call of the pre-run check (tasks/infra/servers.py) is one a real tracking server answers."""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server)
    check_mlflow_server()
