"""
Speed and quality benchmarks: the targets that tests must not time.

    python bench.py speed                       # training steps/s per router, alternating
    python bench.py data                        # examples/s of every task generator
    python bench.py check out/dfs-online        # a finished run against the quality bars

`speed` times training steps of every router on the same batches, in
alternating order, and reports medians and the ratio to router none: timings
on a shared CPU are noisy, so only same-run ratios are worth quoting.
`check` reads log.jsonl of a run made with train.py's defaults and checks the
bars of the project: >= 90% greedy exact-match on held-out examples of the
training sizes within 15 minutes, and for an adaptive router a mean depth
clearly below max_depth with at least 3 distinct depths and a standard
deviation of at least 0.5 (no collapse to one depth).
"""
import argparse
import json
import os
import random
import statistics
import sys
import time

import torch

import tasks
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
    args = p.parse_args(argv)
    if args.what == "speed":
        speed(args)
    elif args.what == "data":
        data_speed(args)
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
            out = models[name](idx, targets, prompt_targets=prompt)
            optims[name].zero_grad()
            out.loss.backward()
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


def check(run):
    path = os.path.join(run, "log.jsonl")
    if not os.path.isfile(path):
        print(f"error: no log.jsonl in {run}", file=sys.stderr)
        sys.exit(2)
    with open(path) as f:
        log = [json.loads(line) for line in f if line.strip()]
    with open(os.path.join(run, "config.json")) as f:
        config = json.load(f)
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


if __name__ == "__main__":
    main()
