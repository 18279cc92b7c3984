"""
Evaluate a trained checkpoint by input size, in and out of distribution, and
record the depth every target token really ran.

    python evaluate.py --ckpt out/dfs-online/ckpt.pt --sizes 4-16 --num 200
    python evaluate.py --ckpt out/dfs-online/ckpt.pt --show 3   # see where it thinks harder
    python evaluate.py --ckpt out/lang-online/ckpt.pt --max-depth 8 --hops 8 --sizes 10
                                        # thinking longer: chains longer than any trained on

For every size: teacher-forced token accuracy, greedy exact-match (the whole
target right; on lang, but for the queried variables, which are random by
design) and mean depth; sizes outside the training range are marked OOD.
Writes, beside the checkpoint unless --out says otherwise:
  tokens.csv    one row per target token: task,router,sample,n,pos,target,
                pred,correct,depth_needed,depth,<task features>
  summary.json  the per-size table, and the same pooled over the training
                sizes ("in_distribution") and over the others ("ood")
depth_needed: the smallest depth from which the token's
prediction stays right at every deeper exit, had it kept iterating. These
exits come from training's counterfactual continuation: past its halting
depth the token's own state keeps iterating while every token, itself
included, attends to its frozen state. Blank when the exit at max_depth is
wrong. Set against `depth`, it says whether the router stopped too early or
ran past what was needed (analyze.py).

Test-time depth: --max-depth runs more (or fewer) iterations than trained;
--depth max or hops replaces the router by an oracle (every token to
max_depth; each reference to its number of hops), to tell a failing step
from a failing halting decision. summary.json then also has, on lang,
reference accuracy and mean depth by hops ("by_hops"); --uniform-hops asks
every prompt for the end of a chain of 1..--hops hops, so that the longest
chains are tested as often as the short ones. --halt-when-converged keeps
the online router but halts a token only once its exit repeats the previous
iteration's token, a halt that waits for a fixed point: never before the
router would, never after one iteration.
Examples come from a seed distinct from training and from train.py's held-out set.
"""
import argparse
import csv
import json
import os
import random
import sys

import numpy as np
import torch

import tasks
from model import ANIRA, ModelConfig
from train import DTYPES, autocast, fail, load_checkpoint, parse_size_range, pick_device, task_params

EVAL_SEED = 20_000  # train.py draws from seed and seed + 10_000


def main(argv=None):
    args = parse_args(argv)
    device = pick_device(args.device)
    ckpt = load_checkpoint(args.ckpt)
    model = load_model(ckpt, args.max_depth, args.depth, args.halt_when_converged).to(device)
    config = ckpt["config"]
    dtype = args.dtype or config["dtype"]
    task, router, train_sizes = config["task"], config["router"], tuple(config["size_range"])
    if args.depth in ("hops", "4x", "control") and task != "lang":
        fail(f"--depth {args.depth}: only lang's references have a number of hops")
    params = {**task_params(config), **({"hops": args.hops} if args.hops else {})}
    if (args.hops or args.uniform_hops) and task != "lang":
        fail("--hops and --uniform-hops are parameters of the lang task")
    default_hi = min(2 * train_sizes[1], tasks.max_size(task, params["names"]))
    sizes = parse_size_range(args.sizes or f"{train_sizes[0]}-{default_hi}", task, params["names"])
    if args.uniform_hops:
        if params["hops"] > sizes[0]:
            fail(f"--uniform-hops: a chain of {params['hops']} hops does not fit in {sizes[0]} variables")
        params["uniform_hops"] = True
    out_dir = args.out or os.path.dirname(os.path.abspath(args.ckpt))
    try:
        os.makedirs(out_dir, exist_ok=True)
    except OSError as e:  # unwritable, or a file of that name
        fail(f"--out {out_dir}: cannot make a folder there ({e.strerror})")
    if not os.access(out_dir, os.W_OK):
        fail(f"--out {out_dir}: the folder is not writable")
    print(f"{task} / router {router}, trained on sizes {train_sizes[0]}-{train_sizes[1]} with max_depth "
          f"{ckpt['model_config']['max_depth']}, step {ckpt['step']}; {args.num} examples per size; "
          f"max_depth {model.cfg.max_depth}, depth: {DEPTHS[args.depth]}"
          f"{' once its exit repeats' * args.halt_when_converged}; {dtype}")

    if args.show:
        show_examples(model, task, random.Random(args.seed + 1), sizes, args.show, device, params, dtype)

    header = ["task", "router", "sample", "n", "pos", "target", "pred", "correct", "depth_needed", "depth"]
    features = tasks.FEATURES[task]
    summary = {"task": task, "router": router, "train_sizes": list(train_sizes),
               "ckpt": args.ckpt, "step": ckpt["step"], "max_depth": model.cfg.max_depth,
               "trained_max_depth": ckpt["model_config"]["max_depth"], "depth": args.depth, "dtype": dtype,
               "task_params": params, "trained_task_params": task_params(config),
               "args": vars(args), "sizes": []}  # args: a resumed study knows what this summary measured
    references = "kind" in features  # lang: also the accuracy of resolved values
    print(f"\n{'n':>4} {'':4} {'token acc':>9} {'exact':>7} {'mean depth':>10}"
          + (f" {'reference acc':>13}" if references else ""))
    sample = 0
    pooled = {False: [], True: []}  # in distribution / OOD: per example, its rows and exact-match
    by_hops = {}  # lang: hops -> (correct, depth) of every reference
    hop_exits = []  # lang: per reference, whether each exit named its hop
    with open(os.path.join(out_dir, "tokens.csv"), "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header + features)
        for n in range(sizes[0], sizes[1] + 1):
            rng = random.Random(args.seed * 1000 + n)
            examples = [tasks.make_example(task, rng, n, **params) for _ in range(args.num)]
            correct, depth, exact, reference = [], [], [], []
            for rows in token_rows(model, examples, args.batch_size, device, args.depth, dtype,
                                   task_params(config).get("hops")):
                for pos, (target, pred, ok, needed, d, feats, hops_right) in enumerate(rows):
                    writer.writerow([task, router, sample, n, pos, target, pred, int(ok), needed, d]
                                    + [feats[k] for k in features])
                    correct.append(ok)
                    depth.append(d)
                    if references and feats["kind"] == tasks.REFERENCE:
                        reference.append(ok)
                        by_hops.setdefault(feats["hops"], []).append((ok, d))
                        hop_exits.append(hops_right)
                exact.append(all(r[2] for r in rows if not tasks.by_chance(r[5])))
                sample += 1
            ood = not train_sizes[0] <= n <= train_sizes[1]
            pooled[ood].append((correct, depth, exact, reference))
            row = {"n": n, "ood": ood, **pool([(correct, depth, exact, reference)], references)}
            summary["sizes"].append(row)
            print(f"{n:>4} {'OOD' if ood else '':4} {row['token_acc']:>9.3f} "
                  f"{row['exact_match']:>7.3f} {row['mean_depth']:>10.2f}"
                  + (f" {row['reference_acc']:>13.3f}" if references else ""), flush=True)
    for ood, name in ((False, "in_distribution"), (True, "ood")):
        if pooled[ood]:
            summary[name] = pool(pooled[ood], references)
            print(f"{name}: " + ", ".join(f"{k} {v}" for k, v in summary[name].items()))
    if by_hops:  # every size: are references of h hops right, and how deep do they run?
        summary["by_hops"] = [{"hops": h, "reference_acc": round(float(np.mean([ok for ok, _ in v])), 4),
                               "mean_depth": round(float(np.mean([d for _, d in v])), 3), "num": len(v)}
                              for h, v in sorted(by_hops.items())]
        print("by hops: " + ", ".join(f"{r['hops']}: {r['reference_acc']:.3f} @ {r['mean_depth']:.2f}"
                                      for r in summary["by_hops"]))
        summary["per_step"] = per_step_accuracy(hop_exits)
        print(f"per-step accuracy p {summary['per_step']['p']} over {summary['per_step']['steps']} steps "
              f"(exit k names hop k, given exit k-1 named hop k-1; by k: {summary['per_step']['by_step']})")
    with open(os.path.join(out_dir, "summary.json"), "w") as f:
        json.dump(summary, f, indent=2)
    print(f"\nwrote {os.path.join(out_dir, 'tokens.csv')} and summary.json")


def pool(sizes, references):
    """One row over several sizes: every token (and example) counts once, so
    mean_depth is the compute per target token over all of them."""
    correct, depth, exact, reference = (sum((s[i] for s in sizes), []) for i in range(4))
    row = {"token_acc": round(float(np.mean(correct)), 4), "exact_match": round(float(np.mean(exact)), 4),
           "mean_depth": round(float(np.mean(depth)), 3), "num": len(exact)}
    if references:
        row["reference_acc"] = round(float(np.mean(reference)), 4)
    return row


@torch.no_grad()
def token_rows(model, examples, batch_size, device, depth="router", dtype="float32", trained_hops=None):
    """Yield, per example, a list of (target, pred, correct, depth_needed,
    depth, features, hop_exits) for its target tokens. Teacher-forced: since every
    prediction is the argmax of the same forward that greedy decoding runs, an
    example is an exact match under greedy decoding iff all its rows are
    correct. It runs the counterfactual forward, which also continues every
    token to max_depth and returns an exit per depth (for depth_needed); the
    tokens' own depths and predictions are those of plain inference. `depth`:
    see DEPTHS (trained_hops for "control"); `dtype`: train.autocast's.
    hop_exits, for a lang reference: whether exit k names the k-th hop of
    its chase (the value at the last), k = 1..its hops (at most max_depth);
    None for any other token."""
    for i in range(0, len(examples), batch_size):
        chunk = examples[i:i + batch_size]
        idx, targets, feats = tasks.make_batch(chunk)
        idx_t, targets_t = torch.from_numpy(idx).to(device), torch.from_numpy(targets).to(device)
        forced = forced_depth(depth, feats, targets_t, model.cfg.max_depth, trained_hops)
        with autocast(device, dtype):
            out = model(idx_t, adaptive=targets_t != -1, route=depth == "router", counterfactual=True,
                        forced_depth=forced)
        pred, depth_run = out.logits.argmax(-1).cpu().numpy(), out.depth.cpu().numpy()
        needed = depth_needed(out.exit_logits, targets_t).cpu().numpy()
        hop_right = hop_exits_right(out.exit_logits, chunk, targets)
        for b, ex in enumerate(chunk):
            where = np.flatnonzero(targets[b] != -1)
            yield [(ex.target[j], tasks.VOCAB[pred[b, p]], ex.target[j] == tasks.VOCAB[pred[b, p]],
                    blank_if_zero(needed[b, p]), int(depth_run[b, p]), ex.features[j],
                    hop_exits(hop_right, ex, b, j, p)) for j, p in enumerate(where)]


def forced_depth(depth, feats, targets, max_depth, trained_hops=None):
    """(B, T) iterations per token for an oracle --depth; None for the router
    and "max" (the router switched off runs every token to max_depth)."""
    if depth == "control":
        return torch.full_like(targets, min(trained_hops, max_depth))
    if depth not in ("hops", "4x"):
        return None
    hops = torch.from_numpy(np.nan_to_num(feats["hops"])).long().to(targets.device)
    hops = (hops * (4 if depth == "4x" else 1)).clamp(1, max_depth)
    return torch.where(targets != -1, hops, max_depth)  # the prompt as routers leave it: max_depth


def hop_exits_right(exit_logits, examples, targets):
    """(B, T, D) numpy bool: exit k names its target of tasks.exit_targets (the
    k-th hop of a chase); None where the examples have no chases."""
    if examples[0].hints is None:
        return None
    hop_targets = torch.from_numpy(tasks.exit_targets(examples, targets, len(exit_logits)))
    return (torch.stack([lg.argmax(-1).cpu() for lg in exit_logits], -1) == hop_targets).numpy()


def hop_exits(hop_right, ex, b, j, p):
    if hop_right is None or ex.features[j].get("kind") != tasks.REFERENCE:
        return None
    D = hop_right.shape[-1]  # the last exit is trained on the answer: a chase longer than D is judged to D - 1
    return tuple(bool(x) for x in hop_right[b, p, :len(ex.hints[j]) if len(ex.hints[j]) <= D else D - 1])


def per_step_accuracy(hop_exits):
    """p, the step's reliability: of the steps k >= 2 of every chase whose
    exit k-1 named the (k-1)-th hop, the share whose exit k names the k-th,
    pooled and by k; `first`, exit 1 naming the first hop. At k hops an
    accuracy below p^k is drift, a low p a weak step (SPEC section 9)."""
    given, both = {}, {}
    for right in hop_exits:
        for k in range(1, len(right)):
            if right[k - 1]:
                given[k + 1] = given.get(k + 1, 0) + 1
                both[k + 1] = both.get(k + 1, 0) + right[k]
    total = sum(given.values())
    return {"p": round(sum(both.values()) / total, 4) if total else None, "steps": total,
            "first": round(float(np.mean([r[0] for r in hop_exits if r])), 4),
            "by_step": {k: round(both[k] / given[k], 4) for k in sorted(given)}}


DEPTHS = {  # --depth: who decides each answer token's number of iterations
    "router": "the router decides (router none: max_depth)",
    "max": "every token runs max_depth (the oracle of thinking as long as allowed)",
    "hops": "each reference runs exactly its number of hops, other answer tokens 1 (lang's oracle)",
    "4x": "each reference runs 4 times its hops (at most max_depth), other answer tokens 1: does an answer, "
          "once found, stay put (no overthinking)?",
    "control": "every token runs the longest chain's hops the checkpoint was trained on (lang): a longer "
               "chain resolved there was read off the prompt, not chased",
}


def load_model(ckpt, max_depth=None, depth="router", halt_when_converged=False):
    """The checkpoint's model in evaluation mode, run with `max_depth`
    iterations at most (default: as trained). A shared block can iterate more
    than it was trained to: the embeddings of the iterations past the trained
    ones are copies of the last one (none with depth_embed off). ANIRA-O's
    halting unit reads the state, so it can halt at any depth; ANIRA-E's MLP
    gives a distribution over the depths it was trained with and cannot choose
    another. Under an oracle depth (--depth max or hops) the router is not
    used, and the model runs as router none. halt_when_converged: ANIRA-O
    halts a token only once its exit repeats (ModelConfig)."""
    cfg = ModelConfig(**ckpt["model_config"])
    if halt_when_converged:
        if cfg.router != "online" or depth != "router":
            fail("--halt-when-converged is a rule for the online router's halting (--depth router)")
        cfg.halt_when_converged = True
    state = dict(ckpt["model"])
    trained = cfg.max_depth
    if depth != "router":
        cfg.router = "none"
        state = {k: v for k, v in state.items() if not k.startswith("router.")}
    if max_depth and max_depth != trained:
        if not cfg.share:
            fail(f"--max-depth {max_depth}: an unshared stack has one block per depth ({trained}); "
                 f"it cannot run another number")
        if cfg.router == "early":
            fail(f"--max-depth {max_depth}: ANIRA-E chooses among the depths 1..{trained} it was trained "
                 f"with and cannot choose another; --depth max runs every token to {max_depth}")
        state["depth_embed"] = state["depth_embed"][[min(k, trained - 1) for k in range(max_depth)]]
        cfg.max_depth = max_depth
    model = ANIRA(cfg)
    model.load_state_dict(state)
    return model.eval()


def depth_needed(exit_logits, targets):
    """(B, T): the smallest depth d whose exit and every deeper one predict
    the target, 0 when the last exit is wrong."""
    right = torch.stack([lg.argmax(-1) == targets for lg in exit_logits], -1)  # (B, T, D)
    right_from_here_on = right.flip(-1).cumprod(-1).flip(-1)  # right at d and at every d' > d
    return (right.shape[-1] + 1 - right_from_here_on.sum(-1)) * right[..., -1]


def blank_if_zero(depth):
    """A depth for the CSV; 0 (wrong at max_depth) as an empty cell, which pandas reads as NaN."""
    return int(depth) or ""


def show_examples(model, task, rng, sizes, k, device, params, dtype="float32"):
    """Greedy generation with the cache; every token printed with its depth,
    and where it is wrong, what was expected: token:depth(!=expected)."""
    colour = sys.stdout.isatty()
    for _ in range(k):
        ex = tasks.make_example(task, rng, rng.randint(*sizes), **params)
        prompt = torch.tensor([tasks.encode(ex.prompt)], device=device)
        with autocast(device, dtype):
            tokens, depths = model.generate(prompt, len(ex.target) + 2, end_id=tasks.END)
        print(f"\nn={ex.n}  prompt: {' '.join(ex.prompt)}")
        generated, shown = tasks.decode(tokens[0].tolist()), []
        for j, (t, d) in enumerate(zip(generated, depths[0].tolist())):
            text = f"{t}:{d}{judged(ex, generated, j)}"
            if colour:  # darker background = more iterations
                text = f"\x1b[48;5;{232 + min(23, 3 * d)}m{text}\x1b[0m"
            shown.append(text)
        print("output (token:depth): " + " ".join(shown))
        print("target:               " + " ".join(ex.target))


def judged(ex, generated, j):
    """'' where the generated token j is right, else what was expected. On lang
    the variable a query asks is random by design: another variable of the
    prompt is not wrong, it only says which the target asked, (target:x);
    and a value is judged by the variable the model's own query names."""
    if j >= len(ex.target):
        return "(!=-)"
    expected = ex.target[j]
    if ex.task == "lang" and tasks.by_chance(ex.features[j]) and lang_value(ex.prompt, generated[j]):
        return "" if generated[j] == expected else f"(target:{expected})"
    if ex.task == "lang" and ex.features[j]["kind"] == tasks.REFERENCE and j >= 2 and generated[j - 1] == "->":
        expected = lang_value(ex.prompt, generated[j - 2]) or expected  # no variable named: the target's
    return "" if generated[j] == expected else f"(!={expected})"


def lang_value(prompt, name):
    """The value a lang variable is bound to, chased through the prompt's
    statements (x = y ;, y a value or another variable); None if unbound."""
    bound = {prompt[i - 1]: prompt[i + 1] for i, token in enumerate(prompt) if token == "="}
    chased = set()
    while name in bound and name not in chased:
        chased.add(name)
        name = bound[name]
    return name if chased and name in tasks.VALUES else None


def parse_args(argv):
    # an option added later defaults to what evaluate.py did before it: study.evaluate_once
    # takes a summary written without it as written with its default
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ckpt", required=True, help="checkpoint written by train.py")
    p.add_argument("--sizes", default=None,
                   help="size range, e.g. 4-16 (default: training minimum to twice its maximum, "
                        "as far as the vocabulary can label)")
    p.add_argument("--num", type=int, default=200, help="examples per size")
    p.add_argument("--max-depth", type=int, default=None,
                   help="iterations at most, default as trained; more tests thinking longer "
                        "(router none and online; early only with --depth max or hops)")
    p.add_argument("--depth", choices=list(DEPTHS), default="router",
                   help="; ".join(f"{k}: {v}" for k, v in DEPTHS.items()))
    p.add_argument("--hops", type=int, default=None,
                   help="lang: the longest chain of the test examples (default: the task's, 4)")
    p.add_argument("--uniform-hops", action="store_true",
                   help="lang: every prompt asks for the end of a chain of 1..--hops hops, so every hop "
                        "count has about --num / --hops references (random prompts have few long chains)")
    p.add_argument("--halt-when-converged", action="store_true",
                   help="online router: a token halts only once its exit names the token the previous "
                        "iteration's did (the answer has stopped changing)")
    p.add_argument("--seed", type=int, default=EVAL_SEED)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--show", type=int, default=0, help="print K generated examples with depths")
    p.add_argument("--device", default="auto")
    p.add_argument("--dtype", choices=DTYPES, default=None,
                   help="float32 or bfloat16 (autocast): evaluation and generation run in it "
                        "(default: the dtype the checkpoint was trained in)")
    p.add_argument("--out", default=None,
                   help="folder for tokens.csv and summary.json, created if missing "
                        "(a name ending in .csv or .json is refused: it is not a file name)")
    args = p.parse_args(argv)
    if args.num < 1 or args.batch_size < 1 or args.show < 0:
        fail("--num and --batch-size must be at least 1, --show at least 0")
    if (args.max_depth is not None and args.max_depth < 1) or (args.hops is not None and args.hops < 1):
        fail("--max-depth and --hops must be at least 1")
    if args.out and args.out.endswith((".csv", ".json")):  # would make a folder named x.csv
        fail(f"--out {args.out}: --out is a folder (tokens.csv and summary.json go in it), not a file")
    return args


if __name__ == "__main__":
    main()
