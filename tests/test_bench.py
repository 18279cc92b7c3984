"""Tests for bench.py's commands that produce files (never their timings or accuracies)."""
import json
import math

import pytest
import torch

import bench


def test_generate_quick_writes_every_measure(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the tiny models it trains on the spot go to out/bench/ here
    bench.main(["generate", "--quick", "--json", "bench.json"])
    report = json.loads((tmp_path / "bench.json").read_text())
    assert [m["router"] for m in report["models"]] == ["early", "online"]
    for m in report["models"]:
        n_prelude = torch.load(tmp_path / "out" / "bench" / f"quick-{m['router']}" / "ckpt.pt",
                               weights_only=False)["model_config"]["n_prelude"]
        assert 1 <= m["decode_mean_depth"] <= m["max_depth"]
        assert m["fixed_depth"] == math.ceil(m["decode_mean_depth"])
        assert [row["batch"] for row in m["rows"]] == [1, 4]
        for row in m["rows"]:
            tps, seconds = row["tokens_per_s"], row["seconds"]
            assert set(tps) == set(seconds) == {"routed", "full", "fixed", "depth1"}
            assert all(v > 0 for v in tps.values())
            assert 0 < row["ideal"] <= 1
            # the share of blocks run while decoding: the prelude's and the mean depth's
            assert row["ideal"] == pytest.approx((n_prelude + m["decode_mean_depth"]) / (n_prelude + m["max_depth"]),
                                                 rel=1e-5)
            # --quick times one round, so every median is that round's time and the
            # reported ratios are those of the reported times
            assert row["rounds"] == 1
            made = {v: tps[v] * seconds[v]["total"] for v in tps}  # the same tokens by every variant
            n_new = made["routed"] / report["prompts"]
            assert n_new == pytest.approx(round(n_new)) and round(n_new) >= 2
            assert all(t == pytest.approx(made["routed"]) for t in made.values())
            for s in seconds.values():
                assert s["decode"] == pytest.approx(s["total"] - s["prompt"])
            assert row["end_to_end_ratio"] == pytest.approx(tps["full"] / tps["routed"])
            assert row["decode_ratio"] == pytest.approx(seconds["routed"]["decode"] / seconds["full"]["decode"])
            assert row["prompt_share"] == pytest.approx(seconds["full"]["prompt"] / seconds["full"]["total"])
            if row["skip_efficiency"] is not None:
                assert row["skip_efficiency"] == pytest.approx((1 - row["decode_ratio"]) / (1 - row["ideal"]))
            if row["iteration_seconds"] is not None:  # per decoding step and extra iteration
                steps = report["prompts"] // row["batch"] * (round(n_new) - 1)
                extra = seconds["fixed"]["decode"] - seconds["depth1"]["decode"]
                assert row["iteration_seconds"] == pytest.approx(extra / steps / (m["fixed_depth"] - 1))
            # decoding time = whole generation - prompt alone: with --quick's one round on
            # a busy machine that difference is noise and may even be negative (and the
            # prompt's share of the time above 1: measured 2.35 beside two training runs)
            assert row["prompt_share"] > 0
            assert math.isfinite(row["decode_ratio"]) and row["end_to_end_ratio"] > 0
            assert (row["skip_efficiency"] is None) == (row["ideal"] == 1)
            assert (row["iteration_seconds"] is None) == (m["fixed_depth"] == 1)


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


def test_speed_times_every_router_in_every_dtype_beside_the_matmul_rate(capsys):
    bench.main(["speed", "--rounds", "1", "--batch-size", "2", "--max-depth", "2"])
    lines = capsys.readouterr().out.splitlines()
    rows = [line.split() for line in lines[2:10]]
    assert [(r[0], r[1]) for r in rows] == [(name, dtype) for dtype in ("float32", "bfloat16")
                                            for name in ("none", "early", "online", "unshared")]
    for r in rows:
        ms, tokens_per_s = float(r[2]), float(r[3])
        assert ms > 0 and tokens_per_s > 0
    assert rows[0][4] == rows[4][4] == "1.00"  # each dtype's none against itself
    assert lines[10].startswith("a 1024^3 matmul: float32 ") and "bfloat16" in lines[10]
    assert lines[11].startswith("the online step (float32): ") and "of the matmul's" in lines[11]


def test_profile_splits_a_step_into_parts_that_add_up(capsys):
    """With one timed step every median is that step's own time: the parts
    (data, forward by module and the rest, loss, backward, optimizer) must
    add up to the whole step."""
    bench.main(["profile", "--rounds", "1", "--d-model", "32", "--batch-size", "4", "--max-depth", "2",
                "--eval-num", "4"])
    lines = capsys.readouterr().out.splitlines()
    step_ms = float(lines[0].split(" ms, ")[0].rsplit(" ", 1)[1])
    parts = {line[:18].strip(): float(line[18:].split()[0]) for line in lines[2:11]}
    assert list(parts) == ["data", "prelude", "block", "head", "router", "forward, the rest", "loss", "backward",
                           "optimizer"]
    assert all(ms >= 0 for ms in parts.values()) and parts["block"] > 0 and parts["backward"] > 0
    assert sum(parts.values()) == pytest.approx(step_ms, abs=0.05 * len(parts) + 0.5)  # each printed to 0.1 ms
    assert "matmul FLOPs of a step" in lines[11] and "held-out evaluation" in lines[12]
