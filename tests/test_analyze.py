"""Tests for analyze.py on synthetic per-token CSVs with known structure."""
import csv
import importlib.util
import json
import math
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
import analyze  # noqa: E402

META = ["task", "router", "sample", "n", "pos", "target", "pred", "correct", "depth"]
DFS = ["n_nodes", "n_edges", "step", "remaining", "degree", "max_degree", "is_hub",
       "stack_depth", "backtrack", "frontier", "newly_enabled"]


def z(x):
    return (x - x.mean()) / x.std()


def dfs_features(rng, samples=500, per_sample=8):
    """Independent random features; n (and n_nodes) is constant within a sample."""
    N = samples * per_sample
    n = np.repeat(rng.integers(4, 10, samples), per_sample)
    f = {name: rng.integers(0, 6, N) for name in DFS}
    f["n_nodes"] = n
    f["n_edges"] = n + rng.integers(0, 5, N)
    f["is_hub"] = rng.integers(0, 2, N)
    return f, n


def write_csv(path, feats, depth, n, task="dfs", router="early", correct=None, per_sample=8):
    N = len(depth)
    correct = np.ones(N, int) if correct is None else correct
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(META + list(feats))
        for i in range(N):
            w.writerow([task, router, i // per_sample, n[i], i % per_sample, "a", "a", correct[i], depth[i]]
                       + [feats[k][i] for k in feats])
    return path


def run(path):
    return analyze.analyze(analyze.load_csv(str(path)))


def cli(*args, cwd=None):
    return subprocess.run([sys.executable, str(ROOT / "analyze.py"), *map(str, args)],
                          capture_output=True, text=True, cwd=cwd)


def test_recovers_standardized_coefficients_and_r2(tmp_path):
    rng = np.random.default_rng(0)
    f, n = dfs_features(rng)
    depth = 2 + 0.8 * z(f["backtrack"]) + 0.3 * z(f["frontier"]) + 0.05 * rng.standard_normal(len(n))
    r = run(write_csv(tmp_path / "t.csv", f, depth, n))
    assert r["coef"]["backtrack"] == pytest.approx(0.8, abs=0.02)
    assert r["coef"]["frontier"] == pytest.approx(0.3, abs=0.02)
    assert all(abs(r["coef"][k]) < 0.02 for k in DFS if k not in ("backtrack", "frontier"))
    assert r["intercept"] == pytest.approx(2, abs=0.01)
    assert r["r2_full"] == pytest.approx(0.73 / (0.73 + 0.05 ** 2), abs=0.005)
    # shares of explained variance sum to 100% both ways; backtrack dominates
    for key in ("importance", "importance_drop_one"):
        assert sum(r[key].values()) == pytest.approx(100)
        assert max(r[key], key=r[key].get) == "backtrack"
    assert r["importance_method"].startswith("exact")
    assert r["spearman"]["backtrack"] > 0.8 and abs(r["pearson"]["step"]) < 0.1


def test_lmg_shares_equal_squared_coefficients_for_independent_features(tmp_path):
    rng = np.random.default_rng(1)
    f, n = dfs_features(rng)
    c = {"backtrack": 0.8, "frontier": 0.5, "degree": 0.3}
    depth = 3 + sum(v * z(f[k]) for k, v in c.items()) + 0.1 * rng.standard_normal(len(n))
    r = run(write_csv(tmp_path / "t.csv", f, depth, n))
    total = sum(v ** 2 for v in c.values())
    for k, v in c.items():
        assert r["importance"][k] == pytest.approx(100 * v ** 2 / total, abs=2)
    # with independent features the unique (drop-one) parts are the same split
    for k, v in c.items():
        assert r["importance_drop_one"][k] == pytest.approx(100 * v ** 2 / total, abs=2)


def test_collinear_pair_splits_lmg_credit_and_drop_one_is_undefined(tmp_path):
    rng = np.random.default_rng(2)
    f, n = dfs_features(rng)
    f = {"stack_depth": f["backtrack"], "backtrack": f["backtrack"]}  # identical columns
    depth = 1 + z(f["backtrack"]) + 0.1 * rng.standard_normal(len(n))
    r = run(write_csv(tmp_path / "t.csv", f, depth, n))
    assert r["importance"]["backtrack"] == pytest.approx(50, abs=1e-6)
    assert r["importance"]["stack_depth"] == pytest.approx(50, abs=1e-6)
    assert all(v is None or math.isnan(v) for v in r["importance_drop_one"].values())
    assert any("drop-one" in note for note in r["notes"])


def test_more_than_twelve_features_uses_sampled_orderings(tmp_path):
    rng = np.random.default_rng(3)
    f, n = dfs_features(rng, samples=300)
    f["extra1"], f["extra2"] = rng.standard_normal(len(n)), rng.standard_normal(len(n))
    depth = 2 + 0.6 * z(f["extra1"]) + 0.6 * z(f["backtrack"]) + 0.05 * rng.standard_normal(len(n))
    r = run(write_csv(tmp_path / "t.csv", f, depth, n))
    assert "sampled" in r["importance_method"]
    assert sum(r["importance"].values()) == pytest.approx(100)
    assert r["importance"]["extra1"] == pytest.approx(50, abs=3)
    assert r["importance"]["backtrack"] == pytest.approx(50, abs=3)


def test_categorical_size_catches_a_nonlinear_size_effect_only(tmp_path):
    rng = np.random.default_rng(4)
    f, n = dfs_features(rng)
    lookup = {4: 1.0, 5: 5.0, 6: 2.0, 7: 6.0, 8: 1.5, 9: 4.0}  # not linear in n
    noise = 0.2 * rng.standard_normal(len(n))
    r = run(write_csv(tmp_path / "nl.csv", f, np.array([lookup[v] for v in n]) + noise, n))
    assert r["r2_categorical_n"] > 0.9
    assert r["r2_categorical_gain"] > 0.3
    assert r["r2_categorical_gain"] == pytest.approx(r["r2_categorical_n"] - r["r2_full"])
    means = {x["value"]: x["mean_depth"] for x in r["depth_by_n"]}
    assert all(means[k] == pytest.approx(v, abs=0.1) for k, v in lookup.items())
    r = run(write_csv(tmp_path / "lin.csv", f, 0.5 * n + noise, n))
    assert r["r2_full"] > 0.9 and abs(r["r2_categorical_gain"]) < 0.01


def test_static_versus_dynamic_split(tmp_path):
    rng = np.random.default_rng(5)
    f, n = dfs_features(rng)
    noise = 0.1 * rng.standard_normal(len(n))
    r = run(write_csv(tmp_path / "s.csv", f, 3 + z(f["degree"]) + z(f["is_hub"]) + noise, n))
    assert r["r2_static"] > 0.95 and r["r2_dynamic"] < 0.02
    r = run(write_csv(tmp_path / "d.csv", f, 3 + z(f["stack_depth"]) + z(f["newly_enabled"]) + noise, n))
    assert r["r2_dynamic"] > 0.95 and r["r2_static"] < 0.02
    assert set(r["static_features"]) == {"n_nodes", "n_edges", "degree", "max_degree", "is_hub"}


def test_dynamic_features_that_determine_the_size_are_flagged(tmp_path):
    rng = np.random.default_rng(10)
    f, n = dfs_features(rng)
    f["step"] = rng.integers(0, 4, len(n))
    f["remaining"] = f["n_nodes"] - f["step"]  # as in tasks.py: the pair encodes the size
    r = run(write_csv(tmp_path / "t.csv", f, 2 + z(f["n_nodes"]), n))
    # the paper's partition: step and remaining are position, not dynamic
    assert r["r2_static"] == pytest.approx(1) and r["r2_position"] == pytest.approx(1)
    assert r["r2_dynamic"] < 0.05
    assert any("position features determine n_nodes" in note for note in r["notes"])
    assert any("linear combinations" in note for note in r["notes"])
    assert sum(r["importance"].values()) == pytest.approx(100)


def test_lang_task_uses_its_own_split_and_alignment_feature(tmp_path):
    rng = np.random.default_rng(6)
    N = 2000
    n = np.repeat(rng.integers(3, 7, N // 8), 8)
    kind = rng.integers(0, 3, N)
    hops = np.where(kind == 2, rng.integers(1, 5, N), 0)
    f = {"kind": kind, "hops": hops, "distance": hops * 3 + rng.integers(0, 4, N), "n_vars": n,
         "distractors": rng.integers(0, 4, N), "step": rng.integers(0, 20, N)}
    r = run(write_csv(tmp_path / "l.csv", f, 1 + hops, n, task="lang", router="online"))
    assert r["alignment_feature"] == "hops"
    assert [x["mean_depth"] for x in r["depth_by_feature"]["hops"]] == [1, 2, 3, 4, 5]
    assert r["r2_dynamic"] == pytest.approx(1) and r["r2_static"] < 0.02
    assert r["size_feature"] == "n_vars"


def test_spearman_with_ties_matches_hand_computation(tmp_path):
    assert analyze.rankdata(np.array([10, 20, 20, 30, 20.0])).tolist() == [1, 3, 3, 5, 3]
    # x ranks 1, 2.5, 2.5, 4 and y ranks 1, 3, 2, 4: rho = 4.5 / sqrt(4.5 * 5)
    rho = analyze.corr(analyze.rankdata(np.array([1, 2, 2, 3.0])), analyze.rankdata(np.array([1, 3, 2, 4.0])))
    assert rho == pytest.approx(4.5 / math.sqrt(22.5))

    def reference(x, y):  # independent: rank = values below + average position among equals
        rx = np.array([(x < v).sum() + ((x == v).sum() + 1) / 2 for v in x])
        ry = np.array([(y < v).sum() + ((y == v).sum() + 1) / 2 for v in y])
        return np.corrcoef(rx, ry)[0, 1]

    rng = np.random.default_rng(7)
    f, n = dfs_features(rng, samples=40)
    depth = rng.integers(1, 5, len(n)) + (f["backtrack"] > 2)
    r = run(write_csv(tmp_path / "t.csv", f, depth, n))
    for k in ("backtrack", "degree", "n_nodes"):
        assert r["spearman"][k] == pytest.approx(reference(f[k], depth))
        assert r["pearson"][k] == pytest.approx(np.corrcoef(f[k], depth)[0, 1])


def test_constant_depth_and_constant_feature_give_nan_not_errors(tmp_path):
    rng = np.random.default_rng(8)
    f, n = dfs_features(rng, samples=30)
    f["max_degree"] = np.full(len(n), 5)
    path = write_csv(tmp_path / "t.csv", f, np.full(len(n), 3), n)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        r = run(path)
    assert math.isnan(r["r2_full"]) and math.isnan(r["r2_static"]) and math.isnan(r["r2_categorical_n"])
    assert all(math.isnan(v) for v in r["importance"].values())
    assert all(math.isnan(v) for v in r["spearman"].values())
    assert r["depth_hist"] == {"3": len(n)} and r["std_depth"] == 0
    assert r["dropped"] == ["max_degree"]
    out = tmp_path / "s.json"
    p = cli(path, "--json", out)
    assert p.returncode == 0, p.stderr
    d = json.loads(out.read_text())["files"][str(path)]
    assert d["r2_full"] is None and d["coef"]["max_degree"] is None and d["spearman"]["backtrack"] is None
    assert "n/a" in p.stdout


def test_cli_two_csvs_json_report_and_plots(tmp_path):
    rng = np.random.default_rng(9)
    f, n = dfs_features(rng, samples=100)
    (tmp_path / "early").mkdir()
    (tmp_path / "online").mkdir()
    a = write_csv(tmp_path / "early" / "tokens.csv", f, 2 + z(f["n_nodes"]) + 0.1 * z(f["step"]), n)
    b = write_csv(tmp_path / "online" / "tokens.csv", f, 2 + z(f["backtrack"]) + 0.1 * z(f["step"]), n,
                  router="online", correct=(f["backtrack"] < 3).astype(int))
    (tmp_path / "early" / "summary.json").write_text(json.dumps({
        "task": "dfs", "router": "early", "train_sizes": [4, 6],
        "sizes": [{"n": k, "ood": k > 6, "token_acc": 0.9, "exact_match": 0.5, "mean_depth": 2.0, "num": 10}
                  for k in range(4, 10)]}))
    p = cli(a, b, "--json", tmp_path / "all.json", "--plots")
    assert p.returncode == 0, p.stderr
    files = json.loads((tmp_path / "all.json").read_text())["files"]
    keys = {"task", "router", "rows", "r2_full", "r2_static", "r2_dynamic", "r2_categorical_n", "coef",
            "importance", "importance_drop_one", "spearman", "pearson", "depth_hist", "mean_depth",
            "std_depth", "by_size"}
    assert set(files) == {str(a), str(b)}
    assert all(keys <= set(d) for d in files.values())
    early, online = files[str(a)], files[str(b)]
    assert early["by_size_source"] == "summary.json" and [s["ood"] for s in early["by_size"]][-1] is True
    assert online["by_size_source"] == "csv" and not any(s["ood"] for s in online["by_size"])
    assert online["by_size"][0]["token_acc"] == pytest.approx(np.mean(f["backtrack"][n == 4] < 3))
    assert early["r2_static"] > 0.9 > online["r2_static"]
    report = (tmp_path / "early" / "report.md").read_text()  # beside the first CSV
    assert "## Side by side" in report and "early early/tokens" in report and "online online/tokens" in report
    assert "| --- |" in p.stdout
    if importlib.util.find_spec("matplotlib"):
        assert (tmp_path / "early" / "size.png").exists() and "size.png" in report
        assert not (tmp_path / "early" / "hops.png").exists()  # dfs has no chains
    else:
        assert "Plots skipped" in p.stdout and "Plots skipped" in report


def test_lang_hops_figure_and_the_hops_trained_on(tmp_path):
    """lang: references by hops (thinking longer) drawn, the trained hops from summary.json."""
    rng = np.random.default_rng(4)
    N = 800
    hops = rng.integers(0, 9, N)
    f = {"kind": np.where(hops > 0, 2, 0), "hops": hops, "distance": rng.integers(1, 30, N),
         "n_vars": np.full(N, 10), "distractors": np.full(N, 5), "step": rng.integers(0, 17, N)}
    path = write_csv(tmp_path / "tokens.csv", f, np.maximum(hops, 1), f["n_vars"], task="lang", router="online",
                     correct=(hops <= 5).astype(int))
    (tmp_path / "summary.json").write_text(json.dumps({
        "task": "lang", "router": "online", "train_sizes": [4, 8], "trained_task_params": {"hops": 4},
        "sizes": [{"n": 10, "ood": True, "token_acc": 0.9, "exact_match": 0.5, "mean_depth": 2.0, "num": 100}]}))
    p = cli(path, "--json", tmp_path / "all.json", "--plots")
    assert p.returncode == 0, p.stderr
    d = json.loads((tmp_path / "all.json").read_text())["files"][str(path)]
    assert d["train_hops"] == 4
    by_hops = {x["value"]: x for x in d["depth_by_feature"]["hops"]}
    assert by_hops[5]["token_acc"] == 1 and by_hops[6]["token_acc"] == 0 and by_hops[7]["mean_depth"] == 7
    if importlib.util.find_spec("matplotlib"):
        assert (tmp_path / "hops.png").exists() and "hops.png" in (tmp_path / "report.md").read_text()


@pytest.mark.parametrize("case", ["missing", "no_depth", "few_rows", "not_numeric"])
def test_bad_input_exits_2_with_one_error_line(tmp_path, case):
    path = tmp_path / "t.csv"
    header = META + ["backtrack", "frontier"]
    rows = [["dfs", "early", 0, 4, i, "a", "a", 1, 1 + i % 2, i % 3, i] for i in range(10)]
    if case == "no_depth":
        header, rows = [h for h in header if h != "depth"], [r[:8] + r[9:] for r in rows]
    if case == "few_rows":
        rows = rows[:3]
    if case == "not_numeric":
        rows[4][-1] = "many"
    if case != "missing":
        with open(path, "w", newline="") as fh:
            csv.writer(fh).writerows([header] + rows)
    p = cli(path, "--out", tmp_path / "r.md")
    assert p.returncode == 2
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and "Traceback" not in p.stderr


def test_sizes_option_restricts_the_analysis_to_a_size_range(tmp_path):
    # depth follows backtrack only for n <= 6; beyond it depth is noise
    rng = np.random.default_rng(5)
    f, n = dfs_features(rng)
    depth = np.where(n <= 6, 1 + f["backtrack"], rng.integers(1, 7, len(n)))
    path = write_csv(tmp_path / "t.csv", f, depth, n)
    everything = analyze.analyze(analyze.load_csv(str(path)))
    small = analyze.analyze(analyze.restrict(analyze.load_csv(str(path)), (4, 6)))
    assert small["rows"] == int((n <= 6).sum()) < everything["rows"]
    assert small["r2_full"] > 0.99 > everything["r2_full"]
    r = cli(path, "--sizes", "30-40", "--out", tmp_path / "r.md")
    assert r.returncode == 2 and r.stderr.startswith("error:") and "Traceback" not in r.stderr


def test_depth_run_against_depth_needed(tmp_path):
    # per token: (depth run, depth needed or blank, correct at its depth), repeated to fill a regression
    tokens = [(1, "1", 1),   # stopped where it became right for good
              (4, "2", 1),   # ran 2 iterations past what it needed
              (1, "3", 1),   # right at depth 1, wrong again at 2, right from 3 on
              (2, "", 1),    # right at its depth, wrong at max_depth
              (1, "3", 0),   # halted too early: wrong, right from depth 3 on
              (2, "", 0)]    # wrong at max_depth too
    rng = np.random.default_rng(0)
    path = tmp_path / "tokens.csv"
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(META[:-1] + ["depth_needed", "depth", "backtrack", "frontier"])
        for i in range(60):
            depth, needed, ok = tokens[i % 6]
            w.writerow(["dfs", "online", i // 6, 5, i % 6, "a", "a" if ok else "b", ok, needed, depth,
                        *rng.integers(0, 4, 2)])
    r = run(path)
    v = r["depth_vs_needed"]
    assert v["outcomes"] == pytest.approx({"stopped_at_needed": 1 / 6, "ran_past_needed": 1 / 6,
                                           "right_not_for_good": 2 / 6, "halted_too_early": 1 / 6,
                                           "wrong_deeper_too": 1 / 6})
    assert v["extra_iterations"] == pytest.approx(2 / 4)  # over the four tokens with a depth needed
    assert [(x["value"], x["tokens"], x["mean_depth"]) for x in v["by_needed"]] == \
        [(1, 10, 1.0), (2, 10, 4.0), (3, 20, 1.0), ("none (wrong at max depth)", 20, 2.0)]
    assert r["features"] == ["backtrack", "frontier"]  # depth_needed is not a feature
    # the alignment table gains the mean depth needed and the share halted too early
    by_backtrack = r["depth_by_feature"]["backtrack"]
    assert sum(x["tokens"] * x["halted_too_early"] for x in by_backtrack) == pytest.approx(10)
    assert all(1 <= x["mean_needed"] <= 3 for x in by_backtrack)
    text = "\n".join(analyze.file_section(str(path), r, "online"))
    assert "| backtrack | tokens | mean depth | token acc | mean depth needed | halted too early |" in text
    assert "halted too early (right from a deeper depth on) 16.7%" in text
    # --sizes keeps the column aligned with the rows; --json writes it
    res = cli(path, "--sizes", "5-5", "--json", tmp_path / "r.json", "--out", tmp_path / "r.md")
    assert res.returncode == 0, res.stderr
    saved = json.loads((tmp_path / "r.json").read_text())["files"][str(path)]["depth_vs_needed"]
    assert saved["outcomes"] == pytest.approx(v["outcomes"])


def test_no_depth_needed_section_without_the_column(tmp_path):
    rng = np.random.default_rng(0)
    f, n = dfs_features(rng, samples=20)
    r = run(write_csv(tmp_path / "t.csv", f, rng.integers(1, 5, len(n)), n))
    assert r["depth_vs_needed"] is None
    assert "depth needed" not in "\n".join(analyze.file_section("t.csv", r, "early"))


def test_rejects_a_non_number_in_depth_needed(tmp_path):
    path = tmp_path / "tokens.csv"
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(META[:-1] + ["depth_needed", "depth", "backtrack"])
        for i in range(10):
            w.writerow(["dfs", "online", i, 5, 0, "a", "a", 1, "deep" if i == 3 else 2, 2, i % 3])
    res = cli(path, "--out", tmp_path / "r.md")
    assert res.returncode != 0 and "depth_needed" in res.stderr and "Traceback" not in res.stderr
