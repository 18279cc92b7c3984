"""
The study in one command: the paper's three findings, on every regime, over
several seeds, beside the paper's claims.

    python study.py                      # dfs and the depth-needed lang regime, seeds 0-2
    python study.py --regimes dfs --seeds 0 --jobs 2
    python study.py --quick              # a tiny model, a few steps: proves the pipeline

For every regime and seed it trains router none at every depth 1..max_depth
and ANIRA-E and ANIRA-O at every --ponders value (default: the regime's
ponder), evaluates each on the training sizes and on larger ones
(evaluate.py), analyses each tokens.csv (analyze.py), and writes to --out:
  results.json  every run's numbers, and the aggregates over seeds
  report.md     one section per finding: the paper's claim, the measurement
                as mean [min, max] over seeds, a verdict
  *.png         accuracy against mean depth, fixed depths against the
                routers, with the spread over seeds (if matplotlib is there)
Runs go --jobs at a time with the cores split among them; a finished run is
never trained again (Ctrl-C, then the same command, resumes).
"""
import argparse
import json
import os
import sys
from functools import partial
from pathlib import Path

import numpy as np

import analyze
import bench
import train

PAPER = ("Our results show that compute allocation aligned with task complexity can emerge without "
         "explicit difficulty supervision, but such alignment does not imply algorithmic generalization: "
         "models fail to extrapolate to unseen input sizes despite allocating additional computation. We "
         "further find that early compute decisions rely on static structural cues, whereas online halting "
         "more closely tracks algorithmic execution state.")  # the abstract (arXiv 2602.08864)

# The regimes of the study: train.py flags, steps, training and test sizes, the
# ponder of the routers, and the difficulty feature that depth should follow.
REGIMES = {
    "dfs": dict(flags=["--task", "dfs"], steps=3000, sizes=(4, 8), ood_to=12, ponder=0.002,
                feature="backtrack"),
    # lr 1e-3, small examples first, no weight decay, 5000 steps: at the default lr 3e-3 the chase
    # formed in some seeds only; with these flags in 4000 steps in 9 of 10 runs (one seed took off
    # late), in 5000 steps in every seed 0-4 of both routers (RESULTS.md, "Reliability across seeds")
    "lang-chase": dict(flags=["--task", "lang", "--chain-order", "reverse", "--hints", "on", "--lr", "1e-3",
                              "--min-lr", "1e-4", "--curriculum", "2000", "--weight-decay", "0"], steps=5000,
                       sizes=(4, 8), ood_to=10, ponder=0.03, feature="hops",
                       # thinking longer: chains of up to 8 hops, on 300 prompts (long chains are rare in
                       # random prompts: 300 hold 90 and 62 references of 5 and 6 hops, 19 of 8)
                       longer=dict(max_depth=8, hops=8, size=10, num=300)),
    # the same without the hint losses: nothing tells an iteration which hop it is at, so depth that
    # follows the hops here is the paper's alignment "without explicit difficulty supervision"
    "lang-chase-nohints": dict(flags=["--task", "lang", "--chain-order", "reverse", "--hints", "off", "--lr",
                                      "1e-3", "--min-lr", "1e-4", "--curriculum", "2000", "--weight-decay", "0"],
                               steps=5000, sizes=(4, 8), ood_to=10, ponder=0.03, feature="hops",
                               fixed_depths=(1, 4), routers=("online",)),
}
ROUTER_ORDER = ("none", "early", "online")


def main(argv=None):
    args = parse_args(argv)
    jobs = [(regime, seed, point) for regime in args.regimes for seed in args.seeds
            for point in points(regime, args)]
    # longest first (adaptive routers, deep fixed depths), so the last runs are short
    jobs.sort(key=lambda j: (j[2][0] == "none", -j[2][1]))
    threads = max(1, (os.cpu_count() or 1) // args.jobs)
    env = dict(os.environ, OMP_NUM_THREADS=str(threads))
    print(f"{len(jobs)} runs in {args.out}, {args.jobs} at a time, {threads} thread(s) each", flush=True)
    rows = bench.run_in_parallel([partial(run_point, regime, seed, point, args, env) for regime, seed, point in jobs],
                                 args.jobs, lambda row: f"{row['regime']} seed {row['seed']} {row['run']}: "
                                                        f"exact-match {row['exact_match']:.3f} at mean depth "
                                                        f"{row['mean_depth']:.2f}")
    rows.sort(key=lambda r: (r["regime"], ROUTER_ORDER.index(r["router"]), r["max_depth"], r["ponder"] or 0,
                             r["seed"]))
    command = " ".join(["python study.py", *(sys.argv[1:] if argv is None else argv)])
    results = {"command": command, "seeds": args.seeds, "regimes": {r: REGIMES[r] for r in args.regimes},
               "runs": rows, "aggregates": aggregate(rows),
               "speed": {r: generation_speed(r, args) for r in args.regimes}}
    analyze.write(Path(args.out) / "results.json",
                  json.dumps(analyze.nan_to_none(results), indent=1, allow_nan=False))
    figures = [f for regime in args.regimes if (f := plot_curve(rows, regime, args.out))]
    analyze.write(Path(args.out) / "report.md", report(results, figures))
    print(f"wrote {args.out}/results.json, report.md" + (f" and {len(figures)} figure(s)" if figures else ""))


def points(regime, args):
    """(router, max_depth, ponder) of every run of a regime and seed."""
    spec = REGIMES[regime]
    D = 2 if args.quick else args.max_depth
    ponders = args.ponders or [spec["ponder"]]
    depths = sorted({min(d, D) for d in spec.get("fixed_depths", range(1, D + 1))})
    return [("none", d, None) for d in depths] + \
        [(router, D, p) for router in spec.get("routers", ("early", "online")) for p in ponders]


def run_point(regime, seed, point, args, env):
    """Train and evaluate one run (bench.tradeoff_point: resumes, never
    retrains a finished run), then analyse its tokens and add the numbers of
    the three findings to its row."""
    spec = REGIMES[regime]
    lo, hi = spec["sizes"]
    steps = 6 if args.quick else spec["steps"]
    train_flags = spec["flags"] + ["--sizes", f"{lo}-{hi}", "--max-iters", str(steps), "--seed", str(seed),
                                   "--device", args.device]
    eval_flags = ["--sizes", f"{lo}-{spec['ood_to']}", "--num", str(args.num),
                  "--device", args.device]
    if args.quick:
        train_flags += ["--eval-every", "3", "--eval-num", "8", "--halt-warmup", "3", "--warmup", "2",
                        "--d-model", "32"]
    out = os.path.join(args.out, regime, f"s{seed}")
    os.makedirs(out, exist_ok=True)
    row = bench.tradeoff_point(point, out, steps, train_flags, eval_flags, env)
    row.update(regime=regime, seed=seed, **findings(os.path.join(out, row["run"], "tokens.csv"), spec))
    if "longer" in spec:
        row["longer"] = thinking_longer(os.path.join(out, row["run"]), row["router"], spec["longer"], args, env)
    return row


def thinking_longer(run, router, longer, args, env):
    """References right and mean depth by hops on chains longer than any
    trained on, with max_depth raised at test time: the router deciding
    (online only: ANIRA-E cannot choose a depth it never had), every token at
    max_depth, and each reference at exactly its hops (evaluate.py --depth);
    and the control, every token at the longest trained chain's hops: a
    longer chain resolved there was not chased hop by hop, so only what the
    others add over it is thinking longer."""
    out = {}
    modes = {"router": ("router", longer["max_depth"]), "max": ("max", longer["max_depth"]),
             "hops": ("hops", longer["max_depth"]), "control": ("max", train.DEFAULTS["hops"])}
    for mode, (depth, max_depth) in modes.items():
        if depth == "router" and router != "online":  # none's router is max; ANIRA-E cannot
            continue
        folder = os.path.join(run, f"longer-{mode}")
        flags = ["--depth", depth, "--max-depth", str(max_depth), "--hops", str(longer["hops"]),
                 "--sizes", str(longer["size"]), "--num", str(args.num if args.quick else longer["num"]),
                 "--device", args.device, "--out", folder]
        bench.evaluate_once(os.path.join(run, "ckpt.pt"), flags, folder + ".log", env)
        by_hops = bench.read_json(os.path.join(folder, "summary.json")).get("by_hops", [])
        out[mode] = {str(h["hops"]): {"reference_acc": h["reference_acc"], "mean_depth": h["mean_depth"],
                                       "references": h["num"]} for h in by_hops}
    return out


def generation_speed(regime, args):
    """Greedy generation of the first seed's routers (bench.py generate, once
    every run is trained, so that nothing else shares the cores): tokens/s of
    the routed model against the same weights at max_depth, which cost what
    the fixed-depth model of max_depth costs. Measured once, then read back
    (measured again if the ponders changed)."""
    path = os.path.join(args.out, regime, "speed.json")
    D = 2 if args.quick else args.max_depth
    ponders = args.ponders or [REGIMES[regime]["ponder"]]
    ckpts = [os.path.join(args.out, regime, f"s{args.seeds[0]}", f"{router}-p{p:g}", "ckpt.pt")
             for router in REGIMES[regime].get("routers", ("early", "online")) for p in ponders]
    if not os.path.isfile(path) or [m["model"] for m in bench.read_json(path)["models"]] != ckpts:
        speed = ["--quick"] if args.quick else ["--rounds", "5", "--batch-sizes", "1,32"]
        bench.run_logged(bench.script("bench.py") + ["generate", "--ckpt", *ckpts, "--json", path, *speed],
                         path + ".log", dict(os.environ, OMP_NUM_THREADS=str(os.cpu_count() or 1)))
        print(f"generation speed of {regime} (D = {D}) in {path}", flush=True)
    return bench.read_json(path)


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
# the report: one section per finding, the paper beside the measurement

def report(results, figures):
    aggs = results["aggregates"]
    L = ["# The study: the paper's findings, measured", "",
         f"Seeds {', '.join(map(str, results['seeds']))}; every number is the mean over seeds with "
         f"[min, max]. Reproduce: `{results['command']}` (see its --help).", "",
         f"The paper (abstract): \"{PAPER}\"", ""]
    for regime, spec in results["regimes"].items():
        rows = [a for a in aggs if a["regime"] == regime]
        best_fixed = max((a for a in rows if a["router"] == "none"), key=lambda a: a["exact_match"]["mean"])
        L += [f"## {regime}: `python train.py {' '.join(spec['flags'])}`, {spec['steps']} steps, "
              f"sizes {spec['sizes'][0]}-{spec['sizes'][1]} (tested to {spec['ood_to']})", ""]
        L += ["### Accuracy against compute", ""]
        L += analyze.table(["run", "mean depth", "exact-match", "exact-match OOD", "spearman(depth, "
                            f"{spec['feature']})", "spearman(depth, needed)", "halted too early"],
                           [[a["run"], fmt(a["mean_depth"]), fmt(a["exact_match"]), fmt(a["exact_match_ood"]),
                             fmt(a.get("spearman_feature")), fmt(a.get("spearman_needed")),
                             fmt(a.get("halted_too_early"))] for a in rows])
        L += [f"![{regime}]({os.path.basename(f)})" for f in figures if regime in f] + [""]
        L += section_curve(rows, best_fixed) + section_alignment(rows, spec, best_fixed)
        L += section_timing(rows) + section_extrapolation(rows)
        if "longer" in spec:
            L += section_longer(rows, spec)
        L += section_speed(results["speed"].get(regime), rows, results["seeds"][0])
    return "\n".join(L + section_cost(results["runs"], aggs)) + "\n"


def section_curve(rows, best_fixed):
    """Each router against the best fixed depth: how close in accuracy, at
    what share of its compute."""
    L = ["Mean depth is iterations per target token; prompt tokens run every iteration of their model "
         "(max_depth, or the fixed depth).", ""]
    for a in rows:
        if a["router"] == "none":
            continue
        matched = [f["run"] for f in rows
                  if f["router"] == "none" and f["exact_match"]["mean"] <= a["exact_match"]["mean"]]
        L += [f"- {a['run']}: exact-match {fmt(a['exact_match'])} at {a['mean_depth']['mean']:.2f} iterations, "
              f"{a['mean_depth']['mean'] / best_fixed['max_depth']:.2f} of the best fixed depth's "
              f"({best_fixed['run']}: {best_fixed['exact_match']['mean']:.3f} at {best_fixed['max_depth']}); "
              f"at least as accurate as {', '.join(matched) or 'no fixed depth'}."]
    return L + [""]


def section_alignment(rows, spec, best_fixed):
    L = ["### Alignment", "", "The paper: \"compute allocation aligned with task complexity can emerge "
         "without explicit difficulty supervision\".", ""]
    for a in rows:
        if a["router"] == "none":
            continue
        rho = (a.get("spearman_feature") or {}).get("mean", np.nan)
        verdict = "reproduced" if rho > 0.1 else "not reproduced"
        L += [f"- {a['run']}: Spearman of depth with {spec['feature']} {fmt(a.get('spearman_feature'))}, with the "
              f"depth needed {fmt(a.get('spearman_needed'))}; exact-match {fmt(a['exact_match'])} against the "
              f"best fixed depth's {fmt(best_fixed['exact_match'])} ({best_fixed['run']}): **{verdict}**."]
    routers = [a for a in rows if a["router"] != "none"]
    values = sorted({v for a in routers for v in a["depth_by_feature"]}, key=float)
    L += ["", f"Mean depth by {spec['feature']} (training sizes):", ""]
    return L + analyze.table(["run"] + values, [[a["run"]] + [fmt(a["depth_by_feature"].get(v)) for v in values]
                                                for a in routers])


def section_timing(rows):
    L = ["### Decision timing", "", "The paper: \"early compute decisions rely on static structural cues, "
         "whereas online halting more closely tracks algorithmic execution state\". R^2 of depth on the "
         "static features alone and on the dynamic ones alone (the paper's partition; the token's position "
         "in the answer apart).", ""]
    routers = {a["router"]: a for a in rows if a["router"] != "none"}
    L += analyze.table(["run", "R^2 static", "R^2 dynamic", "R^2 position", "size's share of R^2",
                        "categorical-size gain", "R^2 static / dynamic, larger sizes included"],
                       [[a["run"], fmt(a["r2_static"]), fmt(a["r2_dynamic"]), fmt(a["r2_position"]),
                         fmt(a.get("size_share"), "%"), fmt(a["r2_categorical_gain"]),
                         f"{fmt(a['r2_static_all_sizes'])} / {fmt(a['r2_dynamic_all_sizes'])}"]
                        for a in rows if a["router"] != "none"])
    r2 = [routers[r][k]["mean"] for r in ("early", "online") if r in routers for k in ("r2_static", "r2_dynamic")]
    if len(r2) == 4 and np.isfinite(r2).all():
        e, o = routers["early"], routers["online"]
        early_static = e["r2_static"]["mean"] > e["r2_dynamic"]["mean"]
        online_dynamic = o["r2_dynamic"]["mean"] > o["r2_static"]["mean"]
        verdict = "reproduced" if early_static and online_dynamic else \
            "reversed" if not early_static and not online_dynamic else "not reproduced"
        ratio = {r: a["r2_static"]["mean"] / a["r2_dynamic"]["mean"] if a["r2_dynamic"]["mean"] > 0 else np.nan
                 for r, a in (("early", e), ("online", o))}
        L += [f"Early leans on {'static' if early_static else 'dynamic'} cues, online on "
              f"{'dynamic' if online_dynamic else 'static'} ones (R^2 static over dynamic: early "
              f"{ratio['early']:.2f}, online {ratio['online']:.2f}): **{verdict}**.", ""]
    return L


def section_extrapolation(rows):
    L = ["### Extrapolation to larger sizes", "", "The paper: \"models fail to extrapolate to unseen input "
         "sizes despite allocating additional computation\". Exact-match @ mean depth by size (OOD: not "
         "trained on).", ""]
    sizes = sorted({n for a in rows for n in a.get("by_size", {})}, key=float)
    return L + analyze.table(["run"] + sizes, [[a["run"]] + [size_cell(a, n) for n in sizes] for a in rows])


def section_speed(speed, rows, seed):
    L = ["### Generation speed", "", "Is routed generation faster than the fixed-depth model of equal "
         f"accuracy? `bench.py generate` on the routers of seed {seed}: tokens/s routed against the same "
         "weights at max_depth (the cost of a fixed-depth model of that depth), the cores not shared; "
         "exact-match as above (mean over seeds).", ""]
    if not speed:
        return L + ["Not measured.", ""]
    exact = {a["run"]: a["exact_match"]["mean"] for a in rows}
    table = []
    for m in speed["models"]:
        run = os.path.basename(os.path.dirname(m["model"]))
        fixed = f"none-d{m['max_depth']}"
        for r in m["rows"]:
            tps = r["tokens_per_s"]
            table.append([run, f"{exact.get(run, float('nan')):.3f}", f"{exact.get(fixed, float('nan')):.3f}",
                          r["batch"], f"{m['decode_mean_depth']:.2f} of {m['max_depth']}", f"{tps['routed']:.0f}",
                          f"{tps['full']:.0f}", f"{tps['routed'] / tps['full']:.2f}x"])
    return L + analyze.table(["run", "its exact-match", "fixed max_depth's", "batch", "decoding depth",
                              "tok/s routed", "tok/s at max_depth", "speed-up"], table)


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


def section_longer(rows, spec):
    longer = spec["longer"]
    L = ["### Thinking longer: chains longer than any trained on", "",
         f"Trained on chains of at most {train.DEFAULTS['hops']} hops with max_depth as in its run; tested on "
         f"{longer['size']} variables with chains of up to {longer['hops']} hops, max_depth raised to "
         f"{longer['max_depth']} "
         "(`evaluate.py --max-depth --hops --depth`). References right @ mean depth, by hops: the router "
         "deciding, every token at max_depth, each reference at exactly its hops (the oracle), and the "
         f"control: every token at {train.DEFAULTS['hops']} iterations, the longest chain trained on. A longer "
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
    return L + ["References per cell: " + ", ".join(f"{counts[h]['references']['mean']:.0f} of {h} "
                                                     f"hop{'' if h == '1' else 's'}" for h in hops if h in counts)
                + ".", ""]


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
    if x is None or not np.isfinite(x["mean"]):
        return "n/a"
    f = {"%": lambda v: f"{v:.1f}%", "min": lambda v: f"{v:.1f}"}.get(unit, lambda v: f"{v:.3f}")
    if x["min"] == x["max"]:
        return f(x["mean"])
    return f"{f(x['mean'])} [{f(x['min'])}, {f(x['max'])}]"


def plot_curve(rows, regime, out):
    """Exact-match against mean depth: each seed (dots), the mean over seeds
    with its [min, max] (bars), fixed depths joined by a line and each
    router's ponders by another; None without matplotlib."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
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


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--regimes", default=",".join(REGIMES), help=f"comma-separated, of {', '.join(REGIMES)}")
    p.add_argument("--seeds", default="0,1,2", help="comma-separated train.py seeds")
    p.add_argument("--ponders", default=None,
                   help="comma-separated --ponder values of the routers (default: the regime's)")
    p.add_argument("--max-depth", type=int, default=4)
    p.add_argument("--num", type=int, default=None,
                   help="evaluation examples per size (default 100, 3 with --quick; thinking longer: 300 prompts)")
    p.add_argument("--jobs", type=int, default=2, help="runs at once; the cores are split among them")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda (every run)")
    p.add_argument("--quick", action="store_true", help="a tiny model, a few steps: proves the pipeline")
    p.add_argument("--out", default=None, help="folder (default study, or study-quick with --quick)")
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
    if min(args.jobs, args.max_depth, args.num) < 1 or (args.ponders and min(args.ponders) < 0):
        train.fail("--jobs, --max-depth and --num must be at least 1, --ponders not negative")
    args.out = args.out or ("study-quick" if args.quick else "study")
    return args


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:  # Ctrl-C outside the runs (e.g. while generation speed is measured)
        print("interrupted: finished runs are kept, the same command resumes", file=sys.stderr)
        sys.exit(130)
