"""
Speed and quality benchmarks: the targets that tests must not time.

    python bench.py speed                       # training steps/s per router, alternating
    python bench.py data                        # examples/s of every task generator
    python bench.py check out/dfs-online        # a finished run against the quality bars
    python bench.py tradeoff --task lang --chain-order reverse   # accuracy against compute
    python bench.py generate --ckpt out/dfs-early/ckpt.pt out/dfs-online/ckpt.pt   # halting's saving at inference

`speed` times training steps of every router on the same batches, in
alternating order, and reports medians and the ratio to router none: timings
on a shared CPU are noisy, so only same-run ratios are worth quoting.
`check` reads log.jsonl of a run made with train.py's defaults and checks the
bars of the project: >= 90% greedy exact-match on held-out examples of the
training sizes within 15 minutes, and for an adaptive router a mean depth
clearly below max_depth with at least 3 distinct depths and a standard
deviation of at least 0.5 (no collapse to one depth).
`tradeoff` is the accuracy/compute curve by which ACT, PonderNet and
Mixture-of-Recursions judge a router: fixed-depth models (router none) at
every depth 1..max_depth and both adaptive routers at several --ponder, all
trained for the same number of steps, each evaluated on the training sizes
and on larger ones. A router pays if it reaches the best fixed depth's
accuracy with fewer iterations per token.
`generate` times greedy generation of trained adaptive models (see
`generate_speed`): routed against the same weights forced to max_depth, and
against a fixed depth equal to the routed mean rounded up.
"""
import argparse
import dataclasses
import json
import math
import os
import random
import signal
import statistics
import subprocess
import sys
import threading
import time
from concurrent.futures import CancelledError, ThreadPoolExecutor, as_completed
from functools import partial

import torch

import evaluate
import tasks
import train
from model import ROUTERS, ANIRA, ModelConfig


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="what", required=True)
    s = sub.add_parser("speed", help="training steps per second of each router")
    s.add_argument("--task", default="dfs")
    s.add_argument("--max-depth", type=int, default=4)
    s.add_argument("--batch-size", type=int, default=64)
    s.add_argument("--rounds", type=int, default=15)
    d = sub.add_parser("data", help="examples per second of each task generator")
    d.add_argument("--num", type=int, default=5000)
    c = sub.add_parser("check", help="check a finished run against the quality bars")
    c.add_argument("run", help="the --out folder of a train.py run")
    t = sub.add_parser("tradeoff", help="exact-match against mean depth: fixed depths and routers",
                       description="Train router none at every depth 1..max_depth and early and online "
                                   "at every --ponders value, the same steps each, then evaluate each "
                                   "on the training sizes and on --ood-sizes. Writes DIR/tradeoff.json "
                                   "(and DIR/tradeoff.png with matplotlib); every run keeps its folder "
                                   "in DIR, and a finished one is not trained again (Ctrl-C, then the "
                                   "same command, resumes).")
    t.add_argument("--task", default="dfs", choices=tasks.TASKS)
    t.add_argument("--chain-order", default="forward", choices=tasks.CHAIN_ORDERS, help="lang's regime")
    t.add_argument("--hints", choices=("on", "off"), default="off",
                   help="lang: train every exit on its hop of the chase (train.py --hints)")
    t.add_argument("--sizes", default="4-8", help="training sizes")
    t.add_argument("--ood-to", type=int, default=None,
                   help="evaluate up to this size; those above --sizes are OOD (default: two above)")
    t.add_argument("--max-depth", type=int, default=4)
    t.add_argument("--ponders", default="0.002,0.01,0.03", help="comma-separated --ponder values")
    t.add_argument("--steps", type=int, default=2000, help="training steps of every point")
    t.add_argument("--seed", type=int, default=0, help="train.py --seed of every point")
    t.add_argument("--num", type=int, default=100, help="evaluation examples per size")
    t.add_argument("--jobs", type=int, default=2, help="runs at once, one thread each when more than one")
    t.add_argument("--quick", action="store_true", help="a tiny model, a few steps: proves the command works")
    t.add_argument("--out", default=None, help="folder (default out/tradeoff-<task>[-reverse][-hints])")
    g = sub.add_parser("generate", help="generation speed: routed against full depth and a fixed depth")
    g.add_argument("--ckpt", nargs="+", help="checkpoints of adaptive routers (default: train small "
                                             "early and online models on the spot)")
    g.add_argument("--quick", action="store_true", help="a tiny model and few prompts: proves the command works")
    g.add_argument("--rounds", type=int, default=15)
    g.add_argument("--batch-sizes", default="1,8,32")
    g.add_argument("--prompts", type=int, default=32, help="prompts, each batch size runs all of them")
    g.add_argument("--n", type=int, default=8, help="graph size of the prompts (dfs, topo)")
    g.add_argument("--json", default="bench.json", help="where to write the results")
    args = p.parse_args(argv)
    if args.what == "speed":
        speed(args)
    elif args.what == "data":
        data_speed(args)
    elif args.what == "tradeoff":
        tradeoff(args)
    elif args.what == "generate":
        generate_speed(args)
    else:
        sys.exit(0 if check(args.run) else 1)


def speed(args):
    torch.manual_seed(0)
    variants = {r: ModelConfig(vocab_size=len(tasks.VOCAB), router=r, max_depth=args.max_depth)
                for r in ROUTERS}
    variants["unshared"] = ModelConfig(vocab_size=len(tasks.VOCAB), router="none",
                                       max_depth=args.max_depth, share=False)
    models = {name: ANIRA(cfg) for name, cfg in variants.items()}
    optims = {name: torch.optim.AdamW(m.parameters(), lr=1e-3) for name, m in models.items()}
    rng = random.Random(0)
    times = {name: [] for name in models}
    for r in range(args.rounds + 2):  # the first two rounds warm up
        n = rng.randint(*tasks.DEFAULT_SIZES[args.task])  # one size per batch, as in train.py
        idx, targets, _ = tasks.make_batch(tasks.sample_examples(args.task, rng, (n, n), args.batch_size))
        prompt = torch.from_numpy(tasks.prompt_targets(idx, targets)) if tasks.PROMPT_LOSS[args.task] else None
        idx, targets = torch.from_numpy(idx), torch.from_numpy(targets)
        order = list(models) if r % 2 == 0 else list(reversed(models))
        for name in order:
            t = time.perf_counter()
            out = models[name](idx, adaptive=targets != -1, counterfactual=True)
            loss, _ = models[name].loss(out, targets, prompt_targets=prompt)
            optims[name].zero_grad()
            loss.backward()
            optims[name].step()
            if r >= 2:
                times[name].append(time.perf_counter() - t)
    base = statistics.median(times["none"])
    print(f"{args.task}, max_depth {args.max_depth}, batch {args.batch_size}, "
          f"{torch.get_num_threads()} threads, median of {args.rounds} steps")
    print(f"{'model':>10} {'ms/step':>8} {'vs none':>8}")
    for name, ts in times.items():
        med = statistics.median(ts)
        print(f"{name:>10} {1000 * med:>8.0f} {med / base:>8.2f}")


def data_speed(args):
    for task in tasks.TASKS:
        for n in (tasks.DEFAULT_SIZES[task][1], 16):
            rng = random.Random(0)
            t = time.perf_counter()
            for _ in range(args.num):
                tasks.make_example(task, rng, n)
            print(f"{task:>5} n={n:<3} {args.num / (time.perf_counter() - t):>9.0f} examples/s")


def generate_speed(args):
    """Greedy generation, the routed model against the same weights forced to
    max_depth (a halting threshold above 1: no hazard passes it), over the same
    prompts, alternating, medians of --rounds. The prompt runs at full depth in
    both modes (only its last token is routed), so it is timed on its own
    (generate with one new token) and taken off both to judge decoding:

      ideal            blocks run / blocks at full depth while decoding, prelude
                       included: mean of (n_prelude + d) / (n_prelude + max_depth)
      skip efficiency  (1 - measured time ratio) / (1 - ideal); 1 means every
                       skipped block saved its full share of the time.

    Also the same weights as a fixed-depth model (router none) whose depth is
    the routed mean depth rounded up: the cheapest fixed alternative. And, from
    that model against the same at depth 1, the time one more iteration adds
    to a decoding step (`iter us`): at batch 1 it is all per-iteration
    overhead; only what it gains with the batch is work that skipping the
    halted rows can save."""
    if args.quick:
        args.rounds, args.batch_sizes, args.prompts = 1, "1,4", 4
    batch_sizes = [int(b) for b in args.batch_sizes.split(",")]
    if args.prompts % max(batch_sizes):
        train.fail(f"--prompts {args.prompts} must be a multiple of every batch size")
    models = [load_or_train(path, args.quick) for path in args.ckpt] if args.ckpt else \
        [load_or_train(router, args.quick) for router in ("early", "online")]
    print(f"{torch.get_num_threads()} threads, load average {os.getloadavg()[0]:.2f}, "
          f"medians of {args.rounds} rounds (x batch / 8 from batch 16)")
    results = []
    for name, config, model in models:
        task = config["task"]
        prompts = equal_length_prompts(config, args.n, args.prompts)
        n_new = len(prompts.target[0])
        routed, full = model, twin(model, halt_threshold=2.0)
        depths = generate_all(routed, prompts.ids, max(batch_sizes), n_new)[1][:, 1:].float()
        D, n_pre = model.cfg.max_depth, model.cfg.n_prelude
        ideal = ((n_pre + depths) / (n_pre + D)).mean().item()
        fixed_depth = math.ceil(depths.mean().item())
        variants = {"routed": routed, "full": full, "fixed": twin(model, router="none", max_depth=fixed_depth),
                    "depth1": twin(model, router="none", max_depth=1)}
        print(f"\n{name}: {task}, n={args.n}, {len(prompts.ids)} prompts of {prompts.ids.shape[1]} tokens, "
              f"{n_new} new tokens; decoding mean depth {depths.mean():.2f} of {D}; "
              f"fixed depth {fixed_depth}")
        print(f"{'batch':>5} {'tok/s routed':>12} {'full':>7} {'fixed':>7} {'prompt share':>12} "
              f"{'decode ratio':>12} {'ideal':>6} {'skip eff':>8} {'end to end':>10} {'iter us':>7}")
        rows = []
        for B in batch_sizes:
            # Per round and variant, the prompt alone then the whole generation, back to
            # back: decoding is their difference. The ratios are medians of each round's
            # ratio, so that a slow spell of the machine cancels out. A large batch
            # runs few generate() calls, so it gets more rounds.
            t = {v: {"prompt": [], "total": [], "decode": []} for v in variants}
            rounds = args.rounds * max(1, B // 8)
            for r in range(rounds + 1):  # round 0 warms up
                order = list(variants) if r % 2 == 0 else list(reversed(variants))
                for v in order:
                    prompt = timed(generate_all, variants[v], prompts.ids, B, 1)
                    total = timed(generate_all, variants[v], prompts.ids, B, n_new)
                    if r:
                        t[v]["prompt"].append(prompt)
                        t[v]["total"].append(total)
                        t[v]["decode"].append(total - prompt)
            med = {v: {what: statistics.median(ts) for what, ts in t[v].items()} for v in variants}
            decode = median_ratio(t["routed"]["decode"], t["full"]["decode"])
            steps = len(prompts.ids) // B * (n_new - 1)  # decoding steps per round
            iteration = (med["fixed"]["decode"] - med["depth1"]["decode"]) / steps / (fixed_depth - 1) \
                if fixed_depth > 1 else None
            row = dict(batch=B, rounds=rounds, iteration_seconds=iteration,
                       tokens_per_s={v: len(prompts.ids) * n_new / med[v]["total"] for v in variants},
                       prompt_share=median_ratio(t["full"]["prompt"], t["full"]["total"]),
                       decode_ratio=decode, ideal=ideal,
                       skip_efficiency=(1 - decode) / (1 - ideal) if ideal < 1 else None,  # nothing skipped
                       end_to_end_ratio=median_ratio(t["routed"]["total"], t["full"]["total"]), seconds=med)
            rows.append(row)
            tps = row["tokens_per_s"]
            print(f"{B:>5} {tps['routed']:>12.0f} {tps['full']:>7.0f} {tps['fixed']:>7.0f} "
                  f"{row['prompt_share']:>12.2f} {row['decode_ratio']:>12.2f} {ideal:>6.2f} "
                  f"{fmt(row['skip_efficiency']):>8} {row['end_to_end_ratio']:>10.2f} "
                  f"{'-' if iteration is None else f'{1e6 * iteration:.0f}':>7}")
        results.append(dict(model=name, task=task, router=model.cfg.router, max_depth=D,
                            decode_mean_depth=depths.mean().item(), fixed_depth=fixed_depth, rows=rows))
    report = dict(threads=torch.get_num_threads(), load_average=os.getloadavg()[0], rounds=args.rounds,
                  prompts=args.prompts, n=args.n, quick=args.quick, models=results)
    with open(args.json, "w") as f:
        json.dump(report, f, indent=2)
    print(f"\nwrote {args.json}")


def median_ratio(a, b):
    """The median over rounds of a[r] / b[r]."""
    return statistics.median(x / y for x, y in zip(a, b))


def fmt(x):
    return "-" if x is None else f"{x:.2f}"


def load_or_train(source, quick):
    """(name, training config, model) from a checkpoint path, or a small model of router
    `source` trained on the spot on dfs (--quick: a tiny one, a few steps)."""
    if source in ROUTERS:
        out = os.path.join("out", "bench", f"{'quick' if quick else 'small'}-{source}")
        iters = 40 if quick else 250
        steps = ["--halt-warmup", "10", "--eval-every", "40", "--eval-num", "16", "--warmup", "5",
                 "--d-model", "32", "--n-heads", "2", "--ponder", "0.5"] if quick else \
                ["--halt-warmup", "50", "--ponder", "0.03", "--eval-every", "125", "--eval-num", "64"]
        ckpt_path = os.path.join(out, "ckpt.pt")
        started = os.path.isfile(ckpt_path)
        if not started or train.load_checkpoint(ckpt_path)["step"] < iters:  # none yet, or stopped by Ctrl-C
            print(f"training a small {source} model on the spot in {out}")
            train.main(["--task", "dfs", "--router", source, "--out", out, "--max-iters", str(iters), *steps]
                       + (["--resume"] if started else []))
            if train.load_checkpoint(ckpt_path)["step"] < iters:  # train.py saved and stopped on Ctrl-C
                raise KeyboardInterrupt
        source = ckpt_path
    ckpt = train.load_checkpoint(source)
    if ckpt["model_config"]["router"] == "none":
        train.fail(f"{source}: router none has no halting to measure")
    model = ANIRA(ModelConfig(**ckpt["model_config"]))
    model.load_state_dict(ckpt["model"])
    return source, ckpt["config"], model.eval()


def twin(model, **changes):
    """The same weights under another config: a halting threshold, or router
    none at a smaller max_depth (the first depth embeddings, no router)."""
    cfg = dataclasses.replace(model.cfg, **changes)
    other = ANIRA(cfg)
    state = {k: v for k, v in model.state_dict().items() if k in other.state_dict()}
    state["depth_embed"] = state["depth_embed"][:cfg.max_depth]
    other.load_state_dict(state)
    return other.eval()


def equal_length_prompts(config, n, num):
    """`num` prompts of size n and of one length (generate() takes a batch of
    equal lengths), drawn as the checkpoint's training config draws them (lang:
    its chain order): the most common length among fresh examples."""
    rng = random.Random(30_000)
    params = train.task_params(config)
    pool = [tasks.make_example(config["task"], rng, n, **params) for _ in range(max(1000, 50 * num))]
    length = statistics.mode(len(ex.prompt) for ex in pool)
    chosen = [ex for ex in pool if len(ex.prompt) == length][:num]
    ids = torch.tensor([tasks.encode(ex.prompt) for ex in chosen])
    return argparse.Namespace(ids=ids, target=[ex.target for ex in chosen])


def timed(f, *args):
    start = time.perf_counter()
    f(*args)
    return time.perf_counter() - start


def generate_all(model, prompts, batch_size, n_new):
    """Greedy generation of n_new tokens for every prompt, batch_size at a time."""
    out = [model.generate(prompts[i:i + batch_size], n_new) for i in range(0, len(prompts), batch_size)]
    return torch.cat([o[0] for o in out]), torch.cat([o[1] for o in out])


def check(run):
    path = os.path.join(run, "log.jsonl")
    if not os.path.isfile(path):
        print(f"error: no log.jsonl in {run}", file=sys.stderr)
        sys.exit(2)
    with open(path) as f:
        log = [json.loads(line) for line in f if line.strip()]
    config = read_json(os.path.join(run, "config.json"))
    last = log[-1]
    bars = [("exact-match >= 0.90", last["exact_match"] >= 0.90, last["exact_match"]),
            ("within 15 minutes", last["minutes"] <= 15, last["minutes"])]
    if config["router"] != "none":
        bars += [("mean depth <= 0.75 * max_depth", last["mean_depth"] <= 0.75 * config["max_depth"],
                  last["mean_depth"]),
                 ("at least 3 distinct depths", last["distinct_depths"] >= 3, last["distinct_depths"]),
                 ("depth std >= 0.5", last["std_depth"] >= 0.5, last["std_depth"])]
    for name, ok, value in bars:
        print(f"{'PASS' if ok else 'FAIL'}  {name:<32} measured {value}")
    return all(ok for _, ok, _ in bars)



# -----------------------------------------------------------------------------
# the trade-off sweep: not a timing benchmark but a runner of train.py and
# evaluate.py over fixed depths and ponders (one process per point)

def tradeoff(args):
    lo, hi = train.parse_size_range(args.sizes, args.task)
    ood_to = args.ood_to or min(hi + 2, tasks.max_size(args.task))
    try:
        ponders = [float(x) for x in args.ponders.split(",")]
        if min(ponders) < 0 or min(args.max_depth, args.steps, args.jobs, args.num) < 1 or ood_to <= hi:
            raise ValueError
        tasks.check_size(args.task, ood_to)
    except ValueError:
        train.fail("--ponders takes numbers >= 0 like 0.002,0.01; --max-depth, --steps, --jobs and --num "
                   "are at least 1; --ood-to is above --sizes and within what the task can label")
    if args.hints == "on" and args.task != "lang":
        train.fail("--hints: only lang's chases have intermediate steps to supervise")
    D = 2 if args.quick else args.max_depth
    # longest runs first (the adaptive routers, then the deepest fixed depths), so
    # that the last ones to finish are short and no core sits idle at the end
    points = [(router, D, ponder) for router in ("early", "online") for ponder in ponders]
    points += [("none", d, None) for d in range(D, 0, -1)]
    out = args.out or os.path.join("out", f"tradeoff-{args.task}"
                                   + ("-reverse" if args.chain_order == "reverse" else "")
                                   + ("-hints" if args.hints == "on" else "")
                                   + ("-quick" if args.quick else ""))
    os.makedirs(out, exist_ok=True)
    steps = 6 if args.quick else args.steps
    train_flags = ["--task", args.task, "--sizes", args.sizes, "--chain-order", args.chain_order,
                   "--hints", args.hints, "--max-iters", str(steps), "--seed", str(args.seed)]
    eval_flags = ["--sizes", f"{lo}-{ood_to}", "--num", "3" if args.quick else str(args.num)]
    if args.quick:  # seconds per point: a tiny model
        train_flags += ["--eval-every", "3", "--eval-num", "8", "--halt-warmup", "3", "--warmup", "2",
                        "--d-model", "32"]
    env = dict(os.environ, **({"OMP_NUM_THREADS": "1"} if args.jobs > 1 else {}))
    print(f"{len(points)} runs in {out}, {args.jobs} at a time"
          + (" with one thread each" if args.jobs > 1 else ""), flush=True)
    rows = run_in_parallel([partial(tradeoff_point, point, out, steps, train_flags, eval_flags, env)
                            for point in points], args.jobs,
                           lambda row: f"{row['run']}: exact-match {row['exact_match']} (OOD "
                                       f"{row['exact_match_ood']}) at mean depth {row['mean_depth']}, "
                                       f"{row['minutes']} min")
    rows.sort(key=lambda r: (("none", "early", "online").index(r["router"]), r["max_depth"], r["ponder"] or 0))
    with open(os.path.join(out, "tradeoff.json"), "w") as f:
        json.dump({"task": args.task, "chain_order": args.chain_order, "hints": args.hints == "on",
                   "sizes": f"{lo}-{hi}", "ood_sizes": f"{hi + 1}-{ood_to}", "steps": steps, "seed": args.seed,
                   "jobs": args.jobs, "rows": rows}, f, indent=2)
    print(tradeoff_table(rows))
    title = args.task + (f" {args.chain_order}" if args.task == "lang" else "")
    title += ", hints" if args.hints == "on" else ""
    plotted = tradeoff_plot(rows, os.path.join(out, "tradeoff.png"), title)
    print(f"wrote {os.path.join(out, 'tradeoff.json')}" + (" and tradeoff.png" if plotted else ""))


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


def tradeoff_point(point, out, steps, train_flags, eval_flags, env):
    """Train one point of the curve (unless its run has finished: a sweep
    stopped by Ctrl-C resumes), evaluate it in and out of distribution, and
    return its row of tradeoff.json."""
    router, depth, ponder = point
    name = f"{router}-d{depth}" if ponder is None else f"{router}-p{ponder:g}"
    run = os.path.join(out, name)
    flags = train_flags + ["--router", router, "--max-depth", str(depth), "--out", run]
    if ponder is not None:
        flags += ["--ponder", str(ponder)]
    log = read_jsonl(os.path.join(run, "log.jsonl"))
    if not log or log[-1]["step"] < steps:
        resume = ["--resume"] if os.path.isfile(os.path.join(run, "ckpt.pt")) else []
        run_logged(script("train.py") + flags + resume, run + ".train.log", env)
        log = read_jsonl(os.path.join(run, "log.jsonl"))
        if not log or log[-1]["step"] < steps:  # train.py saved and stopped on Ctrl-C: evaluate no half-run
            print(f"{run}: stopped at step {log[-1]['step'] if log else 0} of {steps}, not evaluated",
                  file=sys.stderr)
            raise KeyboardInterrupt
    evaluate_once(os.path.join(run, "ckpt.pt"), eval_flags + ["--out", run], run + ".eval.log", env)
    summary = read_json(os.path.join(run, "summary.json"))
    inside, outside = summary["in_distribution"], summary["ood"]
    row = {"router": router, "max_depth": depth, "ponder": ponder, "mean_depth": inside["mean_depth"],
           "exact_match": inside["exact_match"], "exact_match_ood": outside["exact_match"],
           "minutes": log[-1]["minutes"], "mean_depth_ood": outside["mean_depth"], "run": name}
    if "reference_acc" in inside:  # lang: the share of values resolved through their chains
        row.update(reference_acc=inside["reference_acc"], reference_acc_ood=outside["reference_acc"])
    return row


def evaluate_once(ckpt, flags, log_path, env):
    """evaluate.py on ckpt, unless its summary.json was written after the
    checkpoint by the same arguments: a resumed sweep re-evaluates nothing."""
    args = evaluate.parse_args(["--ckpt", ckpt] + flags)
    summary_path = os.path.join(args.out or os.path.dirname(os.path.abspath(ckpt)), "summary.json")
    if os.path.isfile(summary_path) and os.path.getmtime(summary_path) >= os.path.getmtime(ckpt):
        if read_json(summary_path).get("args") == json.loads(json.dumps(vars(args))):
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


def read_json(path):
    with open(path) as f:
        return json.load(f)


def read_jsonl(path):
    if not os.path.isfile(path):
        return []
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def tradeoff_table(rows):
    lines = ["| router | max_depth | ponder | mean depth | exact-match | exact-match OOD | minutes |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        lines.append(f"| {r['router']} | {r['max_depth']} | {'' if r['ponder'] is None else r['ponder']} | "
                     f"{r['mean_depth']:.2f} | {r['exact_match']:.3f} | {r['exact_match_ood']:.3f} | "
                     f"{r['minutes']} |")
    return "\n".join(lines)


def tradeoff_plot(rows, path, title):
    """Exact-match against mean depth, in distribution and OOD, when matplotlib is there."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    fig, axes = plt.subplots(1, 2, figsize=(10, 4), sharex=True)
    for ax, (key, depth_key, label) in zip(axes, (("exact_match", "mean_depth", "training sizes"),
                                                  ("exact_match_ood", "mean_depth_ood", "larger sizes (OOD)"))):
        for router, marker, colour in (("none", "o", "k"), ("early", "s", "b"), ("online", "^", "r")):
            pts = [r for r in rows if r["router"] == router]
            ax.plot([r[depth_key] for r in pts], [r[key] for r in pts], marker=marker, color=colour,
                    ls="-" if router == "none" else "", label=router if router != "none" else "fixed depth")
            for r in pts:
                ax.annotate(f"d={r['max_depth']}" if router == "none" else f"{r['ponder']:g}",
                            (r[depth_key], r[key]), textcoords="offset points", xytext=(4, 4), fontsize=7)
        ax.set(xlabel="mean iterations per target token", ylabel="exact-match", title=f"{title}: {label}")
        ax.grid(alpha=0.3)
    axes[0].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:  # Ctrl-C outside a sweep's runs (e.g. a second one while they save)
        print("interrupted", file=sys.stderr)
        sys.exit(130)
