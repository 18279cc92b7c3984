"""Tests for bench.py's commands that produce files (never their timings or accuracies)."""
import json
import math
import os
import subprocess
import sys
import time
from functools import partial

import pytest
import torch

import bench

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def tradeoff(out):
    return subprocess.run([sys.executable, "bench.py", "tradeoff", "--task", "lang", "--chain-order", "reverse",
                           "--hints", "on", "--seed", "3", "--quick", "--ponders", "0.01", "--out", str(out)],
                          cwd=REPO, text=True, capture_output=True, timeout=600)


def test_tradeoff_quick_writes_every_point_and_resumes(tmp_path):
    res = tradeoff(tmp_path)
    assert res.returncode == 0 and "Traceback" not in res.stderr, res.stdout + res.stderr
    result = json.loads((tmp_path / "tradeoff.json").read_text())
    assert result["task"] == "lang" and result["chain_order"] == "reverse" and result["hints"] and result["seed"] == 3
    rows = result["rows"]
    # --quick: fixed depths 1..2, then each adaptive router at the one ponder
    assert [(r["router"], r["max_depth"], r["ponder"]) for r in rows] == \
        [("none", 1, None), ("none", 2, None), ("early", 2, 0.01), ("online", 2, 0.01)]
    for r in rows:
        assert {"router", "max_depth", "ponder", "mean_depth", "exact_match", "exact_match_ood",
                "minutes", "reference_acc", "reference_acc_ood"} <= r.keys()
        assert 1 <= r["mean_depth"] <= r["max_depth"] and 1 <= r["mean_depth_ood"] <= r["max_depth"]
        assert 0 <= r["exact_match"] <= 1 and 0 <= r["exact_match_ood"] <= 1
        if r["router"] == "none":
            assert r["mean_depth"] == r["max_depth"]
        # each point is a train.py run in its own folder, evaluated in and out of distribution
        summary = json.loads((tmp_path / r["run"] / "summary.json").read_text())
        assert summary["ood"]["exact_match"] == r["exact_match_ood"]
        assert [s["n"] for s in summary["sizes"] if s["ood"]] == [9, 10]
        with open(tmp_path / r["run"] / "config.json") as f:
            config = json.load(f)
            assert config["chain_order"] == "reverse" and config["hints"] and config["seed"] == 3
    # the same command again trains nothing: finished runs are kept
    logs = {p: p.read_text() for p in tmp_path.glob("*.train.log")}
    again = tradeoff(tmp_path)
    assert again.returncode == 0, again.stderr
    assert {p: p.read_text() for p in tmp_path.glob("*.train.log")} == logs
    assert json.loads((tmp_path / "tradeoff.json").read_text())["rows"] == rows


def test_generate_quick_writes_every_measure(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the tiny models it trains on the spot go to out/bench/ here
    bench.main(["generate", "--quick", "--json", "bench.json"])
    report = json.loads((tmp_path / "bench.json").read_text())
    assert [m["router"] for m in report["models"]] == ["early", "online"]
    for m in report["models"]:
        assert 1 <= m["decode_mean_depth"] <= m["max_depth"]
        assert m["fixed_depth"] == math.ceil(m["decode_mean_depth"])
        assert [row["batch"] for row in m["rows"]] == [1, 4]
        for row in m["rows"]:
            assert set(row["tokens_per_s"]) == {"routed", "full", "fixed", "depth1"}
            assert all(v > 0 for v in row["tokens_per_s"].values())
            assert 0 < row["ideal"] <= 1
            # decoding time = whole generation - prompt alone: with --quick's one round on
            # a busy machine that difference is noise and may even be negative (and the
            # prompt's share of the time above 1: measured 2.35 beside two training runs)
            assert row["prompt_share"] > 0
            assert math.isfinite(row["decode_ratio"]) and row["end_to_end_ratio"] > 0
            assert (row["skip_efficiency"] is None) == (row["ideal"] == 1)
            assert (row["iteration_seconds"] is None) == (m["fixed_depth"] == 1)


@pytest.mark.parametrize("stop, code", [(KeyboardInterrupt, 130), (SystemExit(1), 1)], ids=["ctrl-c", "failed"])
def test_a_stopped_run_starts_no_other(stop, code):
    """Ctrl-C in a sweep (tradeoff_point raises KeyboardInterrupt when train.py
    saved and stopped) or a failed run (run_logged exits 1) starts none of
    the queued runs: the sweep stops, resumable, with the exit code."""
    started = []

    def stopped():
        time.sleep(0.05)  # the main thread is waiting by then, as in a real sweep
        raise stop

    def run(i):
        started.append(i)
        time.sleep(0.2)
        return i

    try:
        bench.run_in_parallel([stopped] + [partial(run, i) for i in range(3)], 1, str)
        raised = None
    except BaseException as e:  # a KeyboardInterrupt escaping would stop pytest itself
        raised = e
    assert isinstance(raised, SystemExit) and raised.code == code, repr(raised)
    assert started == [], f"runs {started} queued behind the stopped one were started"


def test_remaining_time_counts_only_the_runs_that_worked(monkeypatch, capsys):
    """A resumed sweep skips its finished runs at once: the remaining time is
    estimated from the runs that trained, not read low from the skipped ones
    (a study resumed with 16 of 18 runs done said "~0 min left" of an hour),
    and not guessed before one has run."""
    monkeypatch.setattr(bench, "RESUMED_SECONDS", 0.05)

    def run(seconds):
        time.sleep(seconds)
        return seconds

    bench.run_in_parallel([partial(run, s) for s in (0, 0, 0, 0.2, 0.2, 0.2)], 1, str)
    lines = capsys.readouterr().out.splitlines()
    assert ["left" in line for line in lines] == [False] * 3 + [True] * 3, lines


def test_a_run_stopped_short_is_not_evaluated(tmp_path, monkeypatch):
    """train.py stopped by Ctrl-C saves and exits 0; the sweep must not
    evaluate that half-trained checkpoint as if it were the finished run."""
    scripts = []

    def train_stopped_at_step_5(cmd, log_path, env):
        scripts.append(os.path.basename(cmd[1]))
        (tmp_path / "online-p0.01").mkdir(exist_ok=True)
        (tmp_path / "online-p0.01" / "log.jsonl").write_text(json.dumps({"step": 5}) + "\n")

    monkeypatch.setattr(bench, "run_logged", train_stopped_at_step_5)
    with pytest.raises(KeyboardInterrupt):
        bench.tradeoff_point(("online", 2, 0.01), str(tmp_path), 10, [], [], {})
    assert scripts == ["train.py"]


def test_a_script_stopped_by_ctrl_c_stops_the_sweep_quietly(tmp_path, capsys):
    """A script killed by Ctrl-C before it could save (exit by SIGINT) stops
    the sweep as Ctrl-C does, not as a failed run with an error line."""
    killed_by_ctrl_c = ("import os, signal; signal.signal(signal.SIGINT, signal.default_int_handler); "
                        "os.kill(os.getpid(), signal.SIGINT)")
    with pytest.raises(KeyboardInterrupt):
        bench.run_logged([sys.executable, "-c", killed_by_ctrl_c], str(tmp_path / "log"), dict(os.environ))
    assert "error" not in capsys.readouterr().err


def test_a_small_model_stopped_short_is_trained_on_not_reused(tmp_path, monkeypatch):
    """bench.py generate trains its own small models when given no checkpoint;
    one stopped by Ctrl-C (a checkpoint short of its steps) is trained on
    from where it stopped, not measured half-trained, and a Ctrl-C that
    stops it again stops the command."""
    monkeypatch.chdir(tmp_path)
    path, _, _ = bench.load_or_train("online", quick=True)
    finished = torch.load(path, weights_only=False)
    torch.save({**finished, "step": 20}, path)  # as if Ctrl-C had stopped it at step 20
    bench.load_or_train("online", quick=True)
    assert torch.load(path, weights_only=False)["step"] == finished["step"]
    torch.save({**finished, "step": 20}, path)
    monkeypatch.setattr(bench.train, "main", lambda argv: None)  # Ctrl-C again: nothing more trained
    with pytest.raises(KeyboardInterrupt):
        bench.load_or_train("online", quick=True)
