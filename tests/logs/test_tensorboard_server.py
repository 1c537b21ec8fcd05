"""A real `tensorboard` server on a loopback port, over a sweep and a profile written by
lrresearch: its HTTP API must serve our scalars, histograms, text, hparams, custom
scalars, and one Profile run per controller."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time

import pytest

from lrresearch.studies.sweep import run_sweep
from tests.support import free_port, http_get

pytestmark = [pytest.mark.slow, pytest.mark.subprocess, pytest.mark.server]


@pytest.fixture(scope="module")
def server(tmp_path_factory, profile_run):
    logdir = tmp_path_factory.mktemp("tb")
    small = [
        "Trainer.steps = 30",
        "Trainer.steps_per_loop = 10",
        "Trainer.histogram_every = 10",
        "Trainer.eval_every = 10",
        "mlp.hidden = (8,)",
    ]
    _, points = run_sweep(
        [],
        small,
        ["Trainer.controller=[@GradNormController(), @CyclicalController()]"],
        logdir=str(logdir),
        sweep_name="sweep",
        progress=lambda m: None,
    )
    assert all(p.result for p in points)
    shutil.copytree(profile_run[0], logdir / "profile")  # the session's profile (conftest.py)
    port = free_port()
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tensorboard.main",
            "--logdir",
            str(logdir),
            "--port",
            str(port),
            "--host",
            "127.0.0.1",
            "--reload_interval",
            "1",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 90
        while True:
            try:
                tags = http_get(port, "/data/plugin/scalars/tags")
                if any("lr" in t for t in tags.values()) and len(tags) >= 2:
                    break
            except OSError:
                pass
            if time.monotonic() > deadline or process.poll() is not None:
                pytest.fail("tensorboard did not serve the runs within 90 s")
            time.sleep(0.5)
        yield port, [p.run_name for p in points]
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)


def test_scalars_histograms_and_text_are_served(server):
    port, runs = server
    scalars = http_get(port, "/data/plugin/scalars/tags")
    for run in runs:
        key = f"sweep/{run}"
        assert {
            "lr",
            "loss/batch",
            "loss/ma_short",
            "loss/ma_long",
            "grad/global_norm",
            "eval/accuracy",
        } <= set(scalars[key]), scalars.get(key)
    histograms = http_get(port, "/data/plugin/histograms/tags")
    assert any(t.startswith("grad/") for t in histograms[f"sweep/{runs[0]}"])
    text = http_get(port, "/data/plugin/text/tags")
    assert "config" in text[f"sweep/{runs[0]}"]
    points = http_get(port, f"/data/plugin/scalars/scalars?run=sweep/{runs[0]}&tag=lr")
    assert [p[1] for p in points] == list(range(30))


def test_hparams_lists_every_run_of_the_sweep(server):
    port, runs = server
    experiment = http_get(port, "/data/plugin/hparams/experiment", {"experimentName": ""})
    names = {h["name"] for h in experiment["hparamInfos"]}
    assert {"controller", "seed", "optimizer", "batch_size"} <= names
    metrics = {m["name"]["tag"] for m in experiment["metricInfos"]}
    assert {"eval/accuracy", "eval/loss"} <= metrics
    groups = http_get(
        port,
        "/data/plugin/hparams/session_groups",
        {
            "experimentName": "",
            "allowedStatuses": [
                "STATUS_UNKNOWN",
                "STATUS_SUCCESS",
                "STATUS_FAILURE",
                "STATUS_RUNNING",
            ],
            "colParams": [],
            "startIndex": 0,
            "sliceSize": 100,
        },
    )
    sessions = {s["name"] for g in groups["sessionGroups"] for s in g["sessions"]}
    assert {f"sweep/{run}" for run in runs} <= sessions


def test_custom_scalars_layout_is_served(server):
    port, _ = server
    layout = http_get(port, "/data/plugin/custom_scalars/layout")
    titles = [c["title"] for cat in layout["category"] for c in cat["chart"]]
    assert titles[0] == "LR" and {"Loss moving averages", "Gradient norm"} <= set(titles)


def test_profile_plugin_lists_one_run_per_controller(server):
    port, _ = server
    runs = http_get(port, "/data/plugin/profile/runs")
    controllers = {r.split("/")[1] for r in runs if r.startswith("profile/")}
    assert {"baseline", "ConstantController", "GradNormController"} <= controllers
