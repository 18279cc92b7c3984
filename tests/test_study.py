"""Tests for study.py: the whole pipeline in --quick mode (a tiny model, a few
steps), its outputs' structure (never their numbers), resuming, bad input."""
import json
import os
import subprocess
import sys

import pytest

import study

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    out = tmp_path_factory.mktemp("study") / "s"
    res = subprocess.run([sys.executable, "study.py", "--quick", "--seeds", "0,1", "--regimes", "dfs",
                          "--jobs", "2", "--num", "2", "--out", str(out)], cwd=REPO, capture_output=True,
                         text=True, timeout=600, env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert res.returncode == 0, res.stderr
    return out, res


def test_every_run_is_trained_evaluated_and_aggregated(quick):
    out, res = quick
    results = json.loads((out / "results.json").read_text())
    names = {"none-d1", "none-d2", "early-p0.002", "online-p0.002"}  # --quick: max_depth 2
    assert {(r["run"], r["seed"]) for r in results["runs"]} == {(n, s) for n in names for s in (0, 1)}
    for r in results["runs"]:
        run = out / "dfs" / f"s{r['seed']}" / r["run"]
        assert (run / "ckpt.pt").is_file() and (run / "tokens.csv").is_file()
        assert set(r["by_size"]) == {str(n) for n in range(4, 13)}  # in and out of distribution
        for key in ("r2_static", "r2_dynamic", "r2_position", "spearman_feature", "exact_match", "mean_depth"):
            assert key in r
    aggs = {a["run"]: a for a in results["aggregates"]}
    assert set(aggs) == names
    for a in aggs.values():
        assert a["seeds"] == [0, 1]
        seeds = [r["exact_match"] for r in results["runs"] if r["run"] == a["run"]]
        assert a["exact_match"] == {"mean": pytest.approx(sum(seeds) / 2), "min": min(seeds), "max": max(seeds)}
        assert set(a["by_size"]["12"]) >= {"exact_match", "mean_depth"}
    assert "[16/" not in res.stdout and "[8/8]" in res.stdout  # progress, with elapsed and remaining time
    assert "min left" in res.stdout


def test_report_has_a_section_per_finding_beside_the_paper(quick):
    out, _ = quick
    text = (out / "report.md").read_text()
    assert text.count("The paper") >= 3
    assert "Reproduce: `python study.py --quick --seeds 0,1 --regimes dfs --jobs 2 --num 2 --out " in text
    for heading in ("### Accuracy against compute", "### Alignment", "### Decision timing",
                    "### Extrapolation to larger sizes", "### Generation speed"):
        assert heading in text
    assert "**" in text  # a verdict
    # depth per value of the difficulty feature, for each router
    alignment = text.split("### Alignment")[1].split("### Decision timing")[0]
    assert "Mean depth by backtrack" in alignment and "| early-p0.002 | " in alignment
    # each router beside the best fixed depth: its share of that depth's compute
    curve = text.split("### Accuracy against compute")[1].split("### Alignment")[0]
    assert all(f"- {r}-p0.002: exact-match" in curve and "of the best fixed depth's" in curve
               for r in ("early", "online"))
    # where the time goes: every run's training minutes, and their total
    results = json.loads((out / "results.json").read_text())
    total = sum(r["minutes"] for r in results["runs"])
    assert f"{total:.0f} in all" in text.split("## Cost")[1]
    assert all(f"| dfs | {name} |" in text for name in ("none-d1", "none-d2", "early-p0.002", "online-p0.002"))
    speed = json.loads((out / "results.json").read_text())["speed"]["dfs"]
    assert {m["router"] for m in speed["models"]} == {"early", "online"}


def test_finished_runs_are_not_trained_or_evaluated_again(quick):
    out, _ = quick
    ckpt, summary = (out / "dfs" / "s0" / "none-d1" / name for name in ("ckpt.pt", "summary.json"))
    before = ckpt.stat().st_mtime_ns, summary.stat().st_mtime_ns
    study.main(["--quick", "--seeds", "0", "--regimes", "dfs", "--jobs", "1", "--num", "2", "--out", str(out)])
    assert (ckpt.stat().st_mtime_ns, summary.stat().st_mtime_ns) == before
    # other evaluation arguments: evaluated again, never trained again
    study.main(["--quick", "--seeds", "0", "--regimes", "dfs", "--jobs", "1", "--num", "3", "--out", str(out)])
    assert ckpt.stat().st_mtime_ns == before[0] and summary.stat().st_mtime_ns > before[1]
    assert json.loads(summary.read_text())["args"]["num"] == 3


@pytest.mark.parametrize("args", [["--regimes", "nope"], ["--seeds", "a"], ["--jobs", "0"],
                                  ["--ponders", "-1"]])
def test_bad_input_is_one_line(args, capsys):
    with pytest.raises(SystemExit) as e:
        study.parse_args(args)
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:")


def test_lang_chase_reports_thinking_longer(tmp_path):
    out = tmp_path / "s"
    res = subprocess.run([sys.executable, "study.py", "--quick", "--seeds", "0", "--regimes", "lang-chase",
                          "--jobs", "2", "--num", "2", "--out", str(out)], cwd=REPO, capture_output=True,
                         text=True, timeout=600, env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert res.returncode == 0, res.stderr
    runs = {r["run"]: r for r in json.loads((out / "results.json").read_text())["runs"]}
    assert set(runs["online-p0.03"]["longer"]) == {"router", "max", "hops", "control"}
    assert set(runs["none-d2"]["longer"]) == set(runs["early-p0.03"]["longer"]) == {"max", "hops", "control"}
    for h, x in runs["none-d1"]["longer"]["hops"].items():  # the oracle runs each reference its hops
        assert x["mean_depth"] == int(h)
    for x in runs["online-p0.03"]["longer"]["control"].values():  # the control: the longest trained chain's hops
        assert x["mean_depth"] == 4
    assert max(int(h) for h in runs["none-d1"]["longer"]["max"]) > 4  # chains longer than trained
    report = (out / "report.md").read_text()
    assert "### Thinking longer" in report
    # the references behind each column: the same prompts for every run
    counts = {h: x["references"] for h, x in runs["none-d1"]["longer"]["max"].items()}
    assert all(by[h]["references"] == n for r in runs.values() for by in r["longer"].values()
               for h, n in counts.items())
    assert "References per cell: " + ", ".join(f"{n} of {h} hop{'' if h == '1' else 's'}"
                                               for h, n in counts.items()) in report


def test_curve_points_are_the_trade_off_with_its_spread():
    """One point per ponder with mean [min, max] over seeds, in order of depth,
    whichever order the runs come in."""
    rows = [dict(run=f"online-p{p}", ponder=p, seed=s, mean_depth=d + 0.1 * s, exact_match=a - 0.1 * s)
            for p, d, a in ((0.03, 1.2, 0.9), (0.002, 2.0, 1.0), (0.01, 1.6, 0.95)) for s in (0, 1, 2)]
    curve = study.curve_points(rows)
    assert [p["ponder"] for p in curve] == [0.03, 0.01, 0.002]
    assert curve[0]["mean_depth"] == {"mean": pytest.approx(1.3), "min": 1.2, "max": pytest.approx(1.4)}
    assert curve[2]["exact_match"] == {"mean": pytest.approx(0.9), "min": pytest.approx(0.8), "max": 1.0}


def test_generation_speed_is_measured_again_when_the_ponders_change(tmp_path, monkeypatch):
    calls = []

    def fake_bench(cmd, log, env):  # writes what bench.py generate --json would: one entry per checkpoint
        calls.append(cmd)
        ckpts = cmd[cmd.index("--ckpt") + 1:cmd.index("--json")]
        (tmp_path / "dfs" / "speed.json").write_text(json.dumps({"models": [{"model": c} for c in ckpts]}))

    monkeypatch.setattr(study.bench, "run_logged", fake_bench)
    (tmp_path / "dfs").mkdir()
    for ponders in ("0.01", "0.01", "0.002,0.01"):
        args = study.parse_args(["--regimes", "dfs", "--ponders", ponders, "--out", str(tmp_path)])
        speed = study.generation_speed("dfs", args)
    assert len(calls) == 2  # measured, read back, measured again with a new ponder
    assert [m["model"].split(os.sep)[-2] for m in speed["models"]] == \
        ["early-p0.002", "early-p0.01", "online-p0.002", "online-p0.01"]


def test_runs_from_another_folder(tmp_path):
    """Paths on the command line are the caller's, wherever study.py lives:
    the scripts it starts must write where it reads."""
    res = subprocess.run([sys.executable, os.path.join(REPO, "study.py"), "--quick", "--seeds", "0", "--regimes",
                          "dfs", "--jobs", "2", "--num", "2", "--out", "elsewhere"], cwd=tmp_path,
                         capture_output=True, text=True, timeout=600, env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert res.returncode == 0, res.stderr
    assert (tmp_path / "elsewhere" / "report.md").is_file() and (tmp_path / "elsewhere" / "dfs" / "s0").is_dir()
    assert not os.path.exists(os.path.join(REPO, "elsewhere"))
