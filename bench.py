"""
Speed and quality benchmarks: the targets that tests must not time.

    python bench.py speed                       # training steps/s per router and dtype, alternating
    python bench.py profile --task lang --chain-order reverse --hints on   # where a training step's time goes
    python bench.py data                        # examples/s of every task generator
    python bench.py check out/dfs-online        # a finished run against the quality bars
    python bench.py generate --ckpt out/dfs-early/ckpt.pt out/dfs-online/ckpt.pt   # halting's saving at inference

`speed` times training steps of every router on the same batches, in
alternating order, and reports medians and the ratio to router none: timings
on a shared CPU are noisy, so only same-run ratios are worth quoting.
`profile` splits train.py's own training step (any train.py flags) by part,
and puts the step's matmul FLOP rate beside this machine's (see `profile`).
`check` reads log.jsonl of a run made with train.py's defaults and checks the
bars of the project: >= 90% greedy exact-match on held-out examples of the
training sizes within 15 minutes, and for an adaptive router a mean depth
clearly below max_depth with at least 3 distinct depths and a standard
deviation of at least 0.5 (no collapse to one depth).
The accuracy-against-compute sweep is study.py's (any regime, `--seeds 0 --steps 2000`).
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
import statistics
import sys
import time

import torch

import analyze
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
    s.add_argument("--dtype", default="float32,bfloat16",
                   help="comma-separated train.py --dtype values, alternated (default: both)")
    f = sub.add_parser("profile", help="a training step's time by part, beside the machine's matmul rate",
                       description="Any further flags are train.py's: the run whose step is profiled "
                                   "(default: the main job, train.py --task dfs --router online).")
    f.add_argument("--rounds", type=int, default=10, help="steps timed, after two to warm up")
    d = sub.add_parser("data", help="examples per second of each task generator")
    d.add_argument("--num", type=int, default=5000)
    c = sub.add_parser("check", help="check a finished run against the quality bars")
    c.add_argument("run", help="the --out folder of a train.py run")
    g = sub.add_parser("generate", help="generation speed: routed against full depth and a fixed depth")
    g.add_argument("--ckpt", nargs="+", help="checkpoints of adaptive routers (default: train small "
                                             "early and online models on the spot)")
    g.add_argument("--quick", action="store_true", help="a tiny model and few prompts: proves the command works")
    g.add_argument("--rounds", type=int, default=15)
    g.add_argument("--batch-sizes", default="1,8,32")
    g.add_argument("--prompts", type=int, default=32, help="prompts, each batch size runs all of them")
    g.add_argument("--n", type=int, default=8, help="graph size of the prompts (dfs, topo)")
    g.add_argument("--json", default="bench.json", help="where to write the results")
    g.add_argument("--dtype", choices=train.DTYPES, default=None,
                   help="generation under train.py's autocast of this dtype (default: each "
                        "checkpoint's training dtype; the models trained on the spot: float32)")
    args, train_flags = p.parse_known_args(argv)
    if args.what == "profile":
        return profile(args, train.parse_args(train_flags))
    if train_flags:
        p.error(f"unrecognized arguments: {' '.join(train_flags)}")
    if args.what == "speed":
        if not set(args.dtype.split(",")) <= set(train.DTYPES):
            p.error(f"--dtype {args.dtype}: each of {', '.join(train.DTYPES)}")
        speed(args)
    elif args.what == "data":
        data_speed(args)
    elif args.what == "generate":
        generate_speed(args)
    else:
        sys.exit(0 if check(args.run) else 1)


def speed(args):
    """Training steps of every router and of an unshared stack, in every
    --dtype, on the same batches in alternating order (train.py's step:
    forward_and_loss, backward, clipping, AdamW): ms per step, tokens/s, the
    ratio to router none in the same dtype; then this machine's matmul rate in
    the same run, float32 and bf16, and the step's (its matmul FLOPs per
    second) beside it."""
    dtypes = args.dtype.split(",")
    run = train.parse_args(["--task", args.task, "--max-depth", str(args.max_depth),
                            "--batch-size", str(args.batch_size)])
    device, models = torch.device("cpu"), speed_models(run, dtypes)
    times, rng, tokens = {key: [] for key in models}, random.Random(0), []
    for r in range(args.rounds + 2):  # the first two rounds warm up
        batch = train.training_batch(max(run.halt_warmup, run.curriculum) + r, rng, run, device)
        for key in (list(models) if r % 2 == 0 else list(reversed(models))):
            seconds = timed(training_step, *models[key], batch, run, key[1])
            if r >= 2:
                times[key].append(seconds)
        if r >= 2:
            tokens.append(batch[0].numel())
    print(f"{args.task}, max_depth {args.max_depth}, batch {args.batch_size}, "
          f"{torch.get_num_threads()} threads, median of {args.rounds} steps")
    print(f"{'model':>10} {'dtype':>9} {'ms/step':>8} {'tokens/s':>9} {'vs none':>8}")
    for (name, dtype), ts in times.items():
        step = statistics.median(ts)
        print(f"{name:>10} {dtype:>9} {1000 * step:>8.0f} {statistics.median(tokens) / step:>9.0f} "
              f"{step / statistics.median(times['none', dtype]):>8.2f}")
    rates = {dtype: matmul_rate(dtype=getattr(torch, dtype)) for dtype in train.DTYPES}
    print("a 1024^3 matmul: " + ", ".join(f"{d} {rate / 1e9:.1f} GFLOP/s" for d, rate in rates.items()))
    run.dtype = dtypes[0]
    flops = step_flops(models["online", dtypes[0]][0], run, device)
    step = statistics.median(times["online", dtypes[0]])
    print(f"the online step ({dtypes[0]}): {flops / 1e9:.1f} GFLOP of matmuls, {flops / step / 1e9:.1f} GFLOP/s, "
          f"{flops / step / rates[dtypes[0]]:.0%} of the matmul's")


def speed_models(run, dtypes):
    """{(name, dtype): (model, optimizer)}: every router and an unshared stack
    of max_depth blocks, the same initial weights in every dtype."""
    models = {}
    for dtype in dtypes:
        for name in (*ROUTERS, "unshared"):
            torch.manual_seed(0)
            cfg = dataclasses.replace(train.model_config(run), router="none" if name == "unshared" else name,
                                      share=name != "unshared")
            model = ANIRA(cfg)
            models[name, dtype] = model, torch.optim.AdamW(model.parameters(), lr=1e-3)
    return models


def training_step(model, optimizer, batch, run, dtype):
    """train.py's step: the forward and loss under the dtype's autocast,
    backward, gradient clipping, AdamW."""
    with train.autocast(batch[0].device, dtype):
        loss, _ = train.forward_and_loss(model, batch, run)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), run.grad_clip)
    optimizer.step()


def profile(args, run):
    """Where a training step of `run` (train.py's parsed flags) goes: its
    batch (data), the forward split by module (prelude; the shared block at
    every iteration but the last, whose outputs go through block.residual; the
    router; the head, at every exit), what is left of the forward
    (embeddings, the counterfactual's keys and values, the last iteration at
    the outputs the loss reads, halting), the loss, backward, the optimizer;
    medians of --rounds steps, on the CPU's clock (a GPU's would need
    synchronising).
    Then the step's matmul FLOPs (torch's FlopCounterMode, forward and
    backward) per second against a 1024^3 float32 matmul's, measured in the
    same run, and the held-out evaluation's share of a run of run.max_iters."""
    torch.manual_seed(0)
    device, run.dtype = torch.device("cpu"), run.dtype or "float32"
    model = ANIRA(train.model_config(run))
    optimizer = torch.optim.AdamW(model.parameters(), lr=run.lr, weight_decay=run.weight_decay, betas=(0.9, 0.95))
    parts = {"prelude": list(model.prelude), "block": list(model.core), "head": [model.head]}
    parts["router"] = [model.router] if run.router != "none" else []
    clock = module_clock(parts)
    rng, rows = random.Random(0), []
    for r in range(args.rounds + 2):  # two to warm up
        step = run.halt_warmup + r  # routing on, past the curriculum's small examples if any
        t = [time.perf_counter()]
        idx, targets, prompt, exits = train.training_batch(max(step, run.curriculum), rng, run, device)
        t.append(time.perf_counter())
        clock.clear()
        with train.autocast(device, run.dtype):
            out = model(idx, adaptive=targets != -1, counterfactual=True,
                        outputs=train.read_by_loss(targets, prompt))
            t.append(time.perf_counter())
            loss, _ = model.loss(out, targets, run.ponder, prompt, exits)
        t.append(time.perf_counter())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        t.append(time.perf_counter())
        torch.nn.utils.clip_grad_norm_(model.parameters(), run.grad_clip)
        optimizer.step()
        t.append(time.perf_counter())
        forward = dict(clock)
        forward["forward, the rest"] = t[2] - t[1] - sum(forward.values())
        rows.append({"data": t[1] - t[0], **forward, "loss": t[3] - t[2], "backward": t[4] - t[3],
                     "optimizer": t[5] - t[4], "step": t[5] - t[0], "tokens": idx.numel()})
    rows = rows[2:]
    step = statistics.median(r["step"] for r in rows)
    print(f"{run.task} / {run.router}, max_depth {run.max_depth}, batch {run.batch_size}, {run.dtype}, "
          f"{torch.get_num_threads()} threads: median of {args.rounds} steps, {1000 * step:.0f} ms, "
          f"{statistics.median(r['tokens'] for r in rows) / step:.0f} tokens/s")
    print(f"{'part':>18} {'ms':>7} {'share':>6}")
    for name in rows[0]:
        if name not in ("step", "tokens"):
            ms = statistics.median(r[name] for r in rows)
            print(f"{name:>18} {1000 * ms:>7.1f} {ms / step:>6.1%}")
    flops = step_flops(model, run, device)
    rate = matmul_rate()
    print(f"matmul FLOPs of a step {flops / 1e9:.1f} G: {flops / step / 1e9:.1f} GFLOP/s, "
          f"{flops / step / rate:.0%} of a 1024^3 float32 matmul's {rate / 1e9:.1f} GFLOP/s")
    held_out = tasks.sample_examples(run.task, random.Random(1), run.size_range, run.eval_num,
                                     **train.task_params(vars(run)))
    evaluation = timed(train.evaluate_held_out, model, held_out, run, device)
    run_seconds = run.max_iters * step + (run.max_iters // run.eval_every + 1) * evaluation
    print(f"held-out evaluation {evaluation:.2f} s, every {run.eval_every} steps: "
          f"{(run.max_iters // run.eval_every + 1) * evaluation / run_seconds:.0%} of a {run.max_iters}-step run")


def module_clock(parts):
    """{part: seconds} spent in the forward of the modules of each part since
    the last clear(), by forward hooks (on the CPU, whose ops run as called)."""
    clock, started = {}, {}
    for name, modules in parts.items():
        for m in modules:
            m.register_forward_pre_hook(lambda mod, _: started.__setitem__(mod, time.perf_counter()))
            m.register_forward_hook(lambda mod, _, __, name=name: clock.__setitem__(
                name, clock.get(name, 0.0) + time.perf_counter() - started[mod]))
    return clock


def step_flops(model, run, device):
    """Matmul FLOPs of one training step, forward and backward, in run.dtype."""
    from torch.utils.flop_counter import FlopCounterMode
    batch = train.training_batch(max(run.halt_warmup, run.curriculum), random.Random(0), run, device)
    with FlopCounterMode(display=False) as counter, train.autocast(device, run.dtype):
        train.forward_and_loss(model, batch, run)[0].backward()
    model.zero_grad(set_to_none=True)
    return counter.get_total_flops()


def matmul_rate(n=1024, rounds=20, dtype=torch.float32):
    """FLOP/s of an n x n matmul on this machine now (median)."""
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    a @ b
    return 2 * n ** 3 / statistics.median(timed(torch.matmul, a, b) for _ in range(rounds))


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
        task, dtype = config["task"], args.dtype or config["dtype"]
        prompts = equal_length_prompts(config, args.n, args.prompts)
        n_new = len(prompts.target[0])
        routed, full = model, twin(model, halt_threshold=2.0)
        depths = generate_all(routed, prompts.ids, max(batch_sizes), n_new, dtype)[1][:, 1:].float()
        D, n_pre = model.cfg.max_depth, model.cfg.n_prelude
        ideal = ((n_pre + depths) / (n_pre + D)).mean().item()
        fixed_depth = math.ceil(depths.mean().item())
        variants = {"routed": routed, "full": full, "fixed": twin(model, router="none", max_depth=fixed_depth),
                    "depth1": twin(model, router="none", max_depth=1)}
        print(f"\n{name}: {task}, n={args.n}, {len(prompts.ids)} prompts of {prompts.ids.shape[1]} tokens, "
              f"{n_new} new tokens; decoding mean depth {depths.mean():.2f} of {D}; "
              f"fixed depth {fixed_depth}; {dtype}")
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
                    prompt = timed(generate_all, variants[v], prompts.ids, B, 1, dtype)
                    total = timed(generate_all, variants[v], prompts.ids, B, n_new, dtype)
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
        results.append(dict(model=name, task=task, router=model.cfg.router, max_depth=D, dtype=dtype,
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


def generate_all(model, prompts, batch_size, n_new, dtype="float32"):
    """Greedy generation of n_new tokens for every prompt, batch_size at a time."""
    with train.autocast(prompts.device, dtype):
        out = [model.generate(prompts[i:i + batch_size], n_new) for i in range(0, len(prompts), batch_size)]
    return torch.cat([o[0] for o in out]), torch.cat([o[1] for o in out])


def check(run):
    path = os.path.join(run, "log.jsonl")
    if not os.path.isfile(path):
        print(f"error: no log.jsonl in {run}", file=sys.stderr)
        sys.exit(2)
    log = analyze.read_jsonl(path)
    config = analyze.read_json(os.path.join(run, "config.json"))
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
    try:
        main()
    except KeyboardInterrupt:  # Ctrl-C outside a sweep's runs (e.g. a second one while they save)
        print("interrupted", file=sys.stderr)
        sys.exit(130)
