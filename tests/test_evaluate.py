"""Tests for evaluate.py: the per-token CSV and the per-size summary agree
with the examples, with each other and with the model; --show prints depths;
bad input gets one error line.

Tiny checkpoints are trained through the command line (10 steps), for dfs and
for lang (in its reverse-chain regime, which evaluate.py must draw from too),
then evaluated on sizes 4-6 (6 is out of the training range 4-5).
"""
import csv
import json
import os
import random
import subprocess
import sys
from collections import defaultdict

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import evaluate
import tasks
from model import ANIRA, ModelConfig

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENV = dict(os.environ, OMP_NUM_THREADS="1")
TINY = ["--d-model", "32", "--n-heads", "2", "--max-depth", "3", "--batch-size", "8",
        "--eval-num", "16", "--eval-every", "5", "--sizes", "4-5", "--max-minutes", "1000"]
HEADER = ["task", "router", "sample", "n", "pos", "target", "pred", "correct", "depth_needed", "depth"]
TASKS = [("dfs", "online"), ("lang", "early")]
PARAMS = {"dfs": {}, "lang": {"chain_order": "reverse"}}  # the task parameters each is trained with
NUM = 3


def start(script, *args):
    return subprocess.Popen([sys.executable, script, *args], cwd=REPO, env=ENV, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def run_all(commands, timeout=180):
    procs = [start(*c) for c in commands]
    results = []
    for p in procs:
        out, err = p.communicate(timeout=timeout)
        results.append(subprocess.CompletedProcess(p.args, p.returncode, out, err))
    return results


def assert_ok(res):
    assert res.returncode == 0, res.stdout + res.stderr
    assert "Traceback" not in res.stderr, res.stderr


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory):
    """{task: (ckpt path, eval folder, evaluate.py's result)} for dfs and lang."""
    root = tmp_path_factory.mktemp("eval")
    trained = run_all([("train.py", *TINY, "--task", task, "--router", router, "--halt-warmup", "4",
                        "--max-iters", "10", "--out", str(root / task),
                        *(["--chain-order", PARAMS[task]["chain_order"]] if PARAMS[task] else []))
                       for task, router in TASKS])
    for res in trained:
        assert_ok(res)
    runs = run_all([("evaluate.py", "--ckpt", str(root / task / "ckpt.pt"), "--sizes", "4-6",
                     "--num", str(NUM), "--out", str(root / f"{task}-eval"), "--show", "1")
                    for task, _ in TASKS])
    for res in runs:
        assert_ok(res)
    return {task: (root / task / "ckpt.pt", root / f"{task}-eval", res)
            for (task, _), res in zip(TASKS, runs)}


def regenerate(task, n, seed=evaluate.EVAL_SEED, num=NUM):
    """The examples evaluate.py draws for size n (its documented seeding)."""
    rng = random.Random(seed * 1000 + n)
    return [tasks.make_example(task, rng, n, **PARAMS[task]) for _ in range(num)]


@pytest.mark.parametrize("task,router", TASKS)
def test_tokens_csv_and_summary(evaluated, task, router):
    torch.manual_seed(0)
    ckpt_path, out_dir, _ = evaluated[task]
    assert sorted(os.listdir(out_dir)) == ["summary.json", "tokens.csv"]
    with open(out_dir / "tokens.csv", newline="") as f:
        reader = csv.reader(f)
        header = next(reader)
        rows = [dict(zip(header, r)) for r in reader]
    assert header == HEADER + tasks.FEATURES[task]

    ckpt = torch.load(ckpt_path, map_location="cpu", weights_only=False)
    D = ckpt["model_config"]["max_depth"]
    m = ANIRA(ModelConfig(**ckpt["model_config"]))
    m.load_state_dict(ckpt["model"])
    m.eval()

    by_sample = defaultdict(list)
    for r in rows:
        assert r["task"] == task and r["router"] == router
        assert 1 <= int(r["depth"]) <= D
        assert r["correct"] in ("0", "1")
        assert (r["correct"] == "1") == (r["target"] == r["pred"])
        assert r["pred"] in tasks.STOI
        by_sample[int(r["sample"])].append(r)

    # one row per target token, in order, with the task's own features
    samples = sorted(by_sample)
    assert samples == list(range(3 * NUM))
    expected_rows = 0
    for i, n in enumerate((4, 5, 6)):
        examples = regenerate(task, n)
        idx, targets, _ = tasks.make_batch(examples)
        with torch.no_grad():
            out = m(torch.from_numpy(idx), adaptive=torch.from_numpy(targets) != -1)
            exits = m(torch.from_numpy(idx), adaptive=torch.from_numpy(targets) != -1,
                      counterfactual=True).exit_logits
        for j, ex in enumerate(examples):
            sample_rows = by_sample[i * NUM + j]
            expected_rows += len(ex.target)
            assert [r["target"] for r in sample_rows] == ex.target
            assert [int(r["pos"]) for r in sample_rows] == list(range(len(ex.target)))
            assert all(int(r["n"]) == n for r in sample_rows)
            where = np.flatnonzero(targets[j] != -1)
            assert [r["pred"] for r in sample_rows] == \
                tasks.decode(out.logits[j, where].argmax(-1).tolist())
            assert [int(r["depth"]) for r in sample_rows] == out.depth[j, where].tolist()
            for r, p, target in zip(sample_rows, where, targets[j, where]):
                right = [int(lg[j, p].argmax()) == target for lg in exits]
                needed = next((d for d in range(1, D + 1) if all(right[d - 1:])), "")
                assert r["depth_needed"] == str(needed)
                if needed and needed <= int(r["depth"]):  # the routed prediction is the exit at its depth
                    assert r["correct"] == "1"
            for r, feats in zip(sample_rows, ex.features):
                for name in tasks.FEATURES[task]:
                    assert float(r[name]) == pytest.approx(float(feats[name])), (name, r)
    assert len(rows) == expected_rows

    summary = json.loads((out_dir / "summary.json").read_text())
    assert summary["task"] == task and summary["router"] == router
    sizes = summary["sizes"]
    assert [s["n"] for s in sizes] == [4, 5, 6]
    assert [s["ood"] for s in sizes] == [False, False, True]
    for s in sizes:
        assert {"n", "ood", "token_acc", "exact_match", "mean_depth", "num"} <= s.keys()
        assert s["num"] == NUM
        size_rows = [r for r in rows if int(r["n"]) == s["n"]]
        ids = sorted({int(r["sample"]) for r in size_rows})
        assert len(ids) == NUM
        # lang's queried variables are random by design: exact-match skips them
        exact = np.mean([all(r["correct"] == "1" for r in by_sample[k]
                             if not (task == "lang" and int(float(r["kind"])) == tasks.RANDOM)) for k in ids])
        assert s["exact_match"] == pytest.approx(exact, abs=1e-4)
        assert s["token_acc"] == pytest.approx(np.mean([r["correct"] == "1" for r in size_rows]), abs=1e-4)
        assert s["mean_depth"] == pytest.approx(np.mean([int(r["depth"]) for r in size_rows]), abs=1e-3)
        assert 1 <= s["mean_depth"] <= D
        if task == "lang":  # also the accuracy on references
            refs = [r["correct"] == "1" for r in size_rows if int(float(r["kind"])) == tasks.REFERENCE]
            assert s["reference_acc"] == pytest.approx(np.mean(refs), abs=1e-4)
        else:
            assert "reference_acc" not in s
    # pooled over the training sizes and over the others: every token counts once
    for name, ood in (("in_distribution", False), ("ood", True)):
        pooled_rows = [r for r in rows if (int(r["n"]) > 5) == ood]
        pooled = summary[name]
        assert pooled["num"] == NUM * (1 if ood else 2)
        assert pooled["mean_depth"] == pytest.approx(np.mean([int(r["depth"]) for r in pooled_rows]), abs=1e-3)
        assert pooled["token_acc"] == pytest.approx(np.mean([r["correct"] == "1" for r in pooled_rows]), abs=1e-4)
        per_size = [s["exact_match"] for s in sizes if s["ood"] == ood]
        assert pooled["exact_match"] == pytest.approx(np.mean(per_size), abs=1e-3)


def test_depth_needed_is_where_the_exits_stay_right():
    # exits at depths 1..4 of four tokens whose target is class 1
    right, wrong = [0.0, 1.0], [1.0, 0.0]
    per_token = [[right, wrong, right, right],   # right from depth 3 on
                 [wrong, wrong, wrong, wrong],   # never: 0
                 [right, right, right, right],   # from depth 1
                 [right, right, right, wrong]]   # wrong at the last exit: 0
    exit_logits = [torch.tensor([[tok[d] for tok in per_token]]) for d in range(4)]  # 4 x (1, 4, 2)
    targets = torch.ones(1, 4, dtype=torch.long)
    assert evaluate.depth_needed(exit_logits, targets).tolist() == [[3, 0, 1, 0]]


@pytest.mark.parametrize("task", [t for t, _ in TASKS])
def test_train_logs_reference_accuracy_for_lang_only(evaluated, task):
    log = evaluated[task][0].parent / "log.jsonl"
    rows = [json.loads(line) for line in log.read_text().splitlines() if line.strip()]
    for r in rows:
        assert ("reference_acc" in r) == (task == "lang")
        if task == "lang":
            assert 0 <= r["reference_acc"] <= 1


@pytest.mark.parametrize("task", [t for t, _ in TASKS])
def test_show_prints_token_depth_pairs(evaluated, task):
    torch.manual_seed(0)
    ckpt_path, _, res = evaluated[task]
    D = torch.load(ckpt_path, map_location="cpu", weights_only=False)["model_config"]["max_depth"]
    lines = [line for line in res.stdout.splitlines() if line.startswith("output (token:depth):")]
    assert len(lines) == 1, res.stdout
    pairs = lines[0].split(":", 2)[2].split()
    assert pairs
    for pair in pairs:
        pair = pair.split("(")[0]  # (!=expected), or on lang (target:the variable it asked)
        token, depth = pair.rsplit(":", 1)
        assert token in tasks.STOI, pair
        assert 1 <= int(depth) <= D, pair


class Generates:
    """A stand-in for the model in evaluate.show_examples: it generates `tokens`, each at depth 1."""

    def __init__(self, tokens):
        self.tokens = tokens

    def generate(self, prompt, max_new_tokens, end_id=None):
        return torch.tensor([tasks.encode(self.tokens)]), torch.ones(1, len(self.tokens), dtype=torch.long)


def test_show_judges_a_value_by_the_variable_the_model_asked(monkeypatch, capsys):
    """lang: which variable a query asks is random by design. Where the model
    asks another than the target, its value is right if it is that variable's
    (chased through its bindings), and --show says which the target asked."""
    def query(ex, q):  # the target's q-th query: (variable, value, hops)
        return ex.target[4 * q], ex.target[4 * q + 2], ex.features[4 * q + 2]["hops"]

    # an example whose second query has another value than the first, through 2 hops or more
    ex = next(ex for seed in range(100) for ex in [tasks.make_example("lang", random.Random(seed), 5, **PARAMS["lang"])]
              if query(ex, 1)[1] != query(ex, 0)[1] and query(ex, 1)[2] >= 2)
    (asked, _, _), (other, value, _), (third, right, _) = query(ex, 0), query(ex, 1), query(ex, 2)
    wrong = next(v for v in tasks.VALUES if v != right)
    tokens = [other, "->", value, ";"] + ex.target[4:8] + [third, "->", wrong, ";"] + ex.target[12:]
    monkeypatch.setattr(tasks, "make_example", lambda *args, **kwargs: ex)
    evaluate.show_examples(Generates(tokens), "lang", random.Random(0), (5, 5), 1, "cpu", PARAMS["lang"])
    line = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("output (token:depth):"))
    shown = line.split(":", 2)[2].split()
    assert shown[:3] == [f"{other}:1(target:{asked})", "->:1", f"{value}:1"]
    assert shown[4:8] == [f"{t}:1" for t in ex.target[4:8]]
    assert shown[10] == f"{wrong}:1(!={right})"
    assert shown[12:] == [f"{t}:1" for t in ex.target[12:]]
    # a query of no variable is wrong
    tokens = ["->", "->", value] + ex.target[3:]
    evaluate.show_examples(Generates(tokens), "lang", random.Random(0), (5, 5), 1, "cpu", PARAMS["lang"])
    line = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("output (token:depth):"))
    assert line.split(":", 2)[2].split()[0] == f"->:1(!={asked})"
    # a variable's value, chased through its bindings; nothing for a value or an unbound name
    assert evaluate.lang_value(ex.prompt, other) == value
    assert evaluate.lang_value(ex.prompt, value) is None and evaluate.lang_value(ex.prompt, "->") is None


def assert_one_error_line(code, err):
    assert code == 2, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), err
    assert "Traceback" not in err


def test_errors_through_the_command_line(evaluated, tmp_path):
    torch.manual_seed(0)
    out = str(tmp_path / "out")
    results = run_all([
        ("evaluate.py", "--ckpt", str(tmp_path / "missing.pt"), "--out", out),
        ("evaluate.py", "--ckpt", str(evaluated["dfs"][0]), "--sizes", "4-40", "--num", "1", "--out", out),
        ("evaluate.py", "--ckpt", str(evaluated["dfs"][0]), "--num", "1", "--out", "/proc/nope/x"),
    ])
    for res in results:
        assert_one_error_line(res.returncode, res.stderr)
    assert not os.path.exists(out)


def test_errors_in_process(evaluated, tmp_path, capsys):
    torch.manual_seed(0)
    foreign = tmp_path / "foreign.pt"
    torch.save({"weights": torch.zeros(2), "step": 3}, foreign)
    truncated = tmp_path / "truncated.pt"
    data = evaluated["dfs"][0].read_bytes()
    truncated.write_bytes(data[:len(data) // 3])
    out = str(tmp_path / "out")
    for args in (["--ckpt", str(foreign)],
                 ["--ckpt", str(truncated)],
                 ["--ckpt", str(tmp_path)],  # a folder
                 ["--ckpt", str(evaluated["lang"][0]), "--sizes", "20-22", "--num", "1"],  # lang 22 needs 33 labels
                 ["--ckpt", str(evaluated["dfs"][0]), "--sizes", "1-3"],
                 ["--ckpt", str(evaluated["dfs"][0]), "--sizes", "six"],
                 ["--ckpt", str(evaluated["dfs"][0]), "--num", "0"],
                 ["--ckpt", str(evaluated["dfs"][0]), "--out", str(tmp_path / "x.csv")],  # a file name
                 ["--ckpt", str(evaluated["dfs"][0]), "--out", str(foreign)],  # an existing file
                 ["--ckpt", str(evaluated["dfs"][0]), "--out", "/proc/nope/x"]):
        with pytest.raises(SystemExit) as e:
            evaluate.main(["--out", out, *args])  # a later --out wins
        assert_one_error_line(e.value.code, capsys.readouterr().err)
    assert not os.path.exists(out) and not os.path.exists(tmp_path / "x.csv")


def test_same_rows_with_other_batching(evaluated, tmp_path, capsys):
    """Padding and batch composition change nothing: batch size 2 (different
    padding per batch) writes the same CSV, and the same summary numbers."""
    torch.manual_seed(0)
    ckpt_path, out_dir, _ = evaluated["dfs"]
    evaluate.main(["--ckpt", str(ckpt_path), "--sizes", "4-6", "--num", str(NUM),
                   "--batch-size", "2", "--out", str(tmp_path)])
    capsys.readouterr()
    assert (tmp_path / "tokens.csv").read_text() == (out_dir / "tokens.csv").read_text()
    a = json.loads((tmp_path / "summary.json").read_text())["sizes"]
    b = json.loads((out_dir / "summary.json").read_text())["sizes"]
    assert a == b


# -----------------------------------------------------------------------------
# test-time depth (--max-depth, --depth): thinking longer than trained

def perturbed_checkpoint(router, D=3, seed=0, **more):
    """A checkpoint dict of a tiny model with random weights of a large
    spread (so that the online router halts at varied depths), in float64."""
    torch.manual_seed(seed)
    more = {"vocab_size": tasks.vocab_size("lang"), **more}
    m = ANIRA(ModelConfig(d_model=32, n_heads=2, max_depth=D, router=router, **more))
    with torch.no_grad():
        for p in m.parameters():
            p.normal_(0, 0.4)
    return {"model_config": dict(vars(m.cfg)), "model": m.double().state_dict()}


def test_a_deeper_model_runs_the_trained_iterations_first():
    """At a test max_depth above the trained one, the first iterations are the
    trained ones and the extra ones reuse the last depth embedding: forced to
    the trained depth, the deeper model gives the trained model's logits."""
    torch.set_default_dtype(torch.float64)
    try:
        ckpt = perturbed_checkpoint("online", D=3)
        trained, deeper = evaluate.load_model(ckpt), evaluate.load_model(ckpt, max_depth=6)
        assert deeper.cfg.max_depth == 6 and torch.equal(deeper.depth_embed[3:], trained.depth_embed[2:].expand(3, -1))
        idx = torch.randint(0, tasks.vocab_size("lang"), (2, 14))
        with torch.no_grad():
            three = deeper(idx, forced_depth=torch.full_like(idx, 3))
            assert torch.allclose(three.logits, trained(idx, route=False).logits, atol=1e-9)
            six = deeper(idx, route=False)
            assert (six.depth == 6).all() and not torch.allclose(six.logits, three.logits, atol=1e-3)
            routed, routed_trained = deeper(idx), trained(idx)
            # the router carries on where the trained model had to stop: the same halts
            # before depth 3, and tokens stopped at 3 (the trained last) halt at 3 or later,
            # some at a depth never trained (4 or 5)
            before = routed_trained.depth < 3
            assert before.any() and torch.equal(routed.depth[before], routed_trained.depth[before])
            assert (routed.depth[~before] >= 3).all() and ((routed.depth > 3) & (routed.depth < 6)).any()
            # causal at the extra depths too
            other = idx.clone()
            other[:, 9] = (idx[:, 9] + 1) % tasks.vocab_size("lang")
            changed = deeper(other, route=False)
            assert torch.allclose(changed.logits[:, :9], six.logits[:, :9], atol=1e-9)
            # cached generation agrees with the uncached forward at the new depth
            prompt = idx[:, :8]
            tokens, depths = deeper.generate(prompt, 6)
            adaptive = torch.zeros(2, 13, dtype=torch.bool)
            adaptive[:, 7:] = True
            full = deeper(torch.cat([prompt, tokens[:, :-1]], 1), adaptive=adaptive)
            assert torch.equal(full.logits[:, 7:].argmax(-1), tokens) and torch.equal(full.depth[:, 7:], depths)
    finally:
        torch.set_default_dtype(torch.float32)


def test_the_hops_oracle_runs_each_reference_its_hops(tmp_path, capsys):
    ckpt = perturbed_checkpoint("online", D=4)
    torch.save({**ckpt, "model": {k: v.float() for k, v in ckpt["model"].items()},
                "config": {"task": "lang", "router": "online", "size_range": [4, 5], "chain_order": "reverse"},
                "step": 0, "optimizer": {}}, tmp_path / "ckpt.pt")
    evaluate.main(["--ckpt", str(tmp_path / "ckpt.pt"), "--sizes", "6", "--num", "8", "--hops", "6",
                   "--max-depth", "6", "--depth", "hops", "--out", str(tmp_path)])
    capsys.readouterr()
    rows = list(csv.DictReader(open(tmp_path / "tokens.csv")))
    assert max(int(r["hops"]) for r in rows) > 4  # chains longer than the default
    for r in rows:
        assert int(r["depth"]) == max(1, int(r["hops"]))
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["max_depth"] == 6 and summary["trained_max_depth"] == 4 and summary["depth"] == "hops"
    assert summary["task_params"]["hops"] == 6 and summary["trained_task_params"]["hops"] == 4
    refs = [r for r in rows if int(r["kind"]) == tasks.REFERENCE]
    for h in summary["by_hops"]:
        of_h = [r for r in refs if int(r["hops"]) == h["hops"]]
        assert h["num"] == len(of_h) and h["mean_depth"] == max(1, h["hops"])
        assert h["reference_acc"] == pytest.approx(np.mean([int(r["correct"]) for r in of_h]), abs=1e-4)
    # --uniform-hops: every prompt asks for the end of a chain of 1..6 hops; one that does not fit is an error
    evaluate.main(["--ckpt", str(tmp_path / "ckpt.pt"), "--sizes", "6", "--num", "48", "--hops", "6",
                   "--uniform-hops", "--max-depth", "6", "--depth", "hops", "--out", str(tmp_path)])
    capsys.readouterr()
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["task_params"]["uniform_hops"] and [h["hops"] for h in summary["by_hops"]] == list(range(1, 7))
    with pytest.raises(SystemExit) as e:
        evaluate.main(["--ckpt", str(tmp_path / "ckpt.pt"), "--sizes", "5", "--num", "2", "--hops", "6",
                       "--uniform-hops", "--out", str(tmp_path)])
    assert_one_error_line(e.value.code, capsys.readouterr().err)


def test_halt_when_converged_reaches_the_model(tmp_path, capsys):
    """--halt-when-converged: no answer token halts after its first iteration
    (its exit has nothing to repeat yet), where the router alone halts some."""
    ckpt = perturbed_checkpoint("online", D=4)
    torch.save({**ckpt, "model": {k: v.float() for k, v in ckpt["model"].items()},
                "config": {"task": "dfs", "router": "online", "size_range": [4, 5]}, "step": 0,
                "optimizer": {}}, tmp_path / "ckpt.pt")
    depths = {}
    for converged in (False, True):
        evaluate.main(["--ckpt", str(tmp_path / "ckpt.pt"), "--sizes", "4-5", "--num", "8", "--out", str(tmp_path)]
                      + ["--halt-when-converged"] * converged)
        depths[converged] = [int(r["depth"]) for r in csv.DictReader(open(tmp_path / "tokens.csv"))]
    assert "once its exit repeats" in capsys.readouterr().out
    assert 1 in depths[False] and min(depths[True]) >= 2
    assert json.loads((tmp_path / "summary.json").read_text())["args"]["halt_when_converged"]


def test_a_lang_checkpoint_is_tested_on_its_own_pool_of_names(tmp_path, capsys):
    """The names a checkpoint was trained with are those of its tests (they are
    in its vocabulary); one of another vocabulary is a one-line error."""
    ckpt = perturbed_checkpoint("online", D=4, vocab_size=tasks.vocab_size("lang", 24))
    torch.save({**ckpt, "model": {k: v.float() for k, v in ckpt["model"].items()},
                "config": {"task": "lang", "router": "online", "size_range": [4, 12], "chain_order": "reverse",
                           "names": 24}, "step": 0, "optimizer": {}}, tmp_path / "ckpt.pt")
    evaluate.main(["--ckpt", str(tmp_path / "ckpt.pt"), "--sizes", "12-16", "--num", "4", "--out", str(tmp_path)])
    capsys.readouterr()
    rows = list(csv.DictReader(open(tmp_path / "tokens.csv")))
    assert {int(r["n"]) for r in rows} == set(range(12, 17)) and any(int(r["target"]) >= 16 for r in rows
                                                                     if r["target"].isdigit())
    assert json.loads((tmp_path / "summary.json").read_text())["task_params"]["names"] == 24
    older = torch.load(tmp_path / "ckpt.pt")
    older["config"]["names"] = 16  # its vocabulary no longer fits its pool
    torch.save(older, tmp_path / "older.pt")
    with pytest.raises(SystemExit):
        evaluate.main(["--ckpt", str(tmp_path / "older.pt"), "--num", "2", "--out", str(tmp_path)])
    assert "vocabulary of 43 tokens" in capsys.readouterr().err


def test_test_time_depth_errors(tmp_path, capsys):
    for router, more, args in (("early", {}, ["--max-depth", "5"]),  # ANIRA-E cannot choose depth 5
                               ("none", {"share": False}, ["--max-depth", "5"]),  # no block for depth 5
                               ("online", {}, ["--depth", "hops"]),  # dfs has no hops
                               ("online", {}, ["--hops", "6"]),
                               ("early", {}, ["--halt-when-converged"]),  # a rule of the online router's
                               ("online", {}, ["--halt-when-converged", "--depth", "max"])):
        ckpt = perturbed_checkpoint(router, **more)
        torch.save({**ckpt, "model": {k: v.float() for k, v in ckpt["model"].items()},
                    "config": {"task": "dfs", "router": router, "size_range": [4, 5]}, "step": 0,
                    "optimizer": {}}, tmp_path / "ckpt.pt")
        with pytest.raises(SystemExit) as e:
            evaluate.main(["--ckpt", str(tmp_path / "ckpt.pt"), "--sizes", "4", "--num", "1",
                           "--out", str(tmp_path), *args])
        assert_one_error_line(e.value.code, capsys.readouterr().err)
    # the early router runs to a depth it never chose when an oracle decides
    evaluate.main(["--ckpt", str(tmp_path / "ckpt.pt"), "--sizes", "4", "--num", "2", "--out", str(tmp_path)])
    ckpt = perturbed_checkpoint("early")
    torch.save({**ckpt, "model": {k: v.float() for k, v in ckpt["model"].items()},
                "config": {"task": "dfs", "router": "early", "size_range": [4, 5]}, "step": 0,
                "optimizer": {}}, tmp_path / "ckpt.pt")
    evaluate.main(["--ckpt", str(tmp_path / "ckpt.pt"), "--sizes", "4", "--num", "2", "--max-depth", "5",
                   "--depth", "max", "--out", str(tmp_path)])
    assert {int(r["depth"]) for r in csv.DictReader(open(tmp_path / "tokens.csv"))} == {5}


def test_per_step_accuracy_counts_a_step_only_after_a_right_one():
    hop_exits = [(True, True, False), (True, False, True), (False, True, True), (True, True), (False,)]
    p = evaluate.per_step_accuracy(hop_exits)
    # step 2 follows a right exit 1 in the 1st, 2nd and 4th chases (right in two); step 3 in the 1st and 3rd (one)
    assert p == {"p": 0.6, "steps": 5, "first": 0.6, "by_step": {2: 0.6667, 3: 0.5}}


def test_oracle_depths_and_each_exit_against_its_hop():
    """--depth hops / 4x / control, and hop_exits: exit k against the k-th hop
    of the reference's chase, on exits built to name every hop but one."""
    examples = [tasks.make_example("lang", random.Random(s), 6, **PARAMS["lang"]) for s in range(4)]
    idx, targets, feats = tasks.make_batch(examples)
    targets_t, D = torch.from_numpy(targets), 8
    hops = np.nan_to_num(feats["hops"])
    answer = targets != -1
    for depth, expected in (("hops", np.clip(hops, 1, D)), ("4x", np.clip(4 * hops, 1, D))):
        forced = evaluate.forced_depth(depth, feats, targets_t, D).numpy()
        assert (forced[answer] == expected[answer]).all() and (forced[~answer] == D).all()
    assert (evaluate.forced_depth("control", feats, targets_t, D, trained_hops=4).numpy() == 4).all()
    assert evaluate.forced_depth("router", feats, targets_t, D) is None
    # exits that name each hop of every chase (one-hot logits), then exit 2 of one reference wrong
    hop_targets = torch.from_numpy(tasks.exit_targets(examples, targets, D)).clamp(min=0)
    logits = [F.one_hot(hop_targets[..., k], tasks.vocab_size("lang")).float() for k in range(D)]
    b, p = next((b, p) for b in range(len(examples)) for p in np.flatnonzero(answer[b]) if hops[b, p] >= 3)
    logits[1][b, p] = logits[1][b, p].roll(1)
    right = evaluate.hop_exits_right(logits, examples, targets)
    for e, ex in enumerate(examples):
        for j, q in enumerate(np.flatnonzero(answer[e])):
            chase = evaluate.hop_exits(right, ex, e, j, q)
            if ex.features[j]["kind"] != tasks.REFERENCE:
                assert chase is None
            else:
                assert len(chase) == ex.features[j]["hops"]
                assert chase == tuple(not (e == b and q == p and k == 1) for k in range(len(chase)))
