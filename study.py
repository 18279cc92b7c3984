"""
The study in one command: the paper's three findings, on every regime, over
several seeds, judged by written rules seed by seed, beside the paper's claims.

    python study.py                      # dfs, the two lang-chase regimes and lang-longer, seeds 0-2
    python study.py --regimes dfs --seeds 0 --jobs 2
    python study.py --quick              # a tiny model, a few steps: proves the pipeline
    python study.py --report             # report.md again from results.json: trains nothing
    python study.py --plan plan.txt      # one command line per run, for a scheduler (README)

For every regime and seed it trains router none at the regime's fixed depths
(every depth 1..max_depth unless the regime names some) and ANIRA-E and
ANIRA-O at every --ponders value (default: the regime's ponder), evaluates
each on the training sizes and on larger ones (evaluate.py), analyses each
tokens.csv (analyze.py), and writes to --out:
  results.json  every run's numbers, the aggregates over seeds, the commands
                that made them; a run already there from another command is
                kept (adding a regime or a seed keeps the rest)
  report.md     the rules, the findings table (README carries its rows), then
                per regime one section per finding, as mean [min, max] over seeds
  *.png         accuracy against mean depth, fixed depths against the
                routers, with the spread over seeds (if matplotlib is there)
Runs go --jobs at a time with the cores split among them; a finished run is
never trained again (Ctrl-C, then the same command, resumes).

The accuracy-against-compute sweep of any task is the same command on a
regime outside the study, e.g. one seed of a shorter run at three ponders:
    python study.py --regimes lang-reverse --seeds 0 --steps 2000 --ponders 0.002,0.01,0.03 --out out/sweep
"""
import argparse
import json
import os
import shlex
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import CancelledError, ThreadPoolExecutor, as_completed
from functools import partial
from pathlib import Path

import numpy as np

import analyze
import evaluate
import tasks
import train

PAPER = ("Our results show that compute allocation aligned with task complexity can emerge without "
         "explicit difficulty supervision, but such alignment does not imply algorithmic generalization: "
         "models fail to extrapolate to unseen input sizes despite allocating additional computation. We "
         "further find that early compute decisions rely on static structural cues, whereas online halting "
         "more closely tracks algorithmic execution state.")  # the abstract (arXiv 2602.08864)

def chase(hints):
    """lang with chains written last link first, lr 1e-3, small examples first, no weight decay: at the
    default lr 3e-3 the chase formed in some seeds only; with these flags and --hints on, in every seed
    0-4 of both routers (RESULTS.md, "Reliability across seeds")."""
    return ["--task", "lang", "--chain-order", "reverse", "--hints", hints, "--lr", "1e-3", "--min-lr", "1e-4",
            "--curriculum", "2000", "--weight-decay", "0"]


# The regimes: train.py flags, steps, training and test sizes, the ponder of the
# routers, the difficulty feature that depth should follow; optionally the
# fixed depths and routers to run (default: every depth 1..max_depth, both routers).
REGIMES = {
    "dfs": dict(flags=["--task", "dfs"], steps=3000, sizes=(4, 8), ood_to=12, ponder=0.002,
                feature="backtrack"),
    "lang-chase": dict(flags=chase("on"), steps=5000, sizes=(4, 8), ood_to=10, ponder=0.03,
                       feature="hops",
                       # thinking longer: chains of up to 8 hops, on 300 prompts (long chains are rare in
                       # random prompts: 300 hold 90 and 62 references of 5 and 6 hops, 19 of 8)
                       longer=dict(max_depth=8, hops=8, size=10, num=300)),
    # the same without the hint losses: nothing tells an iteration which hop it is at, so depth that
    # follows the hops here is the paper's alignment "without explicit difficulty supervision"
    "lang-chase-nohints": dict(flags=chase("off"), steps=5000, sizes=(4, 8), ood_to=10,
                               ponder=0.03, feature="hops", fixed_depths=(1, 4), routers=("online",)),
    # thinking longer (RESULTS.md): one hop per iteration through a discrete anchor, the state replaced
    # by h0 and the previous exit's token (the true one in training), the prompt frozen after its
    # first iteration, no step embedding, max_depth 6; prompts of up to 24 variables from lang's own
    # 48 names, chains of at most 4 hops; tested on chains of 1..16 hops in prompts of 24 variables,
    # every prompt asking for the end of one of them (evaluate.py --uniform-hops)
    "lang-longer": dict(flags=chase("on") + ["--no-depth-embed", "--anchor", "--prompt-depth", "1",
                                             "--anchor-forcing", "1", "--names", "48"],
                        steps=5000, sizes=(4, 24), ood_to=32, ponder=0.03, feature="hops", max_depth=6,
                        fixed_depths=(), routers=("online",),
                        longer=dict(max_depth=20, hops=16, size=24, num=2000, uniform_hops=True)),
    # outside the study, for sweeps: train.py's defaults on the other tasks
    "lang-reverse": dict(flags=["--task", "lang", "--chain-order", "reverse"], steps=2000, sizes=(4, 8),
                         ood_to=10, ponder=0.01, feature="hops"),
    "lang-reverse-hints": dict(flags=["--task", "lang", "--chain-order", "reverse", "--hints", "on"], steps=2000,
                               sizes=(4, 8), ood_to=10, ponder=0.01, feature="hops"),
    "lang": dict(flags=["--task", "lang"], steps=2000, sizes=(4, 8), ood_to=10, ponder=0.01, feature="hops"),
    "topo": dict(flags=["--task", "topo"], steps=2000, sizes=(4, 8), ood_to=10, ponder=0.01, feature="ready"),
}
STUDY = ("dfs", "lang-chase", "lang-chase-nohints", "lang-longer")  # what `python study.py` runs
ROUTER_ORDER = ("none", "early", "online")


def main(argv=None):
    args = parse_args(argv)
    jobs = [(regime, seed, point) for regime in args.regimes for seed in args.seeds
            for point in points(regime, args)]
    if args.plan:
        return write_plan(jobs, args, argv)
    if args.report:
        return write_report(args.out)
    previous = read_results(args.out)
    check_same_settings(previous, args)
    if args.only:
        jobs = [j for j in jobs if job_name(*j) == args.only] or train.fail(f"--only {args.only}: no such run")
    rows = [row for row in run_jobs(jobs, args) if row]  # --finished: None for a run still training
    if args.only:  # one line of a plan: the report step gathers the runs
        return
    command = " ".join(["python study.py", *(sys.argv[1:] if argv is None else argv)])
    speed = {r: s for r in args.regimes if (s := generation_speed(r, args))}
    results = merge_results(previous, rows, {r: regime_spec(r, args) for r in args.regimes}, speed, command)
    analyze.write(Path(args.out) / "results.json",
                  json.dumps(analyze.nan_to_none(results), indent=1, allow_nan=False))
    write_report(args.out)


def run_jobs(jobs, args):
    """Train, evaluate and analyse every job, --jobs at a time, longest first."""
    jobs = longest_first(jobs)
    threads = max(1, (os.cpu_count() or 1) // args.jobs)
    # one line of a plan runs with the threads its scheduler gave it
    env = dict(os.environ) if args.only and "OMP_NUM_THREADS" in os.environ else \
        dict(os.environ, OMP_NUM_THREADS=str(threads))
    print(f"{len(jobs)} runs in {args.out}, {args.jobs} at a time, {env['OMP_NUM_THREADS']} thread(s) each",
          flush=True)
    return run_in_parallel([partial(run_point, regime, seed, point, args, env) for regime, seed, point in jobs],
                           args.jobs, lambda row: "not finished: skipped" if row is None else
                           f"{row['regime']} seed {row['seed']} {row['run']}: exact-match {row['exact_match']:.3f} "
                           f"at mean depth {row['mean_depth']:.2f}")


def write_report(out):
    """report.md and the figures from results.json alone."""
    results = read_results(out) or train.fail(f"{out}/results.json: not found; run the study first")
    figures = [f for regime in results["regimes"] if (f := plot_curve(results["runs"], regime, out))]
    figures += [f for regime, spec in results["regimes"].items()
                if "longer" in spec and (f := plot_longer(results["aggregates"], regime, out))]
    analyze.write(Path(out) / "report.md", report(results, figures))
    print(f"wrote {out}/report.md" + (f" and {len(figures)} figure(s)" if figures else ""))


def points(regime, args):
    """(router, max_depth, ponder) of every run of a regime and seed."""
    spec = REGIMES[regime]
    D = max_depth(regime, args)
    ponders = args.ponders or [spec["ponder"]]
    depths = sorted({min(d, D) for d in spec.get("fixed_depths", range(1, D + 1))})
    return [("none", d, None) for d in depths] + \
        [(router, D, p) for router in spec.get("routers", ("early", "online")) for p in ponders]


def longest_first(jobs):
    """Adaptive routers, then the deepest fixed depths: the last runs to finish are short."""
    return sorted(jobs, key=lambda j: (j[2][0] == "none", -j[2][1]))


def run_name(point):
    router, depth, ponder = point
    return f"{router}-d{depth}" if ponder is None else f"{router}-p{ponder:g}"


def job_name(regime, seed, point):
    """How --only and the plan name a run: its folder under --out."""
    return f"{regime}/s{seed}/{run_name(point)}"


def regime_spec(regime, args):
    """The regime as these arguments run it (--sizes, --steps, --quick change it)."""
    spec = dict(REGIMES[regime], max_depth=max_depth(regime, args), dtype=args.dtype)
    if args.sizes:
        spec["sizes"], spec["ood_to"] = args.sizes, args.ood_to
    if args.steps or args.quick:
        spec["steps"] = 6 if args.quick else args.steps
    return spec


def max_depth(regime, args):
    """The adaptive routers' max_depth: --max-depth, else the regime's, else 4."""
    return 2 if args.quick else args.max_depth or REGIMES[regime].get("max_depth", 4)


def regime_task(regime):
    """(task, pool of names) of a regime's train.py flags."""
    flags = REGIMES[regime]["flags"]
    names = int(flags[flags.index("--names") + 1]) if "--names" in flags else tasks.N_LABELS
    return flags[flags.index("--task") + 1], names


def run_point(regime, seed, point, args, env):
    """Train one run (unless it has finished: a stopped sweep resumes), evaluate
    it in and out of distribution, analyse its tokens, and return its row."""
    spec = regime_spec(regime, args)
    (lo, hi), steps = spec["sizes"], spec["steps"]
    router, depth, ponder = point
    out = os.path.join(args.out, regime, f"s{seed}")
    os.makedirs(out, exist_ok=True)
    run = os.path.join(out, run_name(point))
    flags = spec["flags"] + ["--sizes", f"{lo}-{hi}", "--max-iters", str(steps), "--seed", str(seed),
                             "--device", args.device, "--router", router, "--max-depth", str(depth), "--out", run]
    flags += [] if ponder is None else ["--ponder", str(ponder)]
    flags += ["--dtype", args.dtype] if args.dtype else []  # evaluate.py follows the checkpoint's
    if args.quick:  # seconds per run: a tiny model
        flags += ["--eval-every", "3", "--eval-num", "8", "--halt-warmup", "3", "--warmup", "2", "--d-model", "32"]
    if args.finished and not finished(run, steps):
        return None
    log = train_unless_finished(run, flags, steps, env)
    evaluate_once(os.path.join(run, "ckpt.pt"), ["--sizes", f"{lo}-{spec['ood_to']}", "--num", str(args.num),
                                                 "--device", args.device, "--out", run], run + ".eval.log", env)
    summary = analyze.read_json(os.path.join(run, "summary.json"))
    inside, outside = summary["in_distribution"], summary["ood"]
    row = {"router": router, "max_depth": depth, "ponder": ponder, "mean_depth": inside["mean_depth"],
           "exact_match": inside["exact_match"], "exact_match_ood": outside["exact_match"],
           "minutes": log[-1]["minutes"], "mean_depth_ood": outside["mean_depth"], "run": run_name(point),
           "regime": regime, "seed": seed, **findings(os.path.join(run, "tokens.csv"), spec)}
    if "reference_acc" in inside:  # lang: the share of values resolved through their chains
        row.update(reference_acc=inside["reference_acc"], reference_acc_ood=outside["reference_acc"])
    if "longer" in spec:
        row["longer"], row["longer_p"] = thinking_longer(run, router, spec["longer"], args, env)
    return row


def finished(run, steps):
    log = analyze.read_jsonl(os.path.join(run, "log.jsonl"))
    return bool(log) and log[-1]["step"] >= steps


def train_unless_finished(run, flags, steps, env):
    """train.py, resumed from its checkpoint if there is one; its log."""
    if not finished(run, steps):
        resume = ["--resume"] if os.path.isfile(os.path.join(run, "ckpt.pt")) else []
        run_logged(script("train.py") + flags + resume, run + ".train.log", env)
        if not finished(run, steps):  # train.py saved and stopped on Ctrl-C: evaluate no half-run
            log = analyze.read_jsonl(os.path.join(run, "log.jsonl"))
            print(f"{run}: stopped at step {log[-1]['step'] if log else 0} of {steps}, not evaluated",
                  file=sys.stderr)
            raise KeyboardInterrupt
    return analyze.read_jsonl(os.path.join(run, "log.jsonl"))


def thinking_longer(run, router, longer, args, env):
    """References right and mean depth by hops on chains longer than any
    trained on, with max_depth raised at test time: the router deciding
    (online only: ANIRA-E cannot choose a depth it never had), and the router
    again, halting a token only once its exit repeats ("converged"), every token at
    max_depth, each reference at exactly its hops (evaluate.py --depth), and
    at 4x its hops (does the answer stay put?); and the control, every token
    at the longest trained chain's hops: a longer chain resolved there was
    not chased hop by hop, so only what the others add over it is thinking
    longer. Also the per-step accuracy p at the oracle depth (evaluate.py)."""
    out = {}
    for mode in ("router", "converged", "max", "hops", "4x", "control"):
        if mode in ("router", "converged") and router != "online":  # none's router is max; ANIRA-E cannot
            continue
        folder = os.path.join(run, f"longer-{mode}")
        depth = 4 * longer["hops"] if mode == "4x" else longer["max_depth"]  # 4x: every reference, all of it
        rule = ["--depth", "router", "--halt-when-converged"] if mode == "converged" else ["--depth", mode]
        flags = rule + ["--max-depth", str(depth), "--hops", str(longer["hops"]),
                 "--sizes", str(longer["size"]), "--num", str(args.num if args.quick else longer["num"]),
                 "--device", args.device, "--out", folder] + ["--uniform-hops"] * longer.get("uniform_hops", False)
        evaluate_once(os.path.join(run, "ckpt.pt"), flags, folder + ".log", env)
        summary = analyze.read_json(os.path.join(folder, "summary.json"))
        out[mode] = {str(h["hops"]): {"reference_acc": h["reference_acc"], "mean_depth": h["mean_depth"],
                                       "references": h["num"]} for h in summary.get("by_hops", [])}
        if mode == "hops":
            p = summary.get("per_step", {}).get("p")
    return out, p


def generation_speed(regime, args):
    """Greedy generation of the first seed's routers (bench.py generate, once
    every run is trained, so that nothing else shares the cores): tokens/s of
    the routed model against the same weights at max_depth, at the routed
    mean depth rounded up, and at depth 1, which cost what fixed-depth models
    of those depths cost. Measured once, then read back (measured again if
    the ponders changed). None with --finished if one of them is still training."""
    path = os.path.join(args.out, regime, "speed.json")
    D = max_depth(regime, args)
    ponders = args.ponders or [REGIMES[regime]["ponder"]]
    ckpts = [os.path.join(args.out, regime, f"s{args.seeds[0]}", f"{router}-p{p:g}", "ckpt.pt")
             for router in REGIMES[regime].get("routers", ("early", "online")) for p in ponders]
    if args.finished and not all(finished(os.path.dirname(c), regime_spec(regime, args)["steps"]) for c in ckpts):
        return None
    if not os.path.isfile(path) or [m["model"] for m in analyze.read_json(path)["models"]] != ckpts:
        speed = ["--quick"] if args.quick else ["--rounds", "5", "--batch-sizes", "1,32"]
        run_logged(script("bench.py") + ["generate", "--ckpt", *ckpts, "--json", path, *speed],
                   path + ".log", dict(os.environ, OMP_NUM_THREADS=str(os.cpu_count() or 1)))
        print(f"generation speed of {regime} (D = {D}) in {path}", flush=True)
    return analyze.read_json(path)


def findings(csv_path, spec):
    """The numbers of one run for the three findings, from its tokens.csv:
    in distribution (training sizes) and with the larger sizes included."""
    inside = analyze.analyze(analyze.restrict(analyze.load_csv(csv_path), spec["sizes"]))
    everything = analyze.analyze(analyze.load_csv(csv_path))
    feature = spec["feature"]
    needed = inside["depth_vs_needed"]
    return {
        # alignment: does depth follow the task's difficulty feature and the depth needed?
        "spearman_feature": inside["spearman"].get(feature),
        "spearman_needed": needed["spearman"] if needed else None,
        "halted_too_early": needed["outcomes"]["halted_too_early"] if needed else None,
        "depth_by_feature": {str(x["value"]): x["mean_depth"] for x in inside["depth_by_feature"].get(feature, [])},
        # extrapolation: exact-match and depth by size
        "by_size": {str(s["n"]): {"exact_match": s["exact_match"], "mean_depth": s["mean_depth"], "ood": s["ood"]}
                    for s in everything["by_size"]},
        # decision timing, the paper's partition; position (step, remaining) apart
        **{f"{key}{suffix}": r[key] for r, suffix in ((inside, ""), (everything, "_all_sizes"))
           for key in ("r2_static", "r2_dynamic", "r2_position", "r2_full", "r2_categorical_gain")},
        "size_share": inside["importance"].get(inside["size_feature"]),
    }


# -----------------------------------------------------------------------------
# results.json: the runs of every command that wrote to this folder

def read_results(out):
    path = os.path.join(out, "results.json")
    return analyze.read_json(path) if os.path.isfile(path) else None


def check_same_settings(previous, args):
    """A folder holds one setting per regime: runs of other sizes or steps
    beside them would be averaged together."""
    for regime in args.regimes:
        old = (previous or {}).get("regimes", {}).get(regime)
        new = json.loads(json.dumps(regime_spec(regime, args)))  # tuples as results.json holds them
        if old is not None and any(old[k] != new[k] for k in old.keys() & new.keys()):
            train.fail(f"{args.out}/results.json holds regime {regime} with other settings; use another --out")


def merge_results(previous, rows, specs, speed, command):
    """This command's runs, with the previous ones it did not run again (same
    regime, seed and run): adding a regime or a seed keeps the others."""
    previous = previous or {"runs": [], "regimes": {}, "speed": {}}
    key = lambda r: (r["regime"], r["seed"], r["run"])
    ran = {key(r) for r in rows}
    runs = [r for r in previous["runs"] if key(r) not in ran] + rows
    runs.sort(key=lambda r: (r["regime"], ROUTER_ORDER.index(r["router"]), r["max_depth"], r["ponder"] or 0,
                             r["seed"]))
    commands = previous.get("commands") or ([previous["command"]] if "command" in previous else [])
    return {"commands": commands + [command] * (command not in commands),
            "seeds": sorted({r["seed"] for r in runs}), "regimes": {**previous["regimes"], **specs},
            "runs": runs, "aggregates": aggregate(runs), "speed": {**previous["speed"], **speed}}


def aggregate(rows):
    """Per regime and run, every number as its mean, min and max over seeds."""
    groups = {}
    for r in rows:
        groups.setdefault((r["regime"], r["run"]), []).append(r)
    return [{**merge(rs), "regime": regime, "run": run, "router": rs[0]["router"],
             "max_depth": rs[0]["max_depth"], "ponder": rs[0]["ponder"], "seeds": [r["seed"] for r in rs]}
            for (regime, run), rs in groups.items()]


def merge(values):
    """The seeds' values of one key: numbers -> {mean, min, max} of the finite
    ones (NaN when there is none), dicts key by key, anything else the first."""
    if all(isinstance(v, dict) for v in values):
        return {k: merge([v.get(k) for v in values]) for k in dict.fromkeys(k for v in values for k in v)}
    if any(isinstance(v, bool) for v in values) or \
            not all(v is None or isinstance(v, (int, float)) for v in values):
        return values[0]
    finite = np.array([np.nan if v is None else v for v in values], dtype=float)
    finite = finite[np.isfinite(finite)]
    if not len(finite):
        return {"mean": np.nan, "min": np.nan, "max": np.nan}
    return {"mean": float(finite.mean()), "min": float(finite.min()), "max": float(finite.max())}


# -----------------------------------------------------------------------------
# the verdicts: written rules, applied to every seed's numbers

RULES = [  # claim, the paper, the statistic per seed, the rule
    ("alignment", "compute follows complexity \"without explicit difficulty supervision\"",
     "Spearman of depth with the regime's difficulty feature (answer tokens, training sizes); the router's "
     "exact-match against the best fixed depth's mean",
     "**reproduced**: >= 0.3 in every seed and exact-match within 0.02 of the best fixed depth's; **weak**: "
     ">= 0.1 in every seed; **mixed**: seeds on both sides of 0.1; **not reproduced**: < 0.1 in every seed. "
     "A regime whose hints supervise each iteration is judged alike but reported as *supervised alignment*"),
    ("no extrapolation in size", "models \"fail to extrapolate to unseen input sizes despite allocating "
     "additional computation\"",
     "exact-match on the sizes above training (OOD) against in distribution; mean depth OOD against in "
     "distribution",
     "**reproduced**: OOD exact-match below half the in-distribution one while depth rises with size, in every "
     "seed; **not reproduced (extrapolates)**: OOD at least 0.9x in distribution in every seed; **mixed** "
     "otherwise"),
    ("decision timing", "\"early compute decisions rely on static structural cues, whereas online halting more "
     "closely tracks algorithmic execution state\"",
     "static share s = R^2 static / (R^2 static + R^2 dynamic), early and online of the same seed and ponder",
     "**reproduced**: s(early) > s(online) + 0.05 in every seed; **reversed**: s(online) > s(early) + 0.05 in "
     "every seed; **mixed** otherwise; **not applicable**: R^2 static < 0.02 for both routers in every seed"),
    ("accuracy against compute", "", "the router's exact-match and mean depth; the best fixed depth's "
     "exact-match (mean over seeds)",
     "**matches**: mean within 0.02 of the best fixed depth's; **below** otherwise; with its share of that "
     "depth's iterations"),
    ("generation speed", "", "tokens/s of routed generation (first seed) against the fixed-depth model of equal "
     "accuracy: the smallest fixed depth whose mean exact-match is at least the router's minus 0.01 (none: the "
     "best fixed depth, so labelled), timed as the same weights at that depth",
     "**faster** / **slower**: the ratio above / below 1 at every batch size; **mixed** otherwise"),
    ("thinking longer", "(beyond the paper)", "references right with the online router deciding, on chains "
     "longer than any trained on; beside it the control (every token at the longest trained chain's depth)",
     "**reached**: in every seed, >= 0.9 at every such length, the router's mean depth within 1 of the hops, "
     "and references right with every token at 4x its hops within 0.02 of the oracle's (no overthinking); "
     "**not reached** otherwise"),
]
TRAINED_HOPS = train.DEFAULTS["hops"]  # the longest chain a lang run is trained on


def verdicts(results):
    """Every finding of every regime: (claim, regime, run, measured, verdict)."""
    out = []
    for regime, spec in results["regimes"].items():
        runs = [r for r in results["runs"] if r["regime"] == regime]
        if not runs:
            continue
        fixed = fixed_depth_means(runs)  # alignment, accuracy and speed are judged against them
        routed = by_run([r for r in runs if r["router"] != "none"])
        for name, seeds in routed.items() if fixed else ():
            out.append(("supervised alignment" if supervised(spec) else "alignment", regime, name,
                        *alignment(seeds, spec["feature"], fixed)))
        for name, seeds in routed.items():
            out.append(("no extrapolation in size", regime, name, *extrapolation(seeds)))
        for ponder in sorted({r["ponder"] for r in runs if r["router"] != "none"}):
            early, online = (routed.get(f"{router}-p{ponder:g}") for router in ("early", "online"))
            if early and online:
                out.append(("decision timing", regime, f"ponder {ponder:g}", *timing(early, online)))
        for name, seeds in routed.items() if fixed else ():
            out.append(("accuracy against compute", regime, name, *accuracy(seeds, fixed)))
        for model in (results.get("speed", {}).get(regime) or {}).get("models", []) if fixed else ():
            name = os.path.basename(os.path.dirname(model["model"]))
            if name in routed:
                out.append(("generation speed", regime, name, *generation(model, routed[name], fixed)))
        if "longer" in spec:
            for name, seeds in routed.items():
                if seeds[0]["router"] == "online":
                    out.append(("thinking longer", regime, name, *longer(seeds)))
    return out


def alignment(seeds, feature, fixed):
    rho = values(seeds, "spearman_feature")
    exact = values(seeds, "exact_match")
    best = max(fixed, key=fixed.get)
    measured = (f"Spearman(depth, {feature}) {per_seed(rho, 2)}; exact-match {per_seed(exact, 3)}, best fixed "
                f"depth {best} {fixed[best]:.3f}")
    rho = np.nan_to_num(rho, nan=-1.0)  # a constant depth follows nothing
    if (rho >= 0.3).all() and exact.mean() >= fixed[best] - 0.02:
        return measured, "reproduced"
    if (rho >= 0.1).all():
        return measured, "weak"
    return measured, "not reproduced" if (rho < 0.1).all() else "mixed"


def extrapolation(seeds):
    inside, ood = values(seeds, "exact_match"), values(seeds, "exact_match_ood")
    depth_in, depth_ood = values(seeds, "mean_depth"), values(seeds, "mean_depth_ood")
    measured = (f"exact-match {per_seed(inside, 3)} in distribution, {per_seed(ood, 3)} OOD; mean depth "
                f"{per_seed(depth_in, 2)} -> {per_seed(depth_ood, 2)}")
    if ((ood < 0.5 * inside) & (depth_ood > depth_in)).all():
        return measured, "reproduced"
    return measured, "not reproduced (extrapolates)" if (ood >= 0.9 * inside).all() else "mixed"


def timing(early, online):
    """The static share of early against online's, seed by seed (the seeds both have)."""
    seeds = sorted({r["seed"] for r in early} & {r["seed"] for r in online})
    e, o = ([r for r in rows if r["seed"] in seeds] for rows in (early, online))
    static = {name: values(rows, "r2_static") for name, rows in (("early", e), ("online", o))}
    share = {name: static[name] / (static[name] + values(rows, "r2_dynamic"))
             for name, rows in (("early", e), ("online", o))}
    measured = (f"static share early {per_seed(share['early'], 2)}, online {per_seed(share['online'], 2)} "
                f"(R^2 static early {per_seed(static['early'], 3)}, online {per_seed(static['online'], 3)})")
    if ((static["early"] < 0.02) & (static["online"] < 0.02)).all():
        return measured, "not applicable"
    gap = share["early"] - share["online"]
    return measured, "reproduced" if (gap > 0.05).all() else "reversed" if (gap < -0.05).all() else "mixed"


def accuracy(seeds, fixed):
    exact, depth = values(seeds, "exact_match"), values(seeds, "mean_depth")
    best = max(fixed, key=fixed.get)
    measured = (f"exact-match {per_seed(exact, 3)} at {per_seed(depth, 2)} iterations, "
                f"{depth.mean() / best:.2f} of best fixed depth {best} ({fixed[best]:.3f})")
    return measured, "matches" if exact.mean() >= fixed[best] - 0.02 else "below"


def generation(model, seeds, fixed):
    """Routed tokens/s over those of the fixed depth of equal accuracy, by batch."""
    depth, equal = equal_accuracy_depth(fixed, values(seeds, "exact_match").mean())
    column = {1: "depth1", model["fixed_depth"]: "fixed", model["max_depth"]: "full"}.get(depth)
    name = f"depth {depth}" + ("" if equal else " (the best fixed depth; none is as accurate)")
    if column is None:
        return f"{name} not timed", "n/a"
    ratios = np.array([r["tokens_per_s"]["routed"] / r["tokens_per_s"][column] for r in model["rows"]])
    batches = [r["batch"] for r in model["rows"]]
    full = [r["tokens_per_s"]["routed"] / r["tokens_per_s"]["full"] for r in model["rows"]]
    measured = (f"{' / '.join(f'{x:.2f}x' for x in ratios)} of {name} at batch {' / '.join(map(str, batches))}; "
                f"{' / '.join(f'{x:.2f}x' for x in full)} of the same weights at max_depth {model['max_depth']}")
    return measured, "faster" if (ratios > 1).all() else "slower" if (ratios < 1).all() else "mixed"


def longer(seeds):
    """Online halting on chains longer than trained, seed by seed: references
    right at twice the trained length and at the longest, the worst length,
    how far the router's depth strays from the hops, 4x against the oracle;
    where measured, the worst length halting once converged (not judged)."""
    hops = sorted({int(h) for r in seeds for h in r["longer"]["router"] if int(h) > TRAINED_HOPS})
    if not hops:
        return "no chain longer than trained", "not reached"

    def get(mode, key):  # (seeds, lengths)
        return np.array([[r["longer"].get(mode, {}).get(str(h), {}).get(key, np.nan) for h in hops]
                         for r in seeds], dtype=float)
    acc, control, depth = get("router", "reference_acc"), get("control", "reference_acc"), get("router", "mean_depth")
    astray = np.abs(depth - np.array(hops)).max(1)
    overthinking = (get("hops", "reference_acc") - get("4x", "reference_acc")).max(1)
    shown = sorted({h for h in (2 * TRAINED_HOPS, hops[-1]) if h in hops})
    measured = "; ".join(f"{h} hops {per_seed(acc[:, hops.index(h)], 2)}" for h in shown)
    measured += (f"; worst length {per_seed(acc.min(1), 2)} (control at most {per_seed(control.max(1), 2)}); "
                 f"router depth off the hops by at most {per_seed(astray, 1)}; oracle minus 4x at most "
                 f"{per_seed(overthinking, 2)}")
    if any("converged" in r["longer"] for r in seeds):  # the same router, halting only once its exit repeats
        worst, past = get("converged", "reference_acc").min(1), (get("converged", "mean_depth") - hops).max(1)
        measured += (f"; halting once converged: worst length {per_seed(worst, 2)}, at most {per_seed(past, 1)} "
                     "iterations past the hops")
    reached = (np.nan_to_num(acc.min(1)) >= 0.9).all() and (np.nan_to_num(astray, nan=99) <= 1).all() \
        and (np.nan_to_num(overthinking, nan=1) <= 0.02).all()
    return measured, "reached" if reached else "not reached"


def equal_accuracy_depth(fixed, exact):
    """The smallest fixed depth at least as accurate as `exact` (within 0.01);
    the best fixed depth if none is. Returns (depth, whether it is that accurate)."""
    equal = [d for d in sorted(fixed) if fixed[d] >= exact - 0.01]
    return (equal[0], True) if equal else (max(fixed, key=fixed.get), False)


def fixed_depth_means(runs):
    """{depth: mean exact-match over seeds} of the fixed-depth runs."""
    return {seeds[0]["max_depth"]: float(values(seeds, "exact_match").mean())
            for seeds in by_run([r for r in runs if r["router"] == "none"]).values()}


def by_run(runs):
    """{run name: its rows in seed order}."""
    out = {}
    for r in sorted(runs, key=lambda r: r["seed"]):
        out.setdefault(r["run"], []).append(r)
    return out


def values(rows, key):
    return np.array([np.nan if r.get(key) is None else r[key] for r in rows], dtype=float)


def per_seed(x, digits):
    return " / ".join("n/a" if not np.isfinite(v) else f"{v:.{digits}f}" for v in x)


def supervised(spec):
    """Whether the regime's hints supervise each iteration (train.py --hints on)."""
    flags = spec["flags"]
    return "--hints" in flags and flags[flags.index("--hints") + 1] == "on"


def findings_table(seeds, judgements):
    """The report's findings, one row per claim, regime and run (`verdicts`): README carries these rows."""
    return analyze.table(["finding", "regime", "run", f"measured, seeds {', '.join(map(str, seeds))}", "verdict"],
                         [[claim, regime, run, measured, f"**{verdict}**"]
                          for claim, regime, run, measured, verdict in judgements])


# -----------------------------------------------------------------------------
# the report: the rules, the findings, then per regime one section per finding

def report(results, figures):
    aggs = results["aggregates"]
    commands = results.get("commands") or [results.get("command", "(not recorded)")]
    L = ["# The study: the paper's findings, measured", "",
         "Every number is the mean over seeds with [min, max] unless it is given seed by seed. Made by "
         + ", then ".join(f"`{c}`" for c in commands) + " (see its --help; `python study.py --report` "
         "rebuilds this file from results.json).", "",
         f"The paper (abstract): \"{PAPER}\"", "", "## Rules", "",
         "Each verdict is one of these rules applied to every seed's numbers:", ""]
    L += analyze.table(["claim", "the paper", "statistic, per seed", "verdict"], RULES)
    judgements = verdicts(results)
    L += ["## Findings", ""] + findings_table(results["seeds"], judgements)
    for regime, spec in results["regimes"].items():
        rows = [a for a in aggs if a["regime"] == regime]
        if not rows:
            continue
        judged = {(claim, run): (measured, verdict) for claim, reg, run, measured, verdict in judgements
                  if reg == regime}
        L += [f"## {regime}: `python train.py {' '.join(spec['flags'])}`, {spec['steps']} steps, "
              f"sizes {spec['sizes'][0]}-{spec['sizes'][1]} (tested to {spec['ood_to']})", ""]
        L += ["### Accuracy against compute", ""]
        L += analyze.table(["run", "mean depth", "exact-match", "exact-match OOD", "spearman(depth, "
                            f"{spec['feature']})", "spearman(depth, needed)", "halted too early"],
                           [[a["run"], fmt(a["mean_depth"]), fmt(a["exact_match"]), fmt(a["exact_match_ood"]),
                             fmt(a.get("spearman_feature")), fmt(a.get("spearman_needed")),
                             fmt(a.get("halted_too_early"))] for a in rows])
        L += [f"![{regime}]({os.path.basename(f)})" for f in figures if f.endswith(f"curve-{regime}.png")] + [""]
        L += judged_lines(judged, "accuracy against compute")
        L += section_alignment(rows, spec, judged) + section_timing(rows, judged)
        L += section_extrapolation(rows, judged)
        if "longer" in spec:
            L += section_longer(rows, spec, judged)
            L += [f"![{regime}: thinking longer]({os.path.basename(f)})" for f in figures
                  if f.endswith(f"longer-{regime}.png")] + [""]
        L += section_speed(results["speed"].get(regime), rows, judged)
    return "\n".join(L + section_cost(results["runs"], aggs)) + "\n"


def judged_lines(judged, claim):
    """The verdicts of one claim: a line per run, its per-seed numbers beside it."""
    return [f"- {run}: {measured}: **{verdict}**." for (c, run), (measured, verdict) in judged.items()
            if c == claim] + [""]


def section_alignment(rows, spec, judged):
    claim = "supervised alignment" if supervised(spec) else "alignment"
    L = ["### Alignment", "", "The paper: \"compute allocation aligned with task complexity can emerge "
         "without explicit difficulty supervision\"."]
    if supervised(spec):
        L += ["Here the hints train exit d on hop d of the chase: depth that follows the hops is supervised, "
              "so this is *supervised alignment*, apart from the paper's claim."]
    L += [""] + judged_lines(judged, claim)
    routers = [a for a in rows if a["router"] != "none"]
    values = sorted({v for a in routers for v in a["depth_by_feature"]}, key=float)
    L += [f"Mean depth by {spec['feature']} (training sizes):", ""]
    return L + analyze.table(["run"] + values, [[a["run"]] + [fmt(a["depth_by_feature"].get(v)) for v in values]
                                                for a in routers])


def section_timing(rows, judged):
    L = ["### Decision timing", "", "The paper: \"early compute decisions rely on static structural cues, "
         "whereas online halting more closely tracks algorithmic execution state\". R^2 of depth on the "
         "static features alone and on the dynamic ones alone (the paper's partition; the token's position "
         "in the answer apart).", ""]
    L += analyze.table(["run", "R^2 static", "R^2 dynamic", "R^2 position", "size's share of R^2",
                        "categorical-size gain", "R^2 static / dynamic, larger sizes included"],
                       [[a["run"], fmt(a["r2_static"]), fmt(a["r2_dynamic"]), fmt(a["r2_position"]),
                         fmt(a.get("size_share"), "%"), fmt(a["r2_categorical_gain"]),
                         f"{fmt(a['r2_static_all_sizes'])} / {fmt(a['r2_dynamic_all_sizes'])}"]
                        for a in rows if a["router"] != "none"])
    lines = judged_lines(judged, "decision timing")
    return L + (lines if len(lines) > 1 else ["No verdict: it needs both routers at one ponder.", ""])


def section_extrapolation(rows, judged):
    L = ["### Extrapolation to larger sizes", "", "The paper: \"models fail to extrapolate to unseen input "
         "sizes despite allocating additional computation\". Exact-match @ mean depth by size (OOD: not "
         "trained on).", ""]
    sizes = sorted({n for a in rows for n in a.get("by_size", {})}, key=float)
    L += analyze.table(["run"] + sizes, [[a["run"]] + [size_cell(a, n) for n in sizes] for a in rows])
    return L + judged_lines(judged, "no extrapolation in size")


def section_speed(speed, rows, judged):
    L = ["### Generation speed", "", "Is routed generation faster than the fixed-depth model of equal "
         "accuracy? `bench.py generate` on the routers of the first seed, the cores not shared: tokens/s "
         "routed, at max_depth, at the routed mean depth rounded up, and at depth 1 (the same weights forced "
         "to a depth cost what a fixed-depth model of that depth costs); exact-match as above (mean over "
         "seeds).", ""]
    if not speed:
        return L + ["Not measured.", ""]
    table = []
    for m in speed["models"]:
        run = os.path.basename(os.path.dirname(m["model"]))
        for r in m["rows"]:
            tps = r["tokens_per_s"]
            table.append([run, r["batch"], f"{m['decode_mean_depth']:.2f} of {m['max_depth']}",
                          f"{tps['routed']:.0f}", f"{tps['full']:.0f}", f"{tps['fixed']:.0f} (depth {m['fixed_depth']})",
                          f"{tps['depth1']:.0f}"])
    L += analyze.table(["run", "batch", "decoding depth", "tok/s routed", "at max_depth", "at the mean rounded up",
                        "at depth 1"], table)
    return L + judged_lines(judged, "generation speed")


def section_cost(runs, aggs):
    """Where the study's time goes: training minutes per run (train.py's clock,
    the cores shared by the runs going at once), and their total."""
    total = {}
    for r in runs:
        total[r["regime"], r["run"]] = total.get((r["regime"], r["run"]), 0) + r["minutes"]
    L = ["## Cost", "", f"Training minutes of every run as train.py logged them, {sum(total.values()):.0f} in all "
         "(runs going --jobs at a time share the cores; evaluations come on top).", ""]
    return L + analyze.table(["regime", "run", "minutes per seed", "minutes, all seeds"],
                             [[a["regime"], a["run"], fmt(a["minutes"], "min"),
                              f"{total[a['regime'], a['run']]:.0f}"] for a in aggs])


def section_longer(rows, spec, judged):
    longer = spec["longer"]
    L = ["### Thinking longer: chains longer than any trained on", "",
         f"Trained on chains of at most {TRAINED_HOPS} hops with max_depth as in its run; tested on "
         f"{longer['size']} variables with chains of up to {longer['hops']} hops"
         + (" (every prompt asks for the end of one chain of 1..hops, `--uniform-hops`)" * longer.get("uniform_hops", 0))
         + f", max_depth raised to {longer['max_depth']} ({4 * longer['hops']} for 4x) "
         "(`evaluate.py --max-depth --hops --depth`). References right @ mean depth, by hops: the router "
         "deciding, where measured the router halting a token only once its exit repeats the previous "
         "iteration's token (converged, `--halt-when-converged`), every token at max_depth, each "
         "reference at exactly its hops (the oracle) and, where measured, at 4x its hops (4x: an answer "
         f"found should stay put), and the control: every token at {TRAINED_HOPS} iterations, the longest "
         "chain trained on. A longer "
         "chain resolved in the control was not chased hop by hop, but read off the prompt another way: "
         "only what the other rows add over the control is thinking longer.", ""]
    hops = sorted({h for a in rows for mode in (a.get("longer") or {}).values() for h in mode}, key=int)
    table = []
    for a in rows:
        for mode, by in (a.get("longer") or {}).items():
            table.append([a["run"], mode] + [longer_cell(by.get(h)) for h in hops])
    L += analyze.table(["run", "depth"] + [f"{h} hop{'' if h == '1' else 's'}" for h in hops], table)
    # evaluate.py draws the same prompts for every run, so every cell of a column counts the same references
    counts = next((by for a in rows for by in (a.get("longer") or {}).values()), {})
    L += ["References per cell: " + ", ".join(f"{counts[h]['references']['mean']:.0f} of {h} "
                                              f"hop{'' if h == '1' else 's'}" for h in hops if h in counts)
          + ".", ""]
    if any("longer_p" in a for a in rows):  # runs from before p was measured have none
        L += ["Per-step accuracy p at the oracle depth (of the hops whose previous hop was named, the share "
              "named; accuracy below p^k at k hops is drift): " + "; ".join(
                  f"{a['run']} {fmt(a.get('longer_p'))}" for a in rows) + ".", ""]
    return L + judged_lines(judged, "thinking longer")


def longer_cell(x):
    if not x or not np.isfinite(x["reference_acc"]["mean"]):
        return ""
    return f"{fmt(x['reference_acc'])} @ {x['mean_depth']['mean']:.2f}"


def size_cell(a, n):
    s = a["by_size"].get(n)
    return "" if s is None else f"{s['exact_match']['mean']:.2f} @ {s['mean_depth']['mean']:.2f}"


def fmt(x, unit=""):
    """mean [min, max] of a spread over seeds (one number if they agree); unit
    "%" for shares already in percent, "min" for minutes."""
    if x is None or x["mean"] is None or not np.isfinite(x["mean"]):
        return "n/a"
    f = {"%": lambda v: f"{v:.1f}%", "min": lambda v: f"{v:.1f}"}.get(unit, lambda v: f"{v:.3f}")
    if x["min"] == x["max"]:
        return f(x["mean"])
    return f"{f(x['mean'])} [{f(x['min'])}, {f(x['max'])}]"


def plot_curve(rows, regime, out):
    """Exact-match against mean depth: each seed (dots), the mean over seeds
    with its [min, max] (bars), fixed depths joined by a line and each
    router's ponders by another; None without matplotlib."""
    plt = analyze.pyplot()
    if plt is None:
        return None
    fig, ax = plt.subplots(figsize=(6, 4))
    for router, marker, colour in (("none", "o", "k"), ("early", "s", "b"), ("online", "^", "r")):
        rs = [r for r in rows if r["regime"] == regime and r["router"] == router]
        if not rs:
            continue
        ax.scatter([r["mean_depth"] for r in rs], [r["exact_match"] for r in rs], marker=marker, color=colour,
                   alpha=0.3, s=15)
        curve = curve_points(rs)
        x, y = ([p[key] for p in curve] for key in ("mean_depth", "exact_match"))
        bars = lambda vs: [[v["mean"] - v["min"] for v in vs], [v["max"] - v["mean"] for v in vs]]
        ax.errorbar([v["mean"] for v in x], [v["mean"] for v in y], xerr=bars(x), yerr=bars(y), marker=marker,
                    color=colour, ls="-" if router == "none" else "--", capsize=2,
                    label="fixed depth" if router == "none" else router + ", by ponder" * (len(curve) > 1))
        if router != "none" and len(curve) > 1:  # which point is which ponder
            for p in curve:
                ax.annotate(f"{p['ponder']:g}", (p["mean_depth"]["mean"], p["exact_match"]["mean"]),
                            textcoords="offset points", xytext=(4, -10), fontsize=7, color=colour)
    ax.set(xlabel="mean iterations per target token", ylabel="exact-match (training sizes)",
           title=f"{regime}: mean over seeds with [min, max], each seed (dots)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    path = os.path.join(out, f"curve-{regime}.png")
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


MODE_COLOURS = (("router", "r"), ("converged", "m"), ("hops", "k"), ("4x", "b"), ("control", "grey"))


def plot_longer(aggs, regime, out):
    """Thinking longer, the online router's runs: references right against
    hops for the router (and, where measured, halting once converged), the
    oracle, 4x the hops and the control (mean over seeds, [min, max] shaded),
    and the routers' mean depth against the hops,
    the hops trained on shaded grey; None without matplotlib or such runs."""
    runs = [a for a in aggs if a["regime"] == regime and a["router"] == "online" and a.get("longer")]
    plt = analyze.pyplot()
    if plt is None or not runs:
        return None
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for a in runs:
        for mode, colour in MODE_COLOURS:
            by = a["longer"].get(mode)
            if not by:  # a mode not measured (4x, in runs from before it was)
                continue
            hops = sorted(by, key=int)
            acc = [by[h]["reference_acc"] for h in hops]
            x = [int(h) for h in hops]
            label = f"{a['run']} {'oracle' if mode == 'hops' else mode}"
            axes[0].plot(x, [v["mean"] for v in acc], "o-", ms=3, color=colour, label=label)
            axes[0].fill_between(x, [v["min"] for v in acc], [v["max"] for v in acc], color=colour, alpha=0.15)
            if mode in ("router", "converged"):
                axes[1].plot(x, [by[h]["mean_depth"]["mean"] for h in hops], "o-", ms=3, color=colour, label=label)
    lengths = sorted({int(h) for a in runs for by in a["longer"].values() for h in by})
    axes[1].plot(lengths, lengths, ":", color="k", lw=1, label="depth = hops")
    axes[0].set_ylim(-0.02, 1.02)
    for ax, ylabel in zip(axes, ("references right", "mean depth (iterations)")):
        ax.axvspan(0.5, TRAINED_HOPS + 0.5, color="grey", alpha=0.15, lw=0)
        ax.set(xlabel="hops", ylabel=ylabel)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    axes[0].set_title(f"{regime}: mean over seeds, [min, max] shaded; grey: the hops trained on", fontsize=9)
    fig.tight_layout()
    path = os.path.join(out, f"longer-{regime}.png")
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def curve_points(rows):
    """One point per run of one router (a fixed depth, or a ponder): mean
    depth and exact-match as mean, min and max over seeds, ordered by mean
    depth so that a line through them is the trade-off."""
    runs = {}
    for r in rows:
        runs.setdefault(r["run"], []).append(r)
    points = [{"run": run, "ponder": seeds[0]["ponder"],
               **{key: merge([r[key] for r in seeds]) for key in ("mean_depth", "exact_match")}}
              for run, seeds in runs.items()]
    return sorted(points, key=lambda p: p["mean_depth"]["mean"])


# -----------------------------------------------------------------------------
# running the runs: here --jobs at a time, or one line each on a scheduler

def write_plan(jobs, args, argv):
    """One self-contained command line per run (train, then its evaluations),
    longest first, for a job array or GNU parallel on machines that share this
    folder; each resumes. Generation speed needs every run finished and quiet
    cores: the report step measures it, `python study.py` with the same
    options, which then trains nothing."""
    jobs = longest_first(jobs)
    common = ["--out", args.out, "--num", str(args.num), "--device", args.device]
    common += ["--max-depth", str(args.max_depth)] if args.max_depth else []
    common += ["--quick"] * args.quick + (["--ponders", ",".join(f"{p:g}" for p in args.ponders)] if args.ponders else [])
    if args.sizes:
        common += ["--sizes", "-".join(map(str, args.sizes)), "--ood-to", str(args.ood_to)]
    common += ["--steps", str(args.steps)] if args.steps else []
    common += ["--dtype", args.dtype] if args.dtype else []
    here, python, study = (shlex.quote(x) for x in (os.getcwd(), sys.executable, os.path.abspath(__file__)))
    lines = [f"cd {here} && {python} {study} " + shlex.join(["--regimes", regime, "--seeds", str(seed), *common,
                                                              "--jobs", "1", "--only", job_name(regime, seed, point)])
             for regime, seed, point in jobs]
    with open(args.plan, "w") as f:
        f.write("\n".join(lines) + "\n")
    report_step = " ".join(["python study.py", *[a for a in (sys.argv[1:] if argv is None else argv)
                                                 if a not in (args.plan, "--plan")]])
    print(f"wrote {len(lines)} lines to {args.plan}: one run each, any order, any machine sharing this folder.\n"
          f"Then `{report_step}` here measures generation speed and writes the report, training nothing.")


RESUMED_SECONDS = 3  # a call faster than this found its run finished before the sweep and only read it


def run_in_parallel(calls, jobs, describe):
    """Run the calls (functions of no argument) `jobs` at a time; print each
    result as it comes, described, with the elapsed and remaining time.
    Ctrl-C (the running scripts get it too, and save) or a failed run starts
    no further run: the sweep stops, and the same command resumes it."""
    rows, t0 = [], time.time()
    worked = []  # rows of the calls that trained or evaluated: the remaining time is theirs
    stopped = threading.Event()

    def unless_stopped(call):
        if stopped.is_set():  # a worker takes the next call before the main thread hears of a failure
            raise CancelledError
        try:
            start = time.time()
            row = call()
            if time.time() - start > RESUMED_SECONDS:
                worked.append(row)
            return row
        except BaseException:
            stopped.set()
            raise

    pool = ThreadPoolExecutor(jobs)
    try:
        futures = [pool.submit(unless_stopped, call) for call in calls]
        for done, future in enumerate(as_completed(futures), 1):
            rows.append(future.result())
            elapsed = time.time() - t0
            left = f", ~{elapsed / len(worked) * (len(calls) - done) / 60:.0f} min left" if worked else ""
            print(f"[{done}/{len(calls)}] {describe(rows[-1])} | {elapsed / 60:.1f} min{left}", flush=True)
    except KeyboardInterrupt:
        print("interrupted: finished runs are kept, the same command resumes", file=sys.stderr)
        sys.exit(130)
    except SystemExit:  # a run failed and said why: the running ones finish (and save) first
        print("stopping: waiting for the running runs to finish", file=sys.stderr, flush=True)
        raise
    finally:
        stopped.set()
        pool.shutdown(cancel_futures=True)
    return rows


def evaluate_once(ckpt, flags, log_path, env):
    """evaluate.py on ckpt, unless its summary.json was written after the
    checkpoint by the same arguments: a resumed sweep re-evaluates nothing."""
    args = evaluate.parse_args(["--ckpt", ckpt] + flags)
    summary_path = os.path.join(args.out or os.path.dirname(os.path.abspath(ckpt)), "summary.json")
    if os.path.isfile(summary_path) and os.path.getmtime(summary_path) >= os.path.getmtime(ckpt):
        saved = analyze.read_json(summary_path).get("args")
        if saved is not None:  # an option added to evaluate.py since then ran as its default
            saved = {**vars(evaluate.parse_args(["--ckpt", ckpt])), **saved}
            if json.loads(json.dumps(saved)) == json.loads(json.dumps(vars(args))):
                return
    run_logged(script("evaluate.py") + ["--ckpt", ckpt] + flags, log_path, env)


def script(name):
    """The command that runs a script of this folder from any folder: the
    paths in its arguments stay the caller's."""
    return [sys.executable, os.path.join(os.path.dirname(os.path.abspath(__file__)), name)]


def run_logged(cmd, log_path, env):
    """Run cmd with its output in log_path; exit if it fails."""
    with open(log_path, "a") as log:
        code = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, env=env).returncode
    if code == -signal.SIGINT:  # the script got the Ctrl-C too, before it could save: stop quietly
        raise KeyboardInterrupt
    if code:
        what = " ".join([os.path.basename(cmd[1]), *cmd[2:3]])
        print(f"error: {what} ... exited with {code}; see {log_path}", file=sys.stderr)
        sys.exit(1)


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--regimes", default=",".join(STUDY), help=f"comma-separated, of {', '.join(REGIMES)} "
                                                              f"(default: the study's, {', '.join(STUDY)})")
    p.add_argument("--seeds", default="0,1,2", help="comma-separated train.py seeds")
    p.add_argument("--ponders", default=None,
                   help="comma-separated --ponder values of the routers (default: the regime's)")
    p.add_argument("--max-depth", type=int, default=None,
                   help="max_depth of the adaptive routers and the deepest fixed depth (default: the regime's, 4 "
                        "but for lang-longer's 6)")
    p.add_argument("--sizes", default=None, help="training sizes, e.g. 4-12 (default: the regime's)")
    p.add_argument("--ood-to", type=int, default=None, help="with --sizes: test up to this size (default: two above)")
    p.add_argument("--steps", type=int, default=None, help="training steps of every run (default: the regime's)")
    p.add_argument("--num", type=int, default=None,
                   help="evaluation examples per size (default 100, 3 with --quick; thinking longer: the "
                        "regime's, 300 or 2000 prompts)")
    p.add_argument("--jobs", type=int, default=2, help="runs at once; the cores are split among them")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda (every run)")
    p.add_argument("--dtype", default=None, choices=train.DTYPES,
                   help="train.py --dtype of every run (default: train.py's, bfloat16 on CUDA, float32 on a CPU)")
    p.add_argument("--quick", action="store_true", help="a tiny model, a few steps: proves the pipeline")
    p.add_argument("--out", default=None, help="folder (default study, or study-quick with --quick)")
    p.add_argument("--report", action="store_true", help="only write report.md again from --out's results.json")
    p.add_argument("--plan", default=None, metavar="FILE",
                   help="write one command line per run to FILE (for a job array or GNU parallel) and stop")
    p.add_argument("--finished", action="store_true",
                   help="train nothing: gather the runs that have finished training (evaluated, analysed), "
                        "skip the others, write results.json and the report (e.g. while a plan still runs)")
    p.add_argument("--only", default=None, metavar="REGIME/sSEED/RUN",
                   help="run only this run (a line of --plan); no results.json, no report")
    args = p.parse_args(argv)
    args.regimes = [r for r in args.regimes.split(",") if r]
    unknown = [r for r in args.regimes if r not in REGIMES]
    if unknown or not args.regimes:
        train.fail(f"--regimes: unknown {', '.join(unknown) or '(none given)'}; choose from {', '.join(REGIMES)}")
    try:
        args.seeds = [int(s) for s in args.seeds.split(",")]
        args.ponders = [float(x) for x in args.ponders.split(",")] if args.ponders else None
    except ValueError:
        train.fail("--seeds takes integers like 0,1,2 and --ponders numbers like 0.002,0.03")
    args.num = (3 if args.quick else 100) if args.num is None else args.num
    if min(args.jobs, args.max_depth or 1, args.num, args.steps or 1) < 1 or (args.ponders and min(args.ponders) < 0):
        train.fail("--jobs, --max-depth, --num and --steps must be at least 1, --ponders not negative")
    if args.sizes:
        regime_tasks = {regime_task(r) for r in args.regimes}
        args.sizes = [train.parse_size_range(args.sizes, task, names) for task, names in regime_tasks][0]
        args.ood_to = args.ood_to or min(args.sizes[1] + 2, *(tasks.max_size(*t) for t in regime_tasks))
        try:
            if args.ood_to <= args.sizes[1]:
                raise ValueError(f"must be above the training sizes {args.sizes[0]}-{args.sizes[1]}")
            for task, names in regime_tasks:
                tasks.check_size(task, args.ood_to, names=names)
        except ValueError as e:
            train.fail(f"--ood-to {args.ood_to}: {e}")
    elif args.ood_to:
        train.fail("--ood-to goes with --sizes")
    args.out = args.out or ("study-quick" if args.quick else "study")
    return args


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:  # Ctrl-C outside the runs (e.g. while generation speed is measured)
        print("interrupted: finished runs are kept, the same command resumes", file=sys.stderr)
        sys.exit(130)
