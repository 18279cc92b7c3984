"""Tests for study.py: the whole pipeline in --quick mode (a tiny model, a few
steps), its outputs' structure (never their numbers), resuming, bad input."""
import json
import os
import subprocess
import sys
import time
from functools import partial

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
        inside = json.loads((run / "summary.json").read_text())["in_distribution"]
        assert (r["exact_match"], r["mean_depth"]) == (inside["exact_match"], inside["mean_depth"])
        if r["router"] == "none":  # a constant depth follows nothing and explains nothing
            assert r["mean_depth"] == r["max_depth"] and r["spearman_feature"] is None and r["r2_static"] is None
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
    assert "Made by `python study.py --quick --seeds 0,1 --regimes dfs --jobs 2 --num 2 --out " in text
    for heading in ("## Rules", "## Findings", "### Accuracy against compute", "### Alignment",
                    "### Decision timing", "### Extrapolation to larger sizes", "### Generation speed"):
        assert heading in text
    # the findings table: a verdict of every claim for each router (timing: one for the ponder)
    findings = text.split("## Findings")[1].split("## dfs")[0]
    for claim in ("alignment", "no extrapolation in size", "accuracy against compute", "generation speed"):
        for router in ("early", "online"):
            assert f"| {claim} | dfs | {router}-p0.002 | " in findings, (claim, router)
    assert "| decision timing | dfs | ponder 0.002 | " in findings
    # depth per value of the difficulty feature, for each router
    alignment = text.split("### Alignment")[1].split("### Decision timing")[0]
    assert "Mean depth by backtrack" in alignment and "| early-p0.002 | " in alignment
    # each router beside the best fixed depth: its share of that depth's compute
    curve = text.split("### Accuracy against compute")[1].split("### Alignment")[0]
    assert all(f"- {r}-p0.002: exact-match" in curve and "of best fixed depth" in curve for r in ("early", "online"))
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
    assert set(runs["online-p0.03"]["longer"]) == {"router", "converged", "max", "hops", "4x", "control"}
    for x in runs["online-p0.03"]["longer"]["converged"].values():  # no halt before an exit can repeat
        assert x["mean_depth"] >= 2
    assert set(runs["none-d2"]["longer"]) == set(runs["early-p0.03"]["longer"]) == {"max", "hops", "4x", "control"}
    for h, x in runs["none-d1"]["longer"]["4x"].items():  # 4x the hops, however many (a test max_depth of 32)
        assert x["mean_depth"] == 4 * int(h)
    for h, x in runs["none-d1"]["longer"]["hops"].items():  # the oracle runs each reference its hops
        assert x["mean_depth"] == int(h)
    for x in runs["online-p0.03"]["longer"]["control"].values():  # the control: the longest trained chain's hops
        assert x["mean_depth"] == 4
    assert max(int(h) for h in runs["none-d1"]["longer"]["max"]) > 4  # chains longer than trained
    report = (out / "report.md").read_text()
    assert "### Thinking longer" in report
    assert all("longer_p" in r for r in runs.values()) and "Per-step accuracy p at the oracle depth" in report
    # the references behind each column: the same prompts for every run
    counts = {h: x["references"] for h, x in runs["none-d1"]["longer"]["max"].items()}
    assert all(by[h]["references"] == n for r in runs.values() for by in r["longer"].values()
               for h, n in counts.items())
    assert "References per cell: " + ", ".join(f"{n} of {h} hop{'' if h == '1' else 's'}"
                                               for h, n in counts.items()) in report


def test_lang_longer_runs_its_own_depth_and_tests_every_length_alike(monkeypatch, tmp_path):
    """The thinking-longer regime trains its router at its own max_depth (6) where
    the others keep 4, and asks every test prompt for the end of one chain of
    1..16 hops, in every mode of the thinking-longer evaluation."""
    calls = []
    monkeypatch.setattr(study, "evaluate_once", lambda ckpt, flags, log, env: calls.append(flags))
    monkeypatch.setattr(study.analyze, "read_json", lambda path: {})
    args = study.parse_args(["--regimes", "lang-longer,lang-chase", "--out", str(tmp_path)])
    study.thinking_longer(str(tmp_path), "online", study.REGIMES["lang-longer"]["longer"], args, {})
    assert len(calls) == 6 and all("--uniform-hops" in f and f[f.index("--hops") + 1] == "16" for f in calls)
    assert [f[:f.index("--max-depth")] for f in calls if "--halt-when-converged" in f] == \
        [["--depth", "router", "--halt-when-converged"]]
    assert study.points("lang-longer", args) == [("online", 6, 0.03)]
    assert study.points("lang-chase", args)[-1] == ("online", 4, 0.03)
    assert study.points("lang-chase", study.parse_args(["--max-depth", "5"]))[-1] == ("online", 5, 0.03)


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

    monkeypatch.setattr(study, "run_logged", fake_bench)
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


# the sweep runner: resumable, stopped by Ctrl-C or a failed run

@pytest.mark.parametrize("stop, code", [(KeyboardInterrupt, 130), (SystemExit(1), 1)], ids=["ctrl-c", "failed"])
def test_a_stopped_run_starts_no_other(stop, code):
    """Ctrl-C in a sweep (train_unless_finished raises KeyboardInterrupt when train.py
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
        study.run_in_parallel([stopped] + [partial(run, i) for i in range(3)], 1, str)
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
    monkeypatch.setattr(study, "RESUMED_SECONDS", 0.05)

    def run(seconds):
        time.sleep(seconds)
        return seconds

    study.run_in_parallel([partial(run, s) for s in (0, 0, 0, 0.2, 0.2, 0.2)], 1, str)
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

    monkeypatch.setattr(study, "run_logged", train_stopped_at_step_5)
    with pytest.raises(KeyboardInterrupt):
        study.train_unless_finished(str(tmp_path / "online-p0.01"), [], 10, {})
    assert scripts == ["train.py"]


def test_a_script_stopped_by_ctrl_c_stops_the_sweep_quietly(tmp_path, capsys):
    """A script killed by Ctrl-C before it could save (exit by SIGINT) stops
    the sweep as Ctrl-C does, not as a failed run with an error line."""
    killed_by_ctrl_c = ("import os, signal; signal.signal(signal.SIGINT, signal.default_int_handler); "
                        "os.kill(os.getpid(), signal.SIGINT)")
    with pytest.raises(KeyboardInterrupt):
        study.run_logged([sys.executable, "-c", killed_by_ctrl_c], str(tmp_path / "log"), dict(os.environ))
    assert "error" not in capsys.readouterr().err


# -----------------------------------------------------------------------------
# the verdicts: results built by hand that must give each verdict of each rule

def run(name, seed, regime="r", exact=0.95, ood=0.1, depth=1.5, depth_ood=2.5, rho=0.5, r2_static=0.1, r2_dynamic=0.3,
        **more):
    router = name.split("-")[0]
    return dict(regime=regime, run=name, seed=seed, router=router, ponder=None if router == "none" else 0.01,
                max_depth=int(name[-1]) if router == "none" else 4, exact_match=exact, exact_match_ood=ood,
                mean_depth=depth, mean_depth_ood=depth_ood, spearman_feature=rho, r2_static=r2_static,
                r2_dynamic=r2_dynamic, **more)


def judge(routed, fixed=(0.8, 0.95, 0.96, 0.9), hints="off", speed=None, longer=False):
    """The verdicts of one regime: {(claim, run): verdict}, with fixed depths 1..4 of these exact-matches."""
    runs = [run(f"none-d{d}", s, exact=e) for d, e in enumerate(fixed, 1) for s in (0, 1, 2)] + routed
    spec = dict(flags=["--task", "lang", "--hints", hints], feature="hops", max_depth=4)
    if longer:
        spec["longer"] = {}
    results = {"seeds": [0, 1, 2], "regimes": {"r": spec}, "runs": runs, "speed": {"r": speed} if speed else {}}
    return {(claim, name): verdict for claim, _, name, _, verdict in study.verdicts(results)}


def seeds(name, *per_seed):
    """Three seeds of a run, each with its own keyword values."""
    return [run(name, s, **kw) for s, kw in enumerate(per_seed)]


@pytest.mark.parametrize("rhos, exact, verdict", [
    ((0.3, 0.5, 0.8), 0.95, "reproduced"),
    ((0.3, 0.5, 0.8), 0.93, "weak"),  # as aligned, but below the best fixed depth's 0.96 by more than 0.02
    ((0.1, 0.2, 0.29), 0.96, "weak"),
    ((0.29, 0.5, 0.8), 0.96, "weak"),  # one seed under 0.3
    ((0.05, 0.2, 0.5), 0.96, "mixed"),
    ((0.09, -0.3, None), 0.96, "not reproduced"),  # None: a constant depth, no correlation
])
def test_alignment_rule(rhos, exact, verdict):
    assert judge(seeds("online-p0.01", *[dict(rho=r, exact=exact) for r in rhos]))[
        "alignment", "online-p0.01"] == verdict


def test_alignment_supervised_by_hints_is_reported_apart():
    verdicts = judge(seeds("online-p0.01", {}, {}, {}), hints="on")
    assert verdicts["supervised alignment", "online-p0.01"] == "reproduced"
    assert ("alignment", "online-p0.01") not in verdicts


@pytest.mark.parametrize("per_seed, verdict", [
    ([dict(exact=0.9, ood=0.4, depth=1.5, depth_ood=2.0)] * 3, "reproduced"),
    ([dict(exact=0.9, ood=0.4, depth=1.5, depth_ood=1.5)] * 3, "mixed"),  # no more depth on larger inputs
    ([dict(exact=0.9, ood=0.4)] * 2 + [dict(exact=0.9, ood=0.5)], "mixed"),  # 0.5 is not below half of 0.9
    ([dict(exact=1.0, ood=0.9), dict(exact=0.9, ood=0.81), dict(exact=0.5, ood=0.5)], "not reproduced (extrapolates)"),
    ([dict(exact=1.0, ood=0.9), dict(exact=0.9, ood=0.80), dict(exact=0.5, ood=0.5)], "mixed"),
])
def test_extrapolation_rule(per_seed, verdict):
    assert judge(seeds("online-p0.01", *per_seed))["no extrapolation in size", "online-p0.01"] == verdict


@pytest.mark.parametrize("early, online, verdict", [
    # static share s = R^2 static / (R^2 static + R^2 dynamic)
    ((0.3, 0.3), (0.2, 0.3), "reproduced"),        # 0.50 against 0.40
    ((0.2, 0.3), (0.3, 0.3), "reversed"),
    ((0.3, 0.3), (0.28, 0.3), "mixed"),           # 0.50 against 0.48: within 0.05
    ((0.019, 0.3), (0.001, 0.5), "not applicable"),
    ((0.021, 0.1), (0.001, 0.5), "reproduced"),   # early's static R^2 at 0.021 counts
])
def test_decision_timing_rule(early, online, verdict):
    routed = [run(f"{router}-p0.01", s, r2_static=st, r2_dynamic=dy)
              for router, (st, dy) in (("early", early), ("online", online)) for s in (0, 1, 2)]
    assert judge(routed)["decision timing", "ponder 0.01"] == verdict


def test_decision_timing_needs_every_seed():
    routed = [run(f"{router}-p0.01", s, r2_static=0.3 if router == "early" or s == 2 else 0.1)
              for router in ("early", "online") for s in (0, 1, 2)]
    assert judge(routed)["decision timing", "ponder 0.01"] == "mixed"  # seed 2 leans static online too
    routed = [run(f"{router}-p0.01", s, r2_static=0.3 if router == "online" and s < 2 else 0.1)
              for router in ("early", "online") for s in (0, 1, 2)]
    assert judge(routed)["decision timing", "ponder 0.01"] == "mixed"  # reversed in seeds 0 and 1 only
    assert ("decision timing", "ponder 0.01") not in judge(seeds("online-p0.01", {}, {}, {}))  # one router


@pytest.mark.parametrize("exact, verdict", [(0.94, "matches"), (0.939, "below")])
def test_accuracy_rule(exact, verdict):
    assert judge(seeds("online-p0.01", *[dict(exact=exact)] * 3))["accuracy against compute", "online-p0.01"] \
        == verdict


def speed_model(router, fixed_depth, ratios):
    """bench.py generate's entry: routed tokens/s = ratio x those of the column the ratio is against."""
    rows = [dict(batch=b, tokens_per_s=dict(routed=100.0 * r, full=50.0, fixed=100.0, depth1=200.0))
            for b, r in zip((1, 32), ratios)]
    return dict(model=f"x/r/s0/{router}-p0.01/ckpt.pt", max_depth=4, fixed_depth=fixed_depth, rows=rows)


@pytest.mark.parametrize("exact, ratios, verdict, against", [
    (0.955, (1.2, 1.1), "faster", "depth 2 at"),    # depth 2 (0.95) is within 0.01 of 0.955: timed as "fixed"
    (0.955, (0.9, 0.7), "slower", "depth 2 at"),
    (0.955, (1.2, 0.9), "mixed", "depth 2 at"),
    (0.98, (1.2, 1.1), "faster", "depth 3 (the best fixed depth; none is as accurate)"),
])
def test_generation_speed_rule(exact, ratios, verdict, against):
    model = speed_model("online", 3 if "3" in against else 2, ratios)
    results = {"seeds": [0], "regimes": {"r": dict(flags=[], feature="hops")},
               "runs": [run(f"none-d{d}", 0, exact=e) for d, e in ((1, 0.8), (2, 0.95), (3, 0.96))]
               + [run("online-p0.01", 0, exact=exact)], "speed": {"r": {"models": [model]}}}
    (measured, found), = [(m, v) for c, _, _, m, v in study.verdicts(results) if c == "generation speed"]
    assert found == verdict and against in measured
    assert measured.startswith(f"{ratios[0]:.2f}x / {ratios[1]:.2f}x of ")
    # against the same weights at max_depth too: routed 100 x ratio over 50 tokens/s
    assert f"{2 * ratios[0]:.2f}x / {2 * ratios[1]:.2f}x of the same weights at max_depth 4" in measured


def test_generation_speed_equal_accuracy_depth_untimed():
    model = speed_model("online", 3, (1.2, 1.1))  # timed at depths 1, 3 and 4; equal accuracy is depth 2
    results = {"seeds": [0], "regimes": {"r": dict(flags=[], feature="hops")},
               "runs": [run(f"none-d{d}", 0, exact=e) for d, e in ((1, 0.8), (2, 0.95), (3, 0.96), (4, 0.9))]
               + [run("online-p0.01", 0, exact=0.955)], "speed": {"r": {"models": [model]}}}
    assert [(m, v) for c, _, _, m, v in study.verdicts(results) if c == "generation speed"] == \
        [("depth 2 not timed", "n/a")]


@pytest.mark.parametrize("accuracies, depth, four_x, verdict", [
    ((0.9, 0.95, 1.0), 5.0, 0.0, "reached"),
    ((0.9, 0.95, 0.89), 5.0, 0.0, "not reached"),  # one seed under 0.9
    ((0.9, 0.95, 1.0), 6.1, 0.0, "not reached"),  # the router runs more than one iteration past the hops
    ((0.9, 0.95, 1.0), 3.9, 0.0, "not reached"),  # or stops more than one before them
    ((0.9, 0.95, 1.0), 5.0, 0.03, "not reached"),  # 4x the hops loses 0.03 against the oracle: overthinking
])
def test_thinking_longer_rule(accuracies, depth, four_x, verdict):
    def longer(acc):  # 4 hops (trained) at 0.5 is not judged; 5 hops at acc @ depth, the oracle at acc
        at = {"4": dict(reference_acc=0.5, mean_depth=9.0), "5": dict(reference_acc=acc, mean_depth=depth)}
        return {"router": at, "control": at, "hops": at,
                "4x": {h: dict(x, reference_acc=x["reference_acc"] - four_x) for h, x in at.items()}}
    verdicts = judge([run("online-p0.01", s, longer=longer(a)) for s, a in enumerate(accuracies)], longer=True)
    assert verdicts["thinking longer", "online-p0.01"] == verdict


def test_thinking_longer_reports_halting_once_converged_beside_the_router():
    at = {"5": dict(reference_acc=0.8, mean_depth=5.0), "6": dict(reference_acc=0.7, mean_depth=6.0)}
    late = {"5": dict(reference_acc=1.0, mean_depth=6.0), "6": dict(reference_acc=0.99, mean_depth=7.5)}
    seeds = [{"longer": {"router": at, "control": at, "hops": at, "4x": at, **({"converged": late} if s else {})}}
             for s in range(2)]
    measured, verdict = study.longer(seeds)
    assert measured.endswith("halting once converged: worst length n/a / 0.99, at most n/a / 1.5 iterations past "
                             "the hops") and verdict == "not reached"  # judged on the router alone
    assert "converged" not in study.longer(seeds[:1])[0]


def test_evaluate_once_skips_a_summary_of_the_same_arguments(tmp_path, monkeypatch):
    """A summary written after the checkpoint by the same arguments is not
    measured again, also when an option was added to evaluate.py since (it
    took its default); other arguments are."""
    calls = []
    monkeypatch.setattr(study, "run_logged", lambda cmd, log, env: calls.append(cmd))
    ckpt = tmp_path / "ckpt.pt"
    ckpt.write_bytes(b"")
    flags = ["--num", "5", "--out", str(tmp_path)]
    saved = vars(study.evaluate.parse_args(["--ckpt", str(ckpt)] + flags))
    del saved["halt_when_converged"]  # a summary from before the option
    (tmp_path / "summary.json").write_text(json.dumps({"args": saved}))
    study.evaluate_once(str(ckpt), flags, "log", {})
    assert calls == []
    study.evaluate_once(str(ckpt), flags + ["--halt-when-converged"], "log", {})
    study.evaluate_once(str(ckpt), ["--num", "6", "--out", str(tmp_path)], "log", {})
    assert len(calls) == 2


# -----------------------------------------------------------------------------
# results.json: merged across commands; the report rebuilt from it; README's findings are the report's

def test_adding_a_regime_or_a_seed_keeps_the_other_runs():
    old = {"command": "python study.py", "regimes": {"a": {"x": 1}}, "speed": {"a": "sa"},
           "runs": [run("none-d1", 0, "a"), run("none-d1", 1, "a"), run("none-d1", 0, "b")]}
    new = [run("none-d1", 1, "a", exact=0.5), run("none-d1", 2, "a")]
    merged = study.merge_results(old, new, {"a": {"x": 1}}, {"a": "sa2"}, "python study.py --seeds 1,2")
    assert merged["commands"] == ["python study.py", "python study.py --seeds 1,2"]
    assert sorted((r["regime"], r["seed"], r["exact_match"]) for r in merged["runs"]) == \
        [("a", 0, 0.95), ("a", 1, 0.5), ("a", 2, 0.95), ("b", 0, 0.95)]  # seed 1 of a replaced
    assert merged["seeds"] == [0, 1, 2] and merged["speed"] == {"a": "sa2"}
    assert {a["regime"]: a["seeds"] for a in merged["aggregates"]} == {"a": [0, 1, 2], "b": [0]}


def test_a_folder_refuses_a_regime_with_other_settings(tmp_path, capsys):
    args = study.parse_args(["--regimes", "dfs", "--out", str(tmp_path)])
    previous = {"regimes": {"dfs": json.loads(json.dumps(study.regime_spec("dfs", args)))}}
    study.check_same_settings(previous, args)  # the same: fine
    with pytest.raises(SystemExit):
        study.check_same_settings(previous, study.parse_args(["--regimes", "dfs", "--steps", "10",
                                                              "--out", str(tmp_path)]))
    assert "holds regime dfs with other settings" in capsys.readouterr().err


def test_report_is_rebuilt_from_results_alone(quick, tmp_path):
    out, _ = quick
    copy = tmp_path / "copy"
    copy.mkdir()
    (copy / "results.json").write_text((out / "results.json").read_text())  # no run folders
    study.main(["--report", "--out", str(copy)])
    assert (copy / "report.md").read_text() == (out / "report.md").read_text()


def test_readme_carries_the_findings_of_the_committed_study():
    results = study.read_results(os.path.join(REPO, "study"))
    rows = [line for line in study.findings_table(results["seeds"], study.verdicts(results)) if line]
    with open(os.path.join(REPO, "README.md")) as f:
        readme = f.read().splitlines()
    start = readme.index(rows[0])  # the table's header
    assert readme[start:start + len(rows)] == rows
    # and the committed report is the one results.json gives
    with open(os.path.join(REPO, "study", "report.md")) as f:
        assert f.read() == study.report(results, [os.path.join("study", f"{figure}-{r}.png")
                                                  for figure in ("curve", "longer") for r in results["regimes"]
                                                  if os.path.isfile(os.path.join(REPO, "study", f"{figure}-{r}.png"))])


def test_the_plan_runs_anywhere_and_the_report_trains_nothing(tmp_path):
    """--plan writes one line per run; run by a shell loop (as a job array
    would, one line each), then the report step finds every run finished."""
    common = ["--quick", "--regimes", "dfs", "--seeds", "0", "--num", "2", "--sizes", "4-5", "--out", "s"]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    res = subprocess.run([sys.executable, os.path.join(REPO, "study.py"), *common, "--plan", "plan.txt"],
                         cwd=tmp_path, capture_output=True, text=True, timeout=60, env=env)
    assert res.returncode == 0, res.stderr
    lines = (tmp_path / "plan.txt").read_text().splitlines()
    assert len(lines) == 4 and all("--only dfs/s0/" in line for line in lines)
    assert [line.split("--only dfs/s0/")[1] for line in lines] == \
        ["early-p0.002", "online-p0.002", "none-d2", "none-d1"]  # longest first

    def run_lines(first, last):  # as a job array would, each line from another folder
        loop = subprocess.run(["bash", "-c", f"sed -n '{first},{last}p' plan.txt | while read -r line; do "
                                             "(cd / && bash -c \"$line\") || exit 1; done"],
                              cwd=tmp_path, capture_output=True, text=True, timeout=600, env=env)
        assert loop.returncode == 0, loop.stdout + loop.stderr

    run_lines(1, 2)
    assert not (tmp_path / "s" / "results.json").exists()  # a plan's line writes no report
    # what has finished so far, while the other lines have not run: gathered, the rest skipped
    res = subprocess.run([sys.executable, os.path.join(REPO, "study.py"), *common, "--finished"], cwd=tmp_path,
                         capture_output=True, text=True, timeout=600, env=env)
    assert res.returncode == 0, res.stderr
    assert {r["run"] for r in json.loads((tmp_path / "s" / "results.json").read_text())["runs"]} == \
        {"early-p0.002", "online-p0.002"}
    assert not (tmp_path / "s" / "dfs" / "s0" / "none-d1").exists()  # --finished trained nothing
    run_lines(3, 4)
    run_dir = tmp_path / "s" / "dfs" / "s0"
    logs = {p.name: p.read_text() for p in run_dir.glob("*.log")}
    assert set(logs) == {f"{r}.{what}.log" for r in ("early-p0.002", "online-p0.002", "none-d1", "none-d2")
                         for what in ("train", "eval")}
    assert json.loads((run_dir / "none-d1" / "config.json").read_text())["sizes"] == "4-5"
    report = subprocess.run([sys.executable, os.path.join(REPO, "study.py"), *common], cwd=tmp_path,
                            capture_output=True, text=True, timeout=600, env=env)
    assert report.returncode == 0, report.stderr
    assert {p.name: p.read_text() for p in run_dir.glob("*.log")} == logs  # nothing trained or evaluated again
    results = json.loads((tmp_path / "s" / "results.json").read_text())
    assert len(results["runs"]) == 4 and (tmp_path / "s" / "report.md").is_file()
    assert set(results["runs"][0]["by_size"]) == {"4", "5", "6", "7"}  # --sizes 4-5, tested two above
