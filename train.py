"""
Train ANIRA on one task, nanoGPT style: one readable loop, fresh examples
every step, periodic evaluation on a fixed held-out set.

    python train.py --task dfs --router online      # the main job
    python train.py --task dfs --router early
    python train.py --task dfs --router none        # fixed-depth baseline

Writes to --out (default out/<task>-<router>/): ckpt.pt (model, optimizer,
config, step, RNG state), log.jsonl (one JSON object per evaluation),
config.json. Ctrl-C saves a checkpoint; --resume continues the same run.
--dtype bfloat16 (the default on CUDA) runs every forward, training and
evaluation, under bf16 autocast (`autocast`), as evaluate.py then does.
"""
import argparse
import dataclasses
import json
import math
import os
import pickle
import random
import signal
import sys
import time
from collections import namedtuple

import numpy as np
import torch

import tasks
from model import ANIRA, EARLY_INPUTS, ROUTERS, ModelConfig

# -----------------------------------------------------------------------------
# defaults: a small model that trains on dfs in about 11 minutes on a 2-core
# CPU (3000 steps at ~0.23 s; `python bench.py speed` measures your machine)
DEFAULTS = dict(
    task="dfs", router="online", sizes="4-8", chain_order="forward", hints=False, hops=4, names=tasks.N_LABELS,
    d_model=128, n_heads=4, n_prelude=1, max_depth=4, share=True, early_input="prelude", reinject=False,
    token_shift=2, depth_embed=True, norm_state=False, anchor=False, prompt_depth=0, anchor_forcing=0.0,
    ponder=0.002, halt_warmup=500, curriculum=0, prompt_loss=None,
    batch_size=64, lr=3e-3, min_lr=3e-4, warmup=100, weight_decay=0.1, grad_clip=1.0,
    max_iters=3000, max_minutes=0, eval_every=250, eval_num=256,
    seed=0, device="auto", dtype=None, out=None, resume=False,  # dtype None: by device, see default_dtype
)


def main(argv=None):
    args = parse_args(argv)
    device = pick_device(args.device)
    args.dtype = args.dtype or default_dtype(device)
    torch.manual_seed(args.seed)
    out_dir = args.out or os.path.join("out", f"{args.task}-{args.router}")
    ckpt_path = os.path.join(out_dir, "ckpt.pt")
    cfg = model_config(args)
    model = ANIRA(cfg).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=args.weight_decay,
                                  betas=(0.9, 0.95))
    rng = random.Random(args.seed)        # training examples
    eval_rng = random.Random(args.seed + 10_000)  # held-out examples, never trained on
    step, elapsed = 0, 0.0
    if args.resume:
        ckpt = load_checkpoint(ckpt_path, args)
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        step, elapsed = ckpt["step"], ckpt["elapsed"]
        rng.setstate(ckpt["rng"])
        torch.set_rng_state(ckpt["torch_rng"])
    try:
        os.makedirs(out_dir, exist_ok=True)
        with open(os.path.join(out_dir, "config.json"), "w") as f:
            json.dump(vars(args), f, indent=2)
    except OSError as e:  # unwritable, or a file of that name
        fail(f"--out {out_dir}: cannot write there ({e.strerror})")
    held_out = tasks.sample_examples(args.task, eval_rng, args.size_range, args.eval_num, **task_params(vars(args)))
    n_params = sum(p.numel() for p in model.parameters())
    budget = f" or {args.max_minutes:g} minutes" if args.max_minutes else ""
    print(f"{args.task} / router {args.router}: {n_params / 1e3:.0f}k parameters on {device}, "
          f"sizes {args.sizes}, {args.max_iters} steps{budget}")

    def save():
        state = {"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                 "config": vars(args), "model_config": vars(cfg), "step": step,
                 "elapsed": elapsed, "rng": rng.getstate(), "torch_rng": torch.get_rng_state()}
        tmp = ckpt_path + ".tmp"
        torch.save(state, tmp)
        os.replace(tmp, ckpt_path)  # atomic: a crash never leaves half a checkpoint

    log_path = os.path.join(out_dir, "log.jsonl")
    logged = trim_log(log_path, step) if args.resume else set()  # the steps with a row
    log = open(log_path, "a" if args.resume else "w")
    t0 = t_mark = time.time() - elapsed
    tokens_seen = 0
    train_parts = {}  # the training loss terms since the last evaluation
    # Ctrl-C asks the loop to stop between two steps, never inside an update;
    # a second Ctrl-C stops at once (the last checkpoint on disk stays whole)
    interrupted = []

    def request_stop(signum, frame):
        interrupted.append(True)
        signal.signal(signal.SIGINT, signal.default_int_handler)

    def evaluate_and_log(**more):
        """Held-out metrics at this step: printed, and a row of log.jsonl."""
        stats = evaluate_held_out(model, held_out, args, device, route=step >= args.halt_warmup)
        check_finite(stats["loss"], step, ckpt_path)  # never save broken weights
        stats.update(step=step, minutes=round(elapsed / 60, 2), **more, **mean_parts(train_parts))
        report(stats, args, elapsed)
        log.write(json.dumps(stats) + "\n")
        log.flush()
        logged.add(step)

    previous_handler = signal.signal(signal.SIGINT, request_stop)
    try:
        while step < args.max_iters and not out_of_time(elapsed, args) and not interrupted:
            if step % args.eval_every == 0 and step not in logged:
                speed = round(tokens_seen / max(1e-9, time.time() - t_mark)) if step else None
                evaluate_and_log(tokens_per_s=speed)
                save()
                t_mark, tokens_seen, train_parts = time.time(), 0, {}
            lr = learning_rate(step, elapsed, args)
            for group in optimizer.param_groups:
                group["lr"] = lr
            batch = training_batch(step, rng, args, device)
            with autocast(device, args.dtype):
                loss, parts = forward_and_loss(model, batch, args, step >= args.halt_warmup)
            check_finite(loss.item(), step, ckpt_path)
            for name, value in parts.items():
                train_parts.setdefault(name, []).append(value)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), args.grad_clip)
            optimizer.step()
            step += 1
            tokens_seen += batch.idx.numel()
            elapsed = time.time() - t0
        if interrupted:
            print(f"\ninterrupted at step {step}: saving {ckpt_path}")
        elif step not in logged:  # the last step, e.g. resumed with --max-iters at or below the checkpoint's
            evaluate_and_log()
    finally:
        signal.signal(signal.SIGINT, previous_handler)
    save()
    log.close()
    print(f"saved {ckpt_path}")


# -----------------------------------------------------------------------------

def model_config(args):
    """ModelConfig from the flags of the same names."""
    names = {f.name for f in dataclasses.fields(ModelConfig)} & vars(args).keys()
    return ModelConfig(vocab_size=tasks.vocab_size(args.task, args.names),
                       **{name: getattr(args, name) for name in names})


# A training batch: ids, next-token targets (-1: no loss), the prompt's targets
# (--prompt-loss) and each exit's (--hints) or None.
Batch = namedtuple("Batch", "idx targets prompt exits")


def training_batch(step, rng, args, device):
    """This step's fresh examples as a Batch of tensors."""
    batch = tasks.sample_examples(args.task, rng, size_range_for_step(step, rng, args), args.batch_size,
                                  **task_params(vars(args)))
    idx, targets = tasks.make_batch(batch)[:2]
    prompt = tasks.prompt_targets(idx, targets) if args.prompt_loss else None
    exits = tasks.exit_targets(batch, targets, args.max_depth) if args.hints else None
    return Batch(*(None if a is None else torch.from_numpy(a).to(device) for a in (idx, targets, prompt, exits)))


def forward_and_loss(model, batch, args, route=True):
    """The training forward of a Batch and its loss, model.loss: every exit
    computed (counterfactual), routing on or not."""
    idx, targets, prompt, exits = batch
    out = model(idx, adaptive=targets != -1, route=route, counterfactual=True, outputs=read_by_loss(targets, prompt),
                anchors=forced_anchors(exits, args.anchor_forcing))
    return model.loss(out, targets, args.ponder, prompt, exits)


def forced_anchors(exits, fraction):
    """--anchor-forcing: teacher forcing of the anchor. The (B, T, max_depth)
    tokens whose embeddings the iterations after each exit take: its hint
    target (the true hop) for a random `fraction` of them, -1 (the model's own
    prediction) for the rest; None when fraction is 0. From its own prediction
    hop k learns only once hops 1..k-1 are right; from the true one every hop
    learns from the start (measured at 24 names, 4-12 variables: held-out
    exact-match 0.95 / 0.69 at step 1000 against 0.26 / 0.34 without, seeds
    0 / 2; RESULTS.md "Thinking longer")."""
    if not fraction:
        return None
    forced = torch.rand(exits.shape, device=exits.device) < fraction
    return torch.where(forced, exits, -1)


def read_by_loss(targets, prompt_targets):
    """(B, T) bool: the tokens whose logits the loss reads, the answer's and,
    with --prompt-loss, the prompt's; the forward skips the rest's last
    iteration (ANIRA.forward's outputs)."""
    read = targets != -1
    return read if prompt_targets is None else read | (prompt_targets != -1)


@torch.no_grad()
def evaluate_held_out(model, examples, args, device, route=True):
    """Teacher-forced loss and token accuracy, greedy exact-match and depth.

    Greedy exact-match equals "every teacher-forced prediction is right": if
    all are, greedy decoding reproduces the target token by token; if one is
    wrong, greedy decoding goes wrong there (model.generate uses the same
    forward with a cache, and a test checks that the two agree). On lang it
    skips the queried variables, random by design (tasks.by_chance).
    """
    model.eval()
    correct, depth, backtrack, kind, hops, exact, losses = [], [], [], [], [], [], []
    for i in range(0, len(examples), 128):
        chunk = examples[i:i + 128]
        idx, targets, feats = tasks.make_batch(chunk)
        idx_t, targets_t = torch.from_numpy(idx).to(device), torch.from_numpy(targets).to(device)
        with autocast(device, args.dtype):
            out = model(idx_t, adaptive=targets_t != -1, route=route)
        mask = targets_t != -1
        losses.append(torch.nn.functional.cross_entropy(out.logits[mask].float(), targets_t[mask]).item())
        ok = (out.logits.argmax(-1) == targets_t) | ~mask
        exact += (ok | torch.as_tensor(tasks.by_chance(feats), device=device)).all(1).tolist()
        correct.append(ok[mask].cpu().numpy())
        depth.append(out.depth[mask].cpu().numpy())
        if "backtrack" in feats:
            backtrack.append(feats["backtrack"][targets != -1])
        if "kind" in feats:
            kind.append(feats["kind"][targets != -1])
            hops.append(feats["hops"][targets != -1])
    model.train()
    depth, correct = np.concatenate(depth), np.concatenate(correct)
    stats = {"loss": round(float(np.mean(losses)), 4), "token_acc": round(float(correct.mean()), 4),
             "exact_match": round(float(np.mean(exact)), 4), "mean_depth": round(float(depth.mean()), 3),
             "std_depth": round(float(depth.std()), 3), "distinct_depths": int(len(np.unique(depth)))}
    if backtrack:  # dfs: do backtracking tokens get more compute?
        bt = np.concatenate(backtrack)
        for name, sel in (("depth_backtrack0", bt == 0), ("depth_backtrack1+", bt > 0)):
            stats[name] = round(float(depth[sel].mean()), 3) if sel.any() else None
    if kind:  # lang: how many values are resolved through their chains
        ref = np.concatenate(kind) == tasks.REFERENCE
        stats["reference_acc"] = round(float(correct[ref].mean()), 4)
        h = np.concatenate(hops)  # by hops: is the chase learned, or only one-hop lookups?
        stats["reference_acc_by_hops"] = {int(k): round(float(correct[ref & (h == k)].mean()), 3)
                                          for k in np.unique(h[ref])}
    return stats


def task_params(config):
    """The task's generator parameters from a run's config (train.py's flags
    or a checkpoint's "config"): the regime every example is drawn from."""
    return {key: config.get(key, DEFAULTS[key]) for key in ("chain_order", "hops", "names")}


def mean_parts(parts):
    """Training loss terms averaged since the last evaluation, for log.jsonl:
    train_lm; with --prompt-loss, train_prompt; for an adaptive router,
    train_halt (the router's loss) and train_target_depth (the mean d* it is
    trained towards)."""
    return {f"train_{name}": round(float(np.mean(values)), 4) for name, values in parts.items()}


def size_range_for_step(step, rng, args):
    """The graph size of this step's batch: one size per batch, so no step
    pays for padding short examples to long ones. With a curriculum, the
    largest size grows from the smallest to the top of --sizes over the first
    `curriculum` steps: small graphs first, which are short and quick to learn."""
    lo, hi = args.size_range
    if args.curriculum:
        hi = lo + round((hi - lo) * min(1.0, step / args.curriculum))
    n = rng.randint(lo, hi)
    return n, n


def trim_log(path, step):
    """On resume: keep the rows of log.jsonl up to the checkpoint's step and
    return their steps. Later rows come from a run killed between writing a
    row and saving its checkpoint; this run writes them again."""
    kept = {}
    if os.path.exists(path):
        with open(path) as f:
            for line in f:
                try:
                    row = json.loads(line)
                except ValueError:  # half a row, written as the run was killed
                    continue
                if row["step"] <= step:
                    kept[row["step"]] = line
    with open(path, "w") as f:
        f.writelines(kept.values())
    return set(kept)


def check_finite(loss, step, ckpt_path):
    """A non-finite loss stops the run before anything is saved, so the
    checkpoint on disk stays the last good one."""
    if not math.isfinite(loss):
        print(f"error: loss is {loss} at step {step}; stopping. "
              f"The last good checkpoint is {ckpt_path}", file=sys.stderr)
        sys.exit(1)


def report(stats, args, elapsed):
    left = remaining_seconds(stats["step"], elapsed, args)
    left = f"~{left / 60:.1f} min left" if left is not None else "time left not known yet"
    extra = f" | {stats['tokens_per_s']} tok/s" if stats.get("tokens_per_s") else ""
    per_task = (f" (backtrack 0: {stats['depth_backtrack0']}, 1+: {stats['depth_backtrack1+']})"
                if "depth_backtrack0" in stats else "")
    per_task += f" | reference acc {stats['reference_acc']:.3f}" if "reference_acc" in stats else ""
    print(f"step {stats['step']:5d} | loss {stats['loss']:.3f} | token acc {stats['token_acc']:.3f} | "
          f"exact {stats['exact_match']:.3f} | depth {stats['mean_depth']:.2f} +- {stats['std_depth']:.2f}"
          f"{per_task}{extra} | {elapsed / 60:.1f} min, {left}", flush=True)


def learning_rate(step, elapsed, args):
    """Linear warmup, then cosine decay to min_lr over the run. The run ends at
    max_iters or max_minutes, whichever comes first; the decay follows the
    one that is further along, so a time-limited run still ends at min_lr."""
    if step < args.warmup:
        return args.lr * (step + 1) / args.warmup
    progress = step / args.max_iters
    if args.max_minutes:
        progress = max(progress, elapsed / (args.max_minutes * 60))
    progress = min(1.0, progress)
    return args.min_lr + 0.5 * (args.lr - args.min_lr) * (1 + math.cos(math.pi * progress))


def out_of_time(elapsed, args):
    return args.max_minutes > 0 and elapsed >= args.max_minutes * 60


def remaining_seconds(step, elapsed, args):
    """Seconds left at the pace so far; None before the first step."""
    if step == 0 and not args.max_minutes:
        return None
    by_steps = elapsed / max(1, step) * (args.max_iters - step)
    if args.max_minutes:
        by_steps = min(by_steps, args.max_minutes * 60 - elapsed)
    return max(0.0, by_steps)


DTYPES = ("float32", "bfloat16")


def autocast(device, dtype):
    """The context every forward of a run's model runs in, training, evaluation
    and generation alike: with dtype "bfloat16", autocast on the device (CPU
    included), where matmuls and attention run in bf16 and the weights and the
    residual stream stay float32; with "float32", nothing changes."""
    return torch.autocast(torch.device(device).type, dtype=torch.bfloat16, enabled=dtype == "bfloat16")


def default_dtype(device):
    """--dtype's default: bf16 on a GPU, whose tensor cores run it fast; float32
    on a CPU, even one with bf16 instructions where a step runs 1.45-1.7x
    faster in bf16: there dfs ended 1.7 points below float32 over five seeds
    (RESULTS.md, "Training speed"), so bf16 is an option on a CPU, not its
    default."""
    return "bfloat16" if device.type == "cuda" else "float32"


def pick_device(name):
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        fail(f"--device {name}: no CUDA device is available")
    return torch.device(name)


# fields ModelConfig gained after checkpoints were shared, with the value that
# reproduces how those checkpoints ran; a checkpoint missing any other field is refused
MODEL_FIELDS_ADDED = dict(early_input="prelude", depth_embed=True, norm_state=False, anchor=False, prompt_depth=0,
                          halt_when_converged=False)
CONFIG_FIELDS_ADDED = dict(dtype="float32")  # the same for train.py's flags (CPU runs were float32)
RESUME_KEYS = ("task", "prompt_loss", "chain_order", "hints", "hops", "names", "dtype")  # beside the model's config


def load_checkpoint(path, args=None):
    """Load a checkpoint written by train.py, or exit with one clear line."""
    if not os.path.isfile(path):
        fail(f"no checkpoint at {path}")
    try:
        # weights_only: a shared checkpoint can carry pickled objects whose
        # code runs on loading; train.py saves only tensors and plain data
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        # torch says the same for a foreign pickle and for bytes that are no pickle
        fail(f"{path} is not a checkpoint written by train.py: it is unreadable or holds objects "
             f"other than tensors and plain data, which are never loaded (they could run code)")
    except Exception as e:  # a truncated or foreign file
        fail(f"{path} is not a readable checkpoint ({type(e).__name__})")
    if not isinstance(ckpt, dict) or not {"model", "model_config", "config", "step"} <= ckpt.keys():
        fail(f"{path} is not a checkpoint written by train.py")
    config = ckpt["config"]
    vocab = tasks.vocab_size(config.get("task"), config.get("names", DEFAULTS["names"]))
    if ckpt["model_config"].get("vocab_size") != vocab:  # e.g. from before N_LABELS = 16
        fail(f"{path} was trained with a vocabulary of {ckpt['model_config'].get('vocab_size')} tokens; "
             f"tasks.py now gives its task {vocab}")
    ckpt["model_config"] = {**MODEL_FIELDS_ADDED, **ckpt["model_config"]}
    ckpt["config"] = {**CONFIG_FIELDS_ADDED, **ckpt["config"]}
    if ckpt["model_config"].keys() != vars(ModelConfig()).keys():  # e.g. from before token_shift
        fail(f"{path} was written by another version of model.py; train it again")
    if args is not None:  # resuming: the same model and the same task
        asked = {**vars(model_config(args)), **{key: getattr(args, key) for key in RESUME_KEYS}}
        has = {**ckpt["model_config"], **{key: ckpt["config"].get(key, DEFAULTS.get(key)) for key in RESUME_KEYS}}
        for key, value in asked.items():
            if has[key] != value:
                fail(f"cannot resume: {path} has {key}={has[key]!r}, this run asks for {value!r}")
    return ckpt


def fail(message):
    print(f"error: {message}", file=sys.stderr)
    sys.exit(2)


def parse_size_range(text, task, names=tasks.N_LABELS):
    """'4-8' -> (4, 8), checked against what the task and vocabulary allow."""
    try:
        lo, hi = (int(x) for x in text.split("-")) if "-" in text else (int(text),) * 2
    except ValueError:
        fail(f"--sizes {text!r}: expected a range like 4-8")
    if lo > hi:
        fail(f"--sizes {text!r}: the range is empty")
    for n in (lo, hi):
        try:
            tasks.check_size(task, n, names=names)
        except ValueError as e:
            fail(f"--sizes {text}: {e}")
    return lo, hi


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    d = DEFAULTS
    p.add_argument("--task", default=d["task"], help=f"one of {', '.join(tasks.TASKS)}")
    p.add_argument("--router", default=d["router"],
                   help="none (fixed depth), early (ANIRA-E) or online (ANIRA-O)")
    p.add_argument("--sizes", default=d["sizes"], help="training size range, e.g. 4-8")
    p.add_argument("--chain-order", default=d["chain_order"], choices=tasks.CHAIN_ORDERS,
                   help="lang: forward writes each chain first link first (a = C ; b = a), "
                        "so the prompt resolves it while read; reverse (b = a ; a = C) leaves "
                        "a k-hop query k bindings to chase (learned with --hints on: the regime "
                        "where depth is needed, README.md)")
    p.add_argument("--hints", choices=("on", "off"), default="on" if d["hints"] else "off",
                   help="lang: train the exit of iteration k on the k-th hop of each chase "
                        "(the variable it reaches, then the value), as CLRS trains on an "
                        "algorithm's intermediate states; router none then trains every exit too")
    p.add_argument("--hops", type=int, default=d["hops"], help="lang: the longest chain of bindings")
    p.add_argument("--names", type=int, default=d["names"],
                   help=f"lang: the pool of variable names (up to {tasks.MAX_NAMES}; beyond {tasks.N_LABELS} "
                        "they are tokens of lang's own), room for long chains among other chains")
    p.add_argument("--d-model", type=int, default=d["d_model"])
    p.add_argument("--n-heads", type=int, default=d["n_heads"])
    p.add_argument("--n-prelude", type=int, default=d["n_prelude"], help="blocks before the recurrence")
    p.add_argument("--max-depth", type=int, default=d["max_depth"], help="most iterations of the shared block")
    p.add_argument("--share", action=argparse.BooleanOptionalAction, default=d["share"],
                   help="--no-share: a standard Transformer of max_depth unshared blocks (router none)")
    p.add_argument("--early-input", default=d["early_input"],
                   help="what the early router reads: prelude (h0), embeddings (no attention) or prompt "
                        "(the prompt and the step into the answer, never the answer so far)")
    p.add_argument("--reinject", action="store_true", default=d["reinject"],
                   help="add the prelude output h0 before every iteration")
    p.add_argument("--depth-embed", action=argparse.BooleanOptionalAction, default=d["depth_embed"],
                   help="--no-depth-embed: no learned embedding of the iteration k, so the "
                        "shared block's step does not depend on k")
    p.add_argument("--norm-state", action="store_true", default=d["norm_state"],
                   help="LayerNorm the state before every iteration, so that its scale does not grow "
                        "with the iteration k (thinking longer)")
    p.add_argument("--anchor", action="store_true", default=d["anchor"],
                   help="discrete anchoring (thinking longer): past the first iteration, the state is replaced "
                        "by h0 plus the embedding of the previous exit's predicted token")
    p.add_argument("--anchor-forcing", type=float, default=d["anchor_forcing"],
                   help="with --anchor and --hints: the fraction of the anchors that training feeds the true "
                        "previous hop instead of the predicted one (teacher forcing; 0: none, 1: all)")
    p.add_argument("--prompt-depth", type=int, default=d["prompt_depth"],
                   help="iterations every prompt token runs (0: max_depth); 1 freezes the prompt after "
                        "its first, so a deeper test shows no iteration a prompt state it was not trained on")
    p.add_argument("--token-shift", type=int, default=d["token_shift"],
                   help="each input also sees this many previous tokens (0: off)")
    p.add_argument("--ponder", type=float, default=d["ponder"],
                   help="compute cost in nats per iteration: a token's target depth is "
                        "argmin_d CE_d + ponder * (d - 1)")
    p.add_argument("--halt-warmup", type=int, default=d["halt_warmup"],
                   help="steps at full depth before halting is switched on")
    p.add_argument("--curriculum", type=int, default=d["curriculum"],
                   help="steps over which the largest training size grows to the top of --sizes (0: none)")
    p.add_argument("--prompt-loss", choices=("on", "off"), default=d["prompt_loss"],
                   help="also predict the prompt's tokens (default: on for dfs and topo, "
                        "off for lang, whose prompt is random: tasks.PROMPT_LOSS)")
    p.add_argument("--batch-size", type=int, default=d["batch_size"])
    p.add_argument("--lr", type=float, default=d["lr"])
    p.add_argument("--min-lr", type=float, default=d["min_lr"])
    p.add_argument("--warmup", type=int, default=d["warmup"], help="learning-rate warmup steps")
    p.add_argument("--weight-decay", type=float, default=d["weight_decay"])
    p.add_argument("--grad-clip", type=float, default=d["grad_clip"])
    p.add_argument("--max-iters", type=int, default=d["max_iters"])
    p.add_argument("--max-minutes", type=float, default=d["max_minutes"],
                   help="optional wall-clock budget (0: none); training stops at "
                        "max-iters or here, whichever comes first")
    p.add_argument("--eval-every", type=int, default=d["eval_every"])
    p.add_argument("--eval-num", type=int, default=d["eval_num"], help="held-out examples")
    p.add_argument("--seed", type=int, default=d["seed"])
    p.add_argument("--device", default=d["device"], help="auto, cpu or cuda")
    p.add_argument("--dtype", default=d["dtype"], choices=DTYPES,
                   help="bfloat16: every forward (training, evaluation) under bf16 autocast, on "
                        "any device; part of the run, which --resume must not change "
                        "(default: bfloat16 on CUDA, float32 on a CPU)")
    p.add_argument("--out", default=d["out"], help="output folder (default out/<task>-<router>)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out")
    args = p.parse_args(argv)
    if args.task not in tasks.TASKS:
        fail(f"unknown task {args.task!r}; choose one of {', '.join(tasks.TASKS)}")
    if args.router not in ROUTERS:
        fail(f"unknown router {args.router!r}; choose one of {', '.join(ROUTERS)}")
    if not args.share and args.router != "none":
        fail("--no-share has no recurrence to halt: use it with --router none")
    for name in ("d_model", "n_heads", "max_depth", "batch_size", "max_iters", "eval_every", "eval_num"):
        if getattr(args, name) < 1:
            fail(f"--{name.replace('_', '-')} must be at least 1")
    for name in ("ponder", "lr", "min_lr", "weight_decay", "grad_clip", "max_minutes"):
        if not math.isfinite(getattr(args, name)):  # argparse's float() takes nan and inf
            fail(f"--{name.replace('_', '-')} must be a finite number")
    for name in ("ponder", "token_shift", "curriculum", "halt_warmup", "warmup", "max_minutes",
                 "lr", "min_lr", "weight_decay", "grad_clip"):
        if getattr(args, name) < 0:
            fail(f"--{name.replace('_', '-')} must not be negative")
    if args.d_model % args.n_heads or (args.d_model // args.n_heads) % 2:
        fail("--d-model must be a multiple of --n-heads with an even head size")
    if args.anchor and (args.reinject or args.norm_state):
        fail("--anchor replaces the state: it cannot be combined with --reinject or --norm-state")
    if not 0 <= args.anchor_forcing <= 1:
        fail("--anchor-forcing is a fraction: 0..1")
    if not 0 <= args.prompt_depth <= args.max_depth:
        fail(f"--prompt-depth must be 0..--max-depth ({args.max_depth})")
    if args.early_input not in EARLY_INPUTS:
        fail(f"unknown --early-input {args.early_input!r}; choose one of {', '.join(EARLY_INPUTS)}")
    if args.early_input != "prelude" and args.router != "early":
        fail("--early-input chooses what the early router reads: use it with --router early")
    if args.chain_order != "forward" and args.task != "lang":
        fail("--chain-order is a parameter of the lang task")
    if args.task != "lang" and args.hops != d["hops"]:
        fail("--hops is a parameter of the lang task")
    if args.hops < 1:
        fail("--hops must be at least 1")
    args.hints = args.hints == "on"
    if args.hints and args.task != "lang":
        fail("--hints: only lang's chases have intermediate steps to supervise")
    if args.anchor_forcing and not (args.anchor and args.hints):
        fail("--anchor-forcing feeds the anchor the true hops: use it with --anchor and --hints on")
    if args.task != "lang" and args.names != d["names"]:
        fail("--names is a parameter of the lang task")
    if not 1 <= args.names <= tasks.MAX_NAMES:
        fail(f"--names must be 1..{tasks.MAX_NAMES}")
    args.size_range = parse_size_range(args.sizes, args.task, args.names)
    args.prompt_loss = tasks.PROMPT_LOSS[args.task] if args.prompt_loss is None else args.prompt_loss == "on"
    return args


if __name__ == "__main__":
    main()
