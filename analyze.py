"""
Does recurrent depth follow per-token difficulty? Statistics on the per-token
records that evaluate.py writes.

$ python analyze.py out/dfs-early/tokens.csv out/dfs-online/tokens.csv --plots

Input: tokens.csv, one row per target token with the columns
task,router,sample,n,pos,target,pred,correct,depth_needed,depth and then the task's
ground-truth features (every column after `depth`); and summary.json beside
it, when present, for the accuracy-by-size table. Output: Markdown tables on
stdout and in report.md, every number in --json, figures with --plots.

The three questions of the study, and the statistics that answer them:

1. Alignment: does per-token compute follow true complexity?
   - Spearman rho (rank correlation: any monotone relation; ties get average
     ranks) and Pearson r (linear) of depth with every feature.
   - The depth histogram, and mean depth per value of the task's main
     difficulty feature (backtrack for dfs, ready for topo, hops for lang).
   - Depth run against depth needed (column depth_needed: the smallest depth
     from which the token's exits stay right, had it kept iterating): the
     model's own measure of a token's difficulty. Tokens halted too early
     (wrong at their depth, right from a deeper one on) are lost accuracy;
     tokens run past the depth they needed are wasted compute.
2. Generalization: token accuracy, exact match and mean depth per input size,
   sizes outside the training range marked OOD. The paper: models spend more
   depth on larger inputs, and it does not buy extrapolation.
3. Decision timing: an early router (ANIRA-E) fixes depth from a shallow
   representation; online halting (ANIRA-O) decides during the recurrence.
   - OLS of depth on z-scored features with an intercept. R^2 = share of the
     variance of depth the features explain linearly; a coefficient = change
     in depth per standard deviation of its feature, the others held fixed.
   - Importance = each feature's share of the explained variance, two ways,
     each normalized to 100%: drop-one (how much R^2 falls without the
     feature: its unique part) and LMG/Shapley (its R^2 gain averaged over
     all orders in which the features can enter: shared parts split fairly).
   - R^2 of static-only features (known from the prompt: size, degrees, hubs)
     versus dynamic-only ones (the algorithm's execution state); see TASKS.
     The paper: early decisions lean on static cues, online halting tracks
     the execution state.
   - The same OLS with the size n one-hot instead of linear: the gain in R^2
     is the non-linear size effect (the paper: large for ANIRA-E only).
"""
import argparse
import csv
import json
import math
import os
import sys
from pathlib import Path

import numpy as np

# Per task: `size` is the linear size feature that the categorical model
# replaces by a one-hot of n; `static` features are fixed by the prompt before
# any output token (so a shallow, early decision can see them); `dynamic`
# ones are the algorithm's state at this token (the paper's partition);
# `position` ones say where the token is in the answer, reported apart: on dfs
# step + remaining = n_nodes, so counted as dynamic they would carry the static
# size into R^2 dynamic; `align` is the main difficulty
# feature (mean depth per value); `key` features are plotted against depth.
# Features missing from a CSV are skipped; a task not listed here gets
# correlations and the full regression only.
TASKS = {
    "dfs": dict(size="n_nodes", align="backtrack",
                static=["n_nodes", "n_edges", "degree", "max_degree", "is_hub"],
                dynamic=["stack_depth", "backtrack", "frontier", "newly_enabled"], position=["step", "remaining"],
                key=["backtrack", "stack_depth", "frontier", "newly_enabled", "degree", "n_nodes"]),
    "topo": dict(size="n_nodes", align="ready",
                 static=["n_nodes", "n_edges", "in_degree", "out_degree", "max_degree", "is_hub"],
                 dynamic=["ready", "newly_enabled"], position=["step", "remaining"],
                 key=["ready", "newly_enabled", "out_degree", "in_degree", "remaining", "n_nodes"]),
    "lang": dict(size="n_vars", align="hops",  # kind: 0 filler, 1 random, 2 reference
                 static=["n_vars", "distractors"],
                 dynamic=["kind", "hops", "distance"], position=["step"],
                 key=["hops", "kind", "distance", "distractors", "n_vars"]),
}
EXACT_LMG_MAX = 12  # exact Shapley over all 2^p subsets up to this many features


def main(argv=None):
    args = parse_args(argv)
    runs = [(path, analyze(restrict(load_csv(path), args.sizes))) for path in args.csv]
    labels = make_labels(runs)
    out = Path(args.out) if args.out else Path(args.csv[0]).parent / "report.md"
    lines = ["# Compute allocation: depth against per-token difficulty", ""]
    for (path, r), label in zip(runs, labels):
        lines += file_section(path, r, label)
    if len(runs) > 1:
        lines += comparison(runs, labels)
    if args.plots:
        lines += plots(runs, labels, out.parent)
    text = "\n".join(lines) + "\n"
    print(text)
    write(out, text)
    print(f"wrote {out}")
    if args.json:
        files = {path: dict(r, label=label) for (path, r), label in zip(runs, labels)}
        write(Path(args.json), json.dumps(nan_to_none({"files": files}), indent=1, allow_nan=False))
        print(f"wrote {args.json}")


def analyze(d):
    """Every statistic of one CSV, as a JSON-ready dict (NaN where undefined)."""
    cfg = TASKS.get(d["task"], {})
    X, y, names = d["X"], d["depth"], d["features"]
    notes = []
    # a constant feature has no variance to explain anything: leave it out of the fits
    kept = [f for j, f in enumerate(names) if np.ptp(X[:, j]) > 0]
    dropped = [f for f in names if f not in kept]
    Z = zscore(X[:, [names.index(f) for f in kept]])
    constant_depth = np.ptp(y) == 0
    if constant_depth:
        notes.append("depth is constant: correlations, R^2 and importance are undefined (n/a)")

    fits = regressions(d, Z, y, kept, cfg, notes)
    lmg, drop, method = importance(Z, y, constant_depth)
    if not constant_depth and not np.isfinite(lmg).any():
        notes.append("the features explain no variance of depth: importance shares are undefined")
    elif not constant_depth and not np.isfinite(drop).any():
        notes.append("no feature explains depth on its own (collinear): drop-one shares are undefined")

    def per_feature(values):
        return {f: (values[kept.index(f)] if f in kept else math.nan) for f in names}

    align = cfg.get("align") if cfg.get("align") in names else None
    shown = list(dict.fromkeys(f for f in [align, *cfg.get("key", names[:6])] if f in names))
    values, counts = np.unique(y, return_counts=True)
    rank_y = rankdata(y)
    by_size, source, train_sizes = sizes(d)
    vs_needed = depth_vs_needed(y, d["needed"], d["correct"])
    needed = d["needed"] if vs_needed else None  # None also for router none (a blank column)
    return {
        "task": d["task"], "router": d["router"], "rows": len(y), "features": names, "dropped": dropped,
        "size_feature": fits["size_feature"],
        "static_features": [f for f in kept if f in cfg.get("static", ())],
        "dynamic_features": [f for f in kept if f in cfg.get("dynamic", ())],
        "r2_full": fits["r2_full"], "r2_static": fits["r2_static"], "r2_dynamic": fits["r2_dynamic"],
        "r2_position": fits["r2_position"],
        "r2_categorical_n": fits["r2_categorical_n"],
        "r2_categorical_gain": fits["r2_categorical_n"] - fits["r2_full"],
        "intercept": fits["intercept"], "coef": per_feature(fits["coef"]),
        "importance": per_feature(lmg), "importance_drop_one": per_feature(drop), "importance_method": method,
        "spearman": {f: corr(rankdata(X[:, j]), rank_y) for j, f in enumerate(names)},
        "pearson": {f: corr(X[:, j], y) for j, f in enumerate(names)},
        "depth_hist": {str(number(v)): int(c) for v, c in zip(values, counts)},
        "mean_depth": float(y.mean()), "std_depth": float(y.std()),
        "alignment_feature": align,
        "depth_by_feature": {f: by_value(X[:, names.index(f)], y, d["correct"], needed) for f in shown},
        "depth_by_n": by_value(d["n"], y, d["correct"]),
        "by_size": by_size, "by_size_source": source, "train_sizes": train_sizes,
        "train_hops": ((d["summary"] or {}).get("trained_task_params") or {}).get("hops"),
        "depth_vs_needed": vs_needed,
        "notes": notes,
    }


def regressions(d, Z, y, kept, cfg, notes):
    """The OLS fits of depth on the standardized features Z (columns `kept`):
    all of them; the static and the dynamic ones alone (decision timing: how
    much of depth do static cues explain, how much the execution state?); and
    all but size with size one-hot (the non-linear size effect). Appends to
    `notes` what makes a number undefined or ambiguous."""
    coef, intercept, r2_full = ols(Z, y)
    if np.linalg.matrix_rank(Z) < len(kept):
        notes.append("some features are exact linear combinations of others (e.g. step + remaining = n_nodes): "
                     "their coefficients are one of many equally good fits (minimum norm); LMG shares split "
                     "the credit fairly")
    if not cfg:
        notes.append(f"task '{d['task']}' is not in TASKS: no static/dynamic split")
    r2_group = {}
    for group in ("static", "dynamic", "position"):
        cols = [j for j, f in enumerate(kept) if f in cfg.get(group, ())]
        r2_group[group] = ols(Z[:, cols], y)[2] if cols else math.nan
        if cfg and not cols and group != "position":
            notes.append(f"no non-constant {group} feature: R^2 {group} is undefined")
    # a static feature that the dynamic or position ones reproduce exactly leaks into their R^2
    for group in ("dynamic", "position"):
        cols = [j for j, f in enumerate(kept) if f in cfg.get(group, ())]
        leaked = [f for j, f in enumerate(kept) if f in cfg.get("static", ()) and cols
                  and ols(Z[:, cols], Z[:, j])[2] > 0.999]
        if leaked:
            notes.append(f"the {group} features determine {', '.join(leaked)} exactly (e.g. step + remaining = "
                         f"n_nodes), so R^2 {group} also captures that static effect")
    # non-linear size effect: swap the linear size feature for a one-hot of n
    size = cfg.get("size") or next((f for f in ("n_nodes", "n_vars") if f in d["features"]), None)
    levels = np.unique(d["n"])
    onehot = (d["n"][:, None] == levels[1:]).astype(float)  # the first size is the baseline
    others = [j for j, f in enumerate(kept) if f != size]
    return {"coef": coef, "intercept": float(intercept), "r2_full": r2_full, "size_feature": size,
            "r2_static": r2_group["static"], "r2_dynamic": r2_group["dynamic"],
            "r2_position": r2_group["position"],
            "r2_categorical_n": ols(np.hstack([Z[:, others], onehot]), y)[2]}


def depth_vs_needed(depth, needed, correct):
    """Did the router stop where the token's prediction became right for good?
    Every token falls in exactly one of five outcomes (their shares sum to 1):
    right at its depth and
      stopped_at_needed   ... its depth is the depth needed;
      ran_past_needed     ... it needed fewer iterations (wasted compute);
      right_not_for_good  ... a deeper exit would be wrong again;
    wrong at its depth and
      halted_too_early    ... right from a deeper depth on (lost accuracy);
      wrong_deeper_too    ... no deeper depth keeps it right.
    None without the column, for router none (a blank column), and when every
    token is wrong at max_depth (no depth needed anywhere)."""
    if needed is None or correct is None or np.isnan(needed).all():
        return None
    known = ~np.isnan(needed)  # blank: wrong at max_depth
    right = correct == 1
    rows = by_value(needed[known], depth[known], correct[known])
    if not known.all():
        rows.append({"value": "none (wrong at max depth)", "tokens": int((~known).sum()),
                     "mean_depth": float(depth[~known].mean()), "token_acc": float(correct[~known].mean())})
    with np.errstate(invalid="ignore"):  # comparisons with NaN are False, as wanted
        outcomes = {"stopped_at_needed": right & (depth == needed),
                    "ran_past_needed": right & (depth > needed),
                    "right_not_for_good": right & ~(depth >= needed),
                    "halted_too_early": halted_too_early(depth, needed, correct),
                    "wrong_deeper_too": ~right & ~(depth < needed)}
    extra = (depth[known] - needed[known]).clip(0).mean()
    rho = corr(rankdata(depth[known]), rankdata(needed[known])) if known.sum() > 1 else math.nan
    return {"outcomes": {k: float(v.mean()) for k, v in outcomes.items()},
            "extra_iterations": float(extra), "spearman": rho, "by_needed": rows}


def halted_too_early(depth, needed, correct):
    """Wrong at its depth, right from a deeper depth on: accuracy the router gave away."""
    with np.errstate(invalid="ignore"):  # a blank depth needed (NaN) compares False
        return (correct == 0) & (depth < needed)


def ols(X, y):
    """Least squares of y on [1, X]: (coefficients, intercept, R^2).
    R^2 is NaN when y is constant: there is no variance to explain."""
    A = np.hstack([np.ones((len(y), 1)), X])
    beta = np.linalg.lstsq(A, y, rcond=None)[0]
    ss_tot = np.sum((y - y.mean()) ** 2)
    ss_res = np.sum((y - A @ beta) ** 2)
    return beta[1:], beta[0], (1 - ss_res / ss_tot if ss_tot > 0 else math.nan)


def importance(Z, y, constant_depth):
    """Shares (in %) of the explained variance: (LMG/Shapley, drop-one, method).
    Both need R^2 of many feature subsets. With z-scored features,
    R^2(S) = r_S' C_SS^-1 r_S (C: the features' correlation matrix, r: their
    correlations with depth), so each subset costs a p x p solve however many
    rows the CSV has; subsets are bitmasks, cached."""
    p = Z.shape[1]
    if constant_depth or p == 0:
        return np.full(p, math.nan), np.full(p, math.nan), "n/a"
    yc = (y - y.mean()) / y.std()
    C, r = Z.T @ Z / len(y), Z.T @ yc / len(y)
    cache = {0: 0.0}

    def r2(mask):
        if mask not in cache:
            idx = [j for j in range(p) if mask >> j & 1]
            cache[mask] = float(r[idx] @ np.linalg.lstsq(C[np.ix_(idx, idx)], r[idx], rcond=None)[0])
        return cache[mask]

    full = (1 << p) - 1
    drop = np.array([r2(full) - r2(full & ~(1 << j)) for j in range(p)])
    phi = np.zeros(p)
    if p <= EXACT_LMG_MAX:
        # average over all p! orderings = sum over subsets S without j, weighted
        # by the share of orderings in which j enters right after S
        weight = [math.factorial(s) * math.factorial(p - s - 1) / math.factorial(p) for s in range(p)]
        for mask in range(full + 1):
            size = bin(mask).count("1")
            for j in range(p):
                if not mask >> j & 1:
                    phi[j] += weight[size] * (r2(mask | 1 << j) - r2(mask))
        method = "exact Shapley (all orderings)"
    else:
        rng, orderings = np.random.default_rng(0), 2000
        for _ in range(orderings):
            mask = 0
            for j in rng.permutation(p):
                phi[j] += (r2(mask | 1 << j) - r2(mask)) / orderings
                mask |= 1 << j
        method = f"Shapley over {orderings} sampled orderings"
    return percent(phi), percent(drop), method


def sizes(d):
    """Accuracy and depth per size: (rows, source, train_sizes). From
    summary.json when present (it knows which sizes are OOD and has greedy
    exact match), else from the CSV, with nothing marked OOD."""
    if d["summary"]:
        keys = ("n", "ood", "token_acc", "exact_match", "mean_depth", "num")
        return ([{k: s.get(k) for k in keys} for s in d["summary"]["sizes"]],
                "summary.json", d["summary"].get("train_sizes"))
    rows = []
    for v in np.unique(d["n"]):
        m = d["n"] == v
        acc = exact = math.nan
        if d["correct"] is not None:
            acc = float(d["correct"][m].mean())
        if d["correct"] is not None and d["sample"] is not None:
            # a sample is an exact match when none of its tokens is wrong
            _, sample = np.unique(d["sample"][m], return_inverse=True)
            exact = float(np.mean(np.bincount(sample, weights=1 - d["correct"][m]) == 0))
        n_samples = len(np.unique(d["sample"][m])) if d["sample"] is not None else None
        rows.append({"n": number(v), "ood": False, "token_acc": acc, "exact_match": exact,
                     "mean_depth": float(d["depth"][m].mean()), "num": n_samples})
    return rows, "csv", None


def load_csv(path):
    """Read evaluate.py's tokens.csv into numpy arrays; exit on bad input."""
    try:
        with open(path, newline="") as f:
            rows = [r for r in csv.reader(f) if r]
    except OSError as e:
        fail(f"cannot read {path}: {e.strerror or e}")
    except (csv.Error, UnicodeDecodeError) as e:
        fail(f"{path} is not a readable CSV: {e}")
    if not rows:
        fail(f"{path} is empty")
    header, body = rows[0], rows[1:]
    missing = [c for c in ("task", "n", "depth") if c not in header]
    if missing:
        fail(f"{path} lacks the column(s) {', '.join(missing)}: expected the tokens.csv of evaluate.py")
    features = header[header.index("depth") + 1:]
    if not features:
        fail(f"{path} has no feature columns after 'depth'")
    if len(body) < len(features) + 2:
        fail(f"{path} has {len(body)} rows, too few for a regression on {len(features)} features "
             f"(need at least {len(features) + 2})")
    for i, r in enumerate(body):
        if len(r) != len(header):
            fail(f"{path}: data row {i + 1} has {len(r)} fields, the header has {len(header)}")
    column = {name: [r[j] for r in body] for j, name in enumerate(header)}
    tasks = sorted(set(column["task"]))
    if len(tasks) > 1:
        fail(f"{path} mixes tasks ({', '.join(tasks)}): give one CSV per run")
    summary_path = Path(path).with_name("summary.json")
    return {
        "task": tasks[0], "router": "+".join(sorted(set(column.get("router", ["?"])))),
        "features": features,
        "X": np.column_stack([numeric(path, f, column[f]) for f in features]),
        "n": numeric(path, "n", column["n"]), "depth": numeric(path, "depth", column["depth"]),
        "correct": numeric(path, "correct", column["correct"]) if "correct" in column else None,
        # blank (wrong at max_depth, or router none): NaN
        "needed": numeric(path, "depth_needed", [v or "nan" for v in column["depth_needed"]], blank_ok=True)
        if "depth_needed" in column else None,
        "sample": np.array(column["sample"]) if "sample" in column else None,
        "summary": read_summary(summary_path) if summary_path.exists() else None,
    }


def restrict(d, sizes):
    """Keep the tokens of examples with lo <= n <= hi (--sizes), e.g. only the
    training sizes, where the model's answers are mostly right."""
    if sizes is None:
        return d
    keep = (d["n"] >= sizes[0]) & (d["n"] <= sizes[1])
    if keep.sum() < len(d["features"]) + 2:
        fail(f"only {keep.sum()} rows have n in {sizes[0]}-{sizes[1]}: too few for a regression")
    for key in ("X", "n", "depth", "correct", "needed", "sample"):
        if d[key] is not None:
            d[key] = d[key][keep]
    return d


def read_summary(path):
    """summary.json of evaluate.py, or None (with a warning) when it is unusable."""
    try:
        s = json.loads(path.read_text())
        if all(isinstance(x, dict) and "n" in x for x in s["sizes"]):
            return s
    except (OSError, ValueError, KeyError, TypeError):
        pass
    print(f"warning: ignoring {path}: not a summary.json with a 'sizes' list", file=sys.stderr)
    return None


# ----------------------------------------------------------------------------
# report


def file_section(path, r, label):
    L = [f"## {label}: `{path}`", "",
         f"Task `{r['task']}`, router `{r['router']}`, {r['rows']} tokens. "
         f"Depth: mean {f3(r['mean_depth'])}, std {f3(r['std_depth'])}.", ""]
    L += [f"Note: {note}." for note in r["notes"]] + ([""] if r["notes"] else [])
    L += table(["depth", "tokens", "share"],
               [[k, c, pct(100 * c / r["rows"])] for k, c in r["depth_hist"].items()])
    a = r["alignment_feature"]
    if a:
        L += [f"### Alignment: mean depth by `{a}`", ""]
        rows = r["depth_by_feature"][a]
        if "mean_needed" in rows[0]:
            L += table([a, "tokens", "mean depth", "token acc", "mean depth needed", "halted too early"],
                       [[x["value"], x["tokens"], f3(x["mean_depth"]), f3(x["token_acc"]),
                         f3(x["mean_needed"]), pct(100 * x["halted_too_early"])] for x in rows])
        else:
            L += table([a, "tokens", "mean depth", "token acc"],
                       [[x["value"], x["tokens"], f3(x["mean_depth"]), f3(x["token_acc"])] for x in rows])
    L += needed_section(r["depth_vs_needed"])
    L += ["### Depth against features", "",
          f"coef: depth per standard deviation of the feature (intercept {f3(r['intercept'])}); "
          f"shares of explained variance: LMG ({r['importance_method']}) and drop-one.", ""]
    group = {f: g for g in ("static", "dynamic", "position") for f in TASKS.get(r["task"], {}).get(g, ())}
    L += table(["feature", "group", "spearman", "pearson", "coef", "share LMG", "share drop-one"],
               [[f, group.get(f, "-"), f3(r["spearman"][f]), f3(r["pearson"][f]),
                 "dropped (constant)" if f in r["dropped"] else f3(r["coef"][f]),
                 pct(r["importance"][f]), pct(r["importance_drop_one"][f])] for f in r["features"]])
    L += ["### Regressions", ""]
    L += table(["model", "R^2"], [[name, f3(r[key])] for key, name in R2_ROWS])
    s, dy = r["r2_static"], r["r2_dynamic"]
    if np.isfinite(s) and np.isfinite(dy):
        L += [f"Decision timing: depth follows {'static cues' if s > dy else 'the execution state'} more "
              f"(R^2 static {f3(s)} vs dynamic {f3(dy)}).", ""]
    L += ["Mean depth by n (CSV): "
          + ", ".join(f"{x['value']}: {f3(x['mean_depth'])}" for x in r["depth_by_n"]), ""]
    L += [f"### Accuracy and depth by size (from {r['by_size_source']}"
          + (f", train sizes {r['train_sizes']}" if r["train_sizes"] else "") + ")", ""]
    L += table(["n", "OOD", "token acc", "exact match", "mean depth", "samples"],
               [[x["n"], "yes" if x["ood"] else "", f3(x["token_acc"]), f3(x["exact_match"]),
                 f3(x["mean_depth"]), x["num"] if x["num"] is not None else "n/a"] for x in r["by_size"]])
    return L


def needed_section(v):
    if v is None:
        return []
    share = {k: pct(100 * x) for k, x in v["outcomes"].items()}
    L = ["### Depth run against depth needed", "",
         "Depth needed: the smallest depth from which the token's exits stay right, in the "
         "counterfactual continuation (evaluate.py). Right at its depth: stopped at the depth needed "
         f"{share['stopped_at_needed']}, ran past it {share['ran_past_needed']} "
         f"({f3(v['extra_iterations'])} extra iterations per token that has a depth needed), "
         f"a deeper exit would be wrong again {share['right_not_for_good']}. "
         f"Wrong at its depth: halted too early (right from a deeper depth on) {share['halted_too_early']}, "
         f"no deeper depth keeps it right {share['wrong_deeper_too']}. "
         f"Spearman rho of the depth run with the depth needed: {f3(v['spearman'])}.", ""]
    L += table(["depth needed", "tokens", "mean depth run", "token acc"],
               [[x["value"], x["tokens"], f3(x["mean_depth"]), f3(x["token_acc"])] for x in v["by_needed"]])
    return L


R2_ROWS = [("r2_full", "full (size linear)"), ("r2_static", "static features only"),
           ("r2_dynamic", "dynamic features only"), ("r2_position", "position in the answer only"),
           ("r2_categorical_n", "size n one-hot"),
           ("r2_categorical_gain", "gain of one-hot n (non-linear size effect)")]


def comparison(runs, labels):
    """Side by side, one column per CSV (e.g. early versus online)."""
    rs = [r for _, r in runs]
    L = ["## Side by side", ""]
    L += table([""] + labels,
               [["task"] + [r["task"] for r in rs], ["tokens"] + [r["rows"] for r in rs],
                ["mean depth"] + [f3(r["mean_depth"]) for r in rs],
                ["std depth"] + [f3(r["std_depth"]) for r in rs]]
               + [[f"R^2 {name}"] + [f3(r[key]) for r in rs] for key, name in R2_ROWS])
    features = list(dict.fromkeys(f for r in rs for f in r["features"]))
    for key, title in [("importance", "Share of explained variance (LMG)"),
                       ("spearman", "Spearman rho with depth")]:
        fmt = pct if key == "importance" else f3
        L += [f"### {title}", ""]
        L += table(["feature"] + labels, [[f] + [fmt(r[key].get(f, math.nan)) for r in rs] for f in features])
    return L


def plots(runs, labels, outdir):
    """Mean depth against each key feature, and exact match / depth against size."""
    plt = pyplot()
    if plt is None:
        return ["Plots skipped: matplotlib is not installed.", ""]
    outdir.mkdir(parents=True, exist_ok=True)
    features = list(dict.fromkeys(f for _, r in runs for f in r["depth_by_feature"]))
    cols = min(3, len(features))
    rows = -(-len(features) // cols)
    # a shared depth axis, so that a flat line looks flat next to a steep one
    fig, axes = plt.subplots(rows, cols, figsize=(4 * cols, 3 * rows), squeeze=False, sharey=True)
    for ax, f in zip(axes.flat, features):
        for (_, r), label in zip(runs, labels):
            if f in r["depth_by_feature"]:
                xs = r["depth_by_feature"][f]
                ax.plot([x["value"] for x in xs], [x["mean_depth"] for x in xs], "o-", ms=3, label=label)
        ax.set(xlabel=f, ylabel="mean depth")
    for ax in axes.flat[len(features):]:
        ax.set_visible(False)
    axes.flat[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(outdir / "depth_vs_features.png", dpi=100)
    plt.close(fig)

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.5))
    for (_, r), label in zip(runs, labels):
        n = np.array([x["n"] for x in r["by_size"]], dtype=float)
        ood = np.array([bool(x["ood"]) for x in r["by_size"]])
        for ax, key in zip(axes, ["exact_match", "mean_depth"]):
            v = np.array([math.nan if x[key] is None else x[key] for x in r["by_size"]], dtype=float)
            color = ax.plot(n, v, "-", label=label)[0].get_color()
            ax.plot(n[~ood], v[~ood], "o", color=color)
            ax.plot(n[ood], v[ood], "o", mfc="none", color=color)  # hollow: out of distribution
            ax.set(xlabel="size n", ylabel=key.replace("_", " "))
    axes[0].set_title("hollow markers: OOD sizes", fontsize=9)
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(outdir / "size.png", dpi=100)
    plt.close(fig)
    lines = ["## Figures", "", "![mean depth against features](depth_vs_features.png)", "",
             "![exact match and mean depth against size](size.png)", ""]
    if any(r["task"] == "lang" and "hops" in r["depth_by_feature"] for _, r in runs):
        plot_hops(plt, runs, labels, outdir / "hops.png")
        lines += ["![reference accuracy and mean depth against hops](hops.png)", ""]
    return lines


def pyplot():
    """matplotlib.pyplot drawing to files, or None: matplotlib is optional."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    return plt


def plot_hops(plt, runs, labels, path):
    """lang: references right and mean depth against the hops of their chase,
    the hops trained on shaded: does iterating longer resolve longer chains?"""
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.5))
    trained = []
    for (_, r), label in zip(runs, labels):
        xs = [x for x in r["depth_by_feature"].get("hops", []) if x["value"] >= 1]  # hops 0: not a reference
        if r["task"] != "lang" or not xs:
            continue
        trained.append(r["train_hops"])
        hops = [x["value"] for x in xs]
        axes[0].plot(hops, [x["token_acc"] for x in xs], "o-", ms=3, label=label)
        axes[1].plot(hops, [x["mean_depth"] for x in xs], "o-", ms=3, label=label)
    top = max(x["value"] for _, r in runs for x in r["depth_by_feature"].get("hops", []))
    axes[1].plot([1, top], [1, top], ":", color="grey", label="one iteration per hop")
    for ax, ylabel in zip(axes, ["references right", "mean depth"]):
        if trained and None not in trained:
            ax.axvspan(0.5, max(trained) + 0.5, color="grey", alpha=0.15, lw=0)
        ax.set(xlabel="hops", ylabel=ylabel)
    axes[0].set_title("shaded: the hops trained on", fontsize=9)
    axes[1].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


# ----------------------------------------------------------------------------
# small helpers


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("csv", nargs="+", help="per-token CSV(s) written by evaluate.py; a summary.json "
                   "beside a CSV supplies the accuracy-by-size table and the OOD marks")
    p.add_argument("--json", metavar="FILE", help='write every number to FILE: {"files": {path: {...}}}, '
                   "NaN written as null")
    p.add_argument("--plots", action="store_true", help="draw PNG figures beside the report, linked from "
                   "it (needs matplotlib; skipped with a message when it is not installed)")
    p.add_argument("--out", metavar="FILE", help="the Markdown report (default: report.md beside the first CSV)")
    p.add_argument("--sizes", metavar="LO-HI", help="analyse only tokens of examples with n in LO-HI "
                   "(e.g. the training sizes); the accuracy-by-size table keeps every size")
    args = p.parse_args(argv)
    if args.sizes is not None:
        try:
            lo, hi = (int(x) for x in args.sizes.split("-"))
        except ValueError:
            fail(f"--sizes {args.sizes!r}: expected a range like 4-8")
        args.sizes = (lo, hi)
    return args


def make_labels(runs):
    """'router stem' per CSV; the parent folder too when stems repeat (out/dfs-early/tokens.csv)."""
    paths = [Path(p) for p, _ in runs]
    unique = len({p.stem for p in paths}) == len(paths)
    return [f"{r['router']} {p.stem if unique else p.parent.name + '/' + p.stem}"
            for p, (_, r) in zip(paths, runs)]


def by_value(x, y, correct, needed=None):
    """Tokens, mean depth and token accuracy for every distinct value of x;
    given depth_needed, also its mean (over the tokens that have one) and the
    share of tokens halted too early (wrong, right from a deeper depth on)."""
    rows = []
    for v in np.unique(x):
        m = x == v
        acc = float(correct[m].mean()) if correct is not None else math.nan
        row = {"value": number(v), "tokens": int(m.sum()), "mean_depth": float(y[m].mean()), "token_acc": acc}
        if needed is not None and correct is not None:
            known = m & ~np.isnan(needed)
            row["mean_needed"] = float(needed[known].mean()) if known.any() else math.nan
            row["halted_too_early"] = float(halted_too_early(y[m], needed[m], correct[m]).mean())
        rows.append(row)
    return rows


def rankdata(x):
    """Ranks 1..n; tied values all get the average of the ranks they span."""
    order = np.argsort(x, kind="stable")
    xs = x[order]
    new = np.r_[True, xs[1:] != xs[:-1]]  # start of each group of equal values
    first = np.flatnonzero(new)
    count = np.diff(np.r_[first, len(x)])
    ranks = np.empty(len(x))
    ranks[order] = (first + (count + 1) / 2)[np.cumsum(new) - 1]
    return ranks


def corr(a, b):
    """Pearson correlation; NaN when either side is constant."""
    if np.ptp(a) == 0 or np.ptp(b) == 0:
        return math.nan
    a, b = a - a.mean(), b - b.mean()
    return float(a @ b / math.sqrt((a @ a) * (b @ b)))


def zscore(X):
    return (X - X.mean(0)) / X.std(0)


def percent(v):
    """v as percentages of its sum; NaN when the sum is ~0 (nothing to share)."""
    total = v.sum()
    return 100 * v / total if total > 1e-9 else np.full(len(v), math.nan)


def numeric(path, name, values, blank_ok=False):
    out = np.empty(len(values))
    for i, v in enumerate(values):
        try:
            out[i] = float({"True": 1, "False": 0}.get(v.strip(), v))  # is_hub may be written as a bool
        except ValueError:
            out[i] = math.inf
        if math.isinf(out[i]) or (math.isnan(out[i]) and not blank_ok):
            fail(f"{path}: data row {i + 1}, column '{name}': {v!r} is not a finite number")
    return out


def number(v):
    """An int when the value is integral (depth 3, not 3.0), for labels and JSON keys."""
    return int(v) if float(v).is_integer() else float(v)


def nan_to_none(x):
    if isinstance(x, dict):
        return {k: nan_to_none(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [nan_to_none(v) for v in x]
    if isinstance(x, (float, np.floating)):
        return float(x) if math.isfinite(x) else None
    if isinstance(x, np.integer):
        return int(x)
    return x


def f3(x):
    return "n/a" if x is None or not math.isfinite(x) else f"{x:.3f}"


def pct(x):
    return "n/a" if x is None or not math.isfinite(x) else f"{x:.1f}%"


def table(header, rows):
    return ["| " + " | ".join(map(str, header)) + " |", "|" + " --- |" * len(header)] + \
           ["| " + " | ".join(map(str, row)) + " |" for row in rows] + [""]


def read_json(path):
    with open(path) as f:
        return json.load(f)


def read_jsonl(path):
    """The rows of a JSON-lines file (train.py's log.jsonl); none if it is not there."""
    if not os.path.isfile(path):
        return []
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def write(path, text):
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    except OSError as e:
        fail(f"cannot write {path}: {e.strerror or e}")


def fail(message):
    print(f"error: {message}", file=sys.stderr)
    sys.exit(2)


if __name__ == "__main__":
    main()
