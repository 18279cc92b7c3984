"""Tests for train.py: outputs of a short run, exact resume, atomic and
interrupt-safe checkpoints, the non-finite-loss stop, and one-line errors.

Runs are tiny (d_model 32, depth 3, batch 8, a handful of steps) and go
through the real command line (subprocess) where the process matters (exit
code, SIGINT, files), in-process where a fault has to be injected.
"""
import json
import math
import os
import random
import signal
import subprocess
import sys
import time

import pytest
import torch

import model as model_module
import tasks
import train
from model import ANIRA, ModelConfig

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENV = dict(os.environ, OMP_NUM_THREADS="1")
TINY = ["--d-model", "32", "--n-heads", "2", "--max-depth", "3", "--batch-size", "8",
        "--eval-num", "16", "--eval-every", "5", "--sizes", "4-5", "--max-minutes", "1000"]
LOG_KEYS = {"step", "loss", "token_acc", "exact_match", "mean_depth", "std_depth"}


def start(script, *args):
    return subprocess.Popen([sys.executable, script, *args], cwd=REPO, env=ENV, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def finish(proc, timeout=180):
    out, err = proc.communicate(timeout=timeout)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def run(script, *args, timeout=180):
    return finish(start(script, *args), timeout)


def run_all(commands):
    """Start several short commands at once (most of their time is importing torch)."""
    procs = [start(*c) for c in commands]
    return [finish(p) for p in procs]


def assert_ok(res):
    assert res.returncode == 0, res.stdout + res.stderr
    assert "Traceback" not in res.stderr, res.stderr


def assert_one_error_line(code, err):
    assert code not in (0, None), err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), err
    assert "Traceback" not in err


def load(path):
    return torch.load(path, map_location="cpu", weights_only=False)


def states_equal(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.fixture(scope="module")
def run_a(tmp_path_factory):
    """10 steps straight, halting switched on after 3 steps."""
    torch.manual_seed(0)
    out = tmp_path_factory.mktemp("train") / "A"
    res = run("train.py", *TINY, "--halt-warmup", "3", "--max-iters", "10", "--out", str(out))
    assert_ok(res)
    return out, res


# -----------------------------------------------------------------------------

def test_short_run_writes_outputs(run_a):
    torch.manual_seed(0)
    out, res = run_a
    assert sorted(os.listdir(out)) == ["ckpt.pt", "config.json", "log.jsonl"]  # and no ckpt.pt.tmp
    assert "saved" in res.stdout and "step" in res.stdout

    rows = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines() if line.strip()]
    assert [r["step"] for r in rows] == [0, 5, 10]
    for r in rows:
        assert LOG_KEYS <= r.keys(), r
        assert 0 <= r["token_acc"] <= 1 and 0 <= r["exact_match"] <= 1
        assert 1 <= r["mean_depth"] <= 3 and r["std_depth"] >= 0
        assert r["loss"] > 0
    # the training loss terms averaged since the previous evaluation (none before step 0)
    assert not any(k.startswith("train_") for k in rows[0])
    for r in rows[1:]:
        assert {"train_lm", "train_halt", "train_prompt", "train_target_depth"} <= r.keys(), r
        # means of model.loss's terms over the steps since: the learning rate warms up over
        # 100 steps, so the model is barely trained and its cross-entropies are near ln V
        assert r["train_lm"] == pytest.approx(math.log(tasks.vocab_size("dfs")), abs=0.2)
        assert r["train_prompt"] == pytest.approx(math.log(tasks.vocab_size("dfs")), abs=0.2)
        assert r["train_halt"] > 0 and 1 <= r["train_target_depth"] <= 3  # -log p(d*), p never one-hot

    config = json.loads((out / "config.json").read_text())
    assert config["task"] == "dfs" and config["router"] == "online"
    assert config["max_depth"] == 3 and config["d_model"] == 32 and config["sizes"] == "4-5"

    ckpt = load(out / "ckpt.pt")
    assert {"model", "optimizer", "config", "model_config", "step", "rng", "torch_rng"} <= ckpt.keys()
    assert ckpt["step"] == 10
    m = ANIRA(ModelConfig(**ckpt["model_config"]))
    m.load_state_dict(ckpt["model"])
    assert m.cfg.max_depth == 3 and m.cfg.router == "online" and m.cfg.vocab_size == tasks.vocab_size("dfs")
    assert all(torch.isfinite(v).all() for v in ckpt["model"].values())


def test_prompt_loss_default_follows_the_task():
    for task in tasks.TASKS:
        assert train.parse_args(["--task", task]).prompt_loss == tasks.PROMPT_LOSS[task]
        assert train.parse_args(["--task", task, "--prompt-loss", "on"]).prompt_loss is True
        assert train.parse_args(["--task", task, "--prompt-loss", "off"]).prompt_loss is False
    assert tasks.PROMPT_LOSS == {"dfs": True, "topo": True, "lang": False}


@pytest.mark.parametrize("flags", [["--task", "dfs"], ["--task", "lang", "--chain-order", "reverse", "--hints", "on"]],
                         ids=["dfs-prompt-loss", "lang-hints"])
def test_the_training_step_skips_only_what_no_loss_reads(flags):
    """train.py's forward skips the last iteration of tokens whose logits no
    loss reads (read_by_loss): the answer and, on dfs (--prompt-loss), the
    prompt are read, so the loss and its gradients are those of the full
    forward (float64); the skip is real, fewer rows than tokens."""
    before = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        args = train.parse_args([*flags, "--d-model", "32", "--n-heads", "2", "--batch-size", "6", "--max-depth", "3"])
        batch = train.training_batch(0, random.Random(0), args, "cpu")
        idx, targets, prompt, exits = batch
        read = train.read_by_loss(targets, prompt)
        assert (prompt is not None) == (args.task == "dfs") and 0 < int(read.sum()) < idx.numel()
        torch.manual_seed(0)
        m = ANIRA(train.model_config(args))
        grads = []
        for loss_of in (lambda: train.forward_and_loss(m, batch, args)[0],
                        lambda: m.loss(m(idx, adaptive=targets != -1, counterfactual=True), targets, args.ponder,
                                       prompt, exits)[0]):
            m.zero_grad()
            loss = loss_of()
            loss.backward()
            grads.append((loss.detach(), [p.grad.clone() for p in m.parameters() if p.grad is not None]))
        (skipped, g1), (full, g2) = grads
        assert torch.allclose(skipped, full, atol=1e-9) and len(g1) == len(g2)
        assert all(torch.allclose(a, b, atol=1e-9) for a, b in zip(g1, g2))
    finally:
        torch.set_default_dtype(before)


def test_help():
    torch.manual_seed(0)
    for res in run_all([("train.py", "--help"), ("evaluate.py", "--help"), ("tasks.py", "--help")]):
        assert_ok(res)
        assert "usage:" in res.stdout


def test_resume_round_trip(run_a, tmp_path):
    """5 steps, then --resume to 10: the same model, optimizer and RNG as 10 straight."""
    torch.manual_seed(0)
    a_dir, _ = run_a
    b_dir = tmp_path / "B"
    flags = [*TINY, "--halt-warmup", "3", "--out", str(b_dir)]
    assert_ok(run("train.py", *flags, "--max-iters", "5"))
    assert load(b_dir / "ckpt.pt")["step"] == 5
    res = run("train.py", *flags, "--max-iters", "10", "--resume")
    assert_ok(res)
    assert "step     0 |" not in res.stdout  # it continued, it did not start again
    a, b = load(a_dir / "ckpt.pt"), load(b_dir / "ckpt.pt")
    assert b["step"] == 10
    assert states_equal(a["model"], b["model"]), max(
        (a["model"][k] - b["model"][k]).abs().max().item() for k in a["model"])
    sa, sb = a["optimizer"]["state"], b["optimizer"]["state"]
    assert sa.keys() == sb.keys()
    for k in sa:
        assert states_equal(sa[k], sb[k])
    assert a["rng"] == b["rng"]
    assert torch.equal(a["torch_rng"], b["torch_rng"])
    assert not os.path.exists(b_dir / "ckpt.pt.tmp")
    log_a = [json.loads(x) for x in (a_dir / "log.jsonl").read_text().splitlines()]
    log_b = [json.loads(x) for x in (b_dir / "log.jsonl").read_text().splitlines()]
    assert log_b[-1]["step"] == 10
    assert log_b[-1]["loss"] == log_a[-1]["loss"] and log_b[-1]["token_acc"] == log_a[-1]["token_acc"]


def test_ctrl_c_saves_and_exits_cleanly(tmp_path):
    torch.manual_seed(0)
    out = tmp_path / "int"
    proc = start("train.py", *TINY, "--max-iters", "100000", "--out", str(out))
    log = out / "log.jsonl"
    deadline = time.time() + 120
    try:
        while True:  # wait until it has trained and checkpointed past step 0
            assert proc.poll() is None, proc.communicate()
            assert time.time() < deadline, "no checkpoint after step 0 in 120 s"
            if (out / "ckpt.pt").exists() and log.exists() and any(
                    json.loads(line)["step"] >= 5 for line in log.read_text().splitlines()
                    if line.endswith("}")):
                break
            time.sleep(0.1)
        time.sleep(0.3)
        proc.send_signal(signal.SIGINT)
        res = finish(proc, timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert res.returncode == 0, res.stdout + res.stderr
    assert "interrupted" in res.stdout
    assert "Traceback" not in res.stderr
    assert not os.path.exists(str(out / "ckpt.pt") + ".tmp")
    ckpt = train.load_checkpoint(str(out / "ckpt.pt"))
    assert ckpt["step"] >= 5
    assert f"interrupted at step {ckpt['step']}" in res.stdout
    m = ANIRA(ModelConfig(**ckpt["model_config"]))
    m.load_state_dict(ckpt["model"])


# -----------------------------------------------------------------------------
# in-process fault injection

def poisoned_loss(monkeypatch, at_call, kind):
    """Patch ANIRA.loss: from call `at_call` on (0-based, one call per step),
    kind "nan" returns a NaN loss; kind "grad" returns a finite loss whose
    gradient is NaN once (the update then breaks the weights)."""
    original = model_module.ANIRA.loss
    calls = []

    def loss(self, *args):
        value, parts = original(self, *args)
        calls.append(len(calls))
        if kind == "nan" and len(calls) > at_call:
            value = value * float("nan")
        if kind == "grad" and len(calls) == at_call + 1:
            zero = value - value
            value = value + 0.0 * torch.sqrt(zero)  # value unchanged, gradient NaN
            assert torch.isfinite(value)
        return value, parts

    monkeypatch.setattr(model_module.ANIRA, "loss", loss)
    return calls


def check_good_checkpoint(path, expect_step):
    ckpt = train.load_checkpoint(str(path))
    assert all(torch.isfinite(v).all() for v in ckpt["model"].values()), \
        f"the checkpoint kept after a non-finite loss (step {ckpt['step']}) has non-finite weights"
    m = ANIRA(ModelConfig(**ckpt["model_config"]))
    m.load_state_dict(ckpt["model"])
    idx, targets, _ = tasks.make_batch(tasks.sample_examples("dfs", random.Random(0), (4, 5), 4))
    with torch.no_grad():
        targets = torch.from_numpy(targets)
        loss, _ = m.loss(m(torch.from_numpy(idx), adaptive=targets != -1, counterfactual=True), targets)
    assert torch.isfinite(loss), "the checkpoint kept as the last good one gives a non-finite loss"
    assert ckpt["step"] == expect_step


def test_non_finite_loss_stops_and_keeps_checkpoint(tmp_path, monkeypatch, capsys):
    torch.manual_seed(0)
    out = tmp_path / "nan"
    calls = poisoned_loss(monkeypatch, at_call=7, kind="nan")
    with pytest.raises(SystemExit) as e:
        train.main([*TINY, "--max-iters", "20", "--out", str(out)])
    assert e.value.code == 1
    assert len(calls) == 8  # it stopped at the first bad step
    err = capsys.readouterr().err
    assert "error:" in err and "nan" in err and "step 7" in err
    assert not os.path.exists(str(out / "ckpt.pt") + ".tmp")
    monkeypatch.undo()
    check_good_checkpoint(out / "ckpt.pt", expect_step=5)


def test_non_finite_after_a_bad_update_on_a_checkpoint_step(tmp_path, monkeypatch, capsys):
    """The update of step 4 breaks the weights (its loss was finite, its
    gradient was not); step 5 is a checkpoint step and its loss is NaN. The
    checkpoint kept must be the last good one (step 0), not the broken
    weights of step 5."""
    torch.manual_seed(0)
    out = tmp_path / "nan2"
    poisoned_loss(monkeypatch, at_call=4, kind="grad")
    with pytest.raises(SystemExit) as e:
        train.main([*TINY, "--max-iters", "20", "--out", str(out)])
    assert e.value.code == 1
    err = capsys.readouterr().err
    assert "error:" in err and "step 5" in err
    monkeypatch.undo()
    check_good_checkpoint(out / "ckpt.pt", expect_step=0)


def test_ctrl_c_inside_an_update_finishes_that_update(tmp_path, monkeypatch, capsys):
    """Ctrl-C arriving in the middle of optimizer.step() (here: at the start of
    the 7th update) lets that update finish and saves after it, so the
    checkpoint never holds a half-applied step."""
    torch.manual_seed(0)
    out = tmp_path / "mid"
    real_step = torch.optim.AdamW.step
    updates = []

    def step_with_sigint(self, *a, **k):
        updates.append(1)
        if len(updates) == 7:
            os.kill(os.getpid(), signal.SIGINT)
        return real_step(self, *a, **k)

    monkeypatch.setattr(torch.optim.AdamW, "step", step_with_sigint)
    handler = signal.getsignal(signal.SIGINT)
    train.main([*TINY, "--max-iters", "20", "--out", str(out)])
    assert signal.getsignal(signal.SIGINT) is handler, "train.main left its Ctrl-C handler behind"
    assert "interrupted at step 7" in capsys.readouterr().out
    ckpt = train.load_checkpoint(str(out / "ckpt.pt"))
    assert ckpt["step"] == 7 and len(updates) == 7
    assert {int(s["step"]) for s in ckpt["optimizer"]["state"].values()} == {7}


def test_curriculum_grows_the_largest_size(tmp_path):
    args = train.parse_args(["--sizes", "4-8", "--curriculum", "100"])
    rng = random.Random(0)
    for step, top in ((0, 4), (50, 6), (100, 8), (5000, 8)):
        sizes = [train.size_range_for_step(step, rng, args) for _ in range(300)]
        assert all(lo == hi for lo, hi in sizes), "one size per batch"
        assert {lo for lo, _ in sizes} == set(range(4, top + 1))


def test_hops_sets_the_longest_chain_of_lang():
    args = train.parse_args(["--task", "lang", "--chain-order", "reverse", "--hints", "on", "--hops", "2"])
    rng = random.Random(0)
    _, targets, prompt, exits = train.training_batch(0, rng, args, torch.device("cpu"))
    assert prompt is None and exits.shape == (*targets.shape, args.max_depth)
    chased = (exits != targets[..., None]).sum(-1)  # exits that name a variable, not the answer
    assert int(chased.max()) == 1  # chains of at most 2 hops: one variable, then the value
    with pytest.raises(SystemExit):
        train.parse_args(["--task", "dfs", "--hops", "3"])


def test_names_gives_lang_a_pool_of_its_own():
    """--names draws lang's variables from a larger pool, whose names beyond the
    labels are tokens of lang's alone: the model's vocabulary grows with it,
    dfs keeps its own, and the old lang vocabulary is unchanged."""
    args = train.parse_args(["--task", "lang", "--names", "24", "--sizes", "12"])
    idx = train.training_batch(0, random.Random(0), args, torch.device("cpu"))[0]
    assert int(idx.max()) >= tasks.vocab_size("lang") and int(idx.max()) < tasks.vocab_size("lang", 24)
    assert train.model_config(args).vocab_size == tasks.vocab_size("lang", 24) == tasks.vocab_size("lang") + 8
    assert train.model_config(train.parse_args([])).vocab_size == tasks.vocab_size("dfs") == tasks.vocab_size("lang")
    for bad in (["--task", "dfs", "--names", "24"], ["--task", "lang", "--names", str(tasks.MAX_NAMES + 1)],
                ["--task", "lang", "--names", "16", "--sizes", "12"]):  # 12 variables and 6 distractors
        with pytest.raises(SystemExit):
            train.parse_args(bad)


def test_held_out_depth_before_halting_is_switched_on():
    """Before halting is on (route False) every answer token runs max_depth, the
    prompt its prompt_depth: the answer is not mistaken for the prompt."""
    args = train.parse_args(["--task", "lang", "--max-depth", "3", "--prompt-depth", "1", "--anchor"])
    torch.manual_seed(0)
    model = ANIRA(train.model_config(args))
    examples = tasks.sample_examples("lang", random.Random(0), (4, 6), 8)
    stats = train.evaluate_held_out(model, examples, args, torch.device("cpu"), route=False)
    assert stats["mean_depth"] == 3 and stats["std_depth"] == 0


def test_anchor_forcing_feeds_the_true_hops_to_the_training_forward():
    """--anchor-forcing F: the training forward's anchors are the exits' hint
    targets (the true hops) for about a fraction F of them, -1 (the model's
    own prediction) for the rest; and forward_and_loss passes them."""
    args = train.parse_args(["--task", "lang", "--hints", "on", "--anchor", "--prompt-depth", "1",
                             "--max-depth", "4", "--anchor-forcing", "1", "--batch-size", "16"])
    batch = train.training_batch(0, random.Random(0), args, torch.device("cpu"))
    assert train.forced_anchors(batch.exits, 0) is None
    assert torch.equal(train.forced_anchors(batch.exits, 1), batch.exits)
    torch.manual_seed(0)
    half = train.forced_anchors(batch.exits, 0.5)
    forced = (half != -1) & (batch.exits != -1)
    assert torch.equal(half[forced], batch.exits[forced]) and (half[batch.exits != -1] == -1).any()
    assert abs(forced.sum() / (batch.exits != -1).sum() - 0.5) < 0.1
    torch.manual_seed(0)
    model = ANIRA(train.model_config(args))
    loss = train.forward_and_loss(model, batch, args)[0]
    idx, targets = batch.idx, batch.targets
    out = model(idx, adaptive=targets != -1, counterfactual=True, outputs=targets != -1, anchors=batch.exits)
    assert torch.allclose(loss, model.loss(out, targets, args.ponder, None, batch.exits)[0])
    args.anchor_forcing = 0
    assert not torch.allclose(loss, train.forward_and_loss(model, batch, args)[0])


def test_checkpoint_write_is_atomic(tmp_path, monkeypatch, capsys):
    """A save that dies half way leaves the previous checkpoint intact."""
    torch.manual_seed(0)
    out = tmp_path / "atomic"
    real_save = torch.save
    saves = []

    def failing_save(obj, f, *a, **k):
        saves.append(str(f))
        if len(saves) == 2:  # the step-5 checkpoint: write half of it, then crash
            with open(f, "wb") as fh:
                fh.write(b"PK\x03\x04 half a checkpoint")
            raise OSError("disk full")
        return real_save(obj, f, *a, **k)

    monkeypatch.setattr(torch, "save", failing_save)
    with pytest.raises(OSError):
        train.main([*TINY, "--max-iters", "20", "--out", str(out)])
    assert all(s.endswith(".tmp") for s in saves)  # never written in place
    ckpt = train.load_checkpoint(str(out / "ckpt.pt"))
    assert ckpt["step"] == 0


# -----------------------------------------------------------------------------
# errors: one line, non-zero exit, no traceback

@pytest.fixture(scope="module")
def early_ckpt_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("early") / "E"
    train.main([*TINY, "--router", "early", "--max-iters", "1", "--eval-every", "100", "--out", str(out)])
    return out


@pytest.mark.parametrize("args", [
    ["--task", "nope"],
    ["--router", "nope"],
    ["--sizes", "8-4"],
    ["--sizes", "4-99"],
    ["--sizes", "abc"],
    ["--sizes", "4-5-6"],
    ["--no-share", "--router", "online"],
    ["--d-model", "30"],
    ["--curriculum", "-5"],
    ["--halt-warmup", "-1"],
    ["--ponder", "-0.1"],
    ["--task", "dfs", "--chain-order", "reverse"],
    ["--task", "dfs", "--hints", "on"],
    ["--router", "online", "--early-input", "embeddings"],
    ["--router", "early", "--early-input", "stack"],
    ["--lr", "nan"],
    ["--lr", "-1"],
    ["--min-lr", "nan"],
    ["--weight-decay", "inf"],
    ["--weight-decay", "-0.1"],
    ["--grad-clip", "nan"],
    ["--grad-clip", "-1"],
    ["--max-minutes", "nan"],
    ["--ponder", "inf"],
    ["--anchor", "--reinject"],
    ["--anchor", "--norm-state"],
    ["--max-depth", "3", "--prompt-depth", "4"],
    ["--prompt-depth", "-1"],
    ["--task", "lang", "--hints", "on", "--anchor-forcing", "1"],
    ["--task", "lang", "--anchor", "--anchor-forcing", "1"],
    ["--task", "lang", "--hints", "on", "--anchor", "--anchor-forcing", "1.5"],
], ids=lambda a: " ".join(a))
def test_bad_arguments(args, tmp_path, capsys):
    torch.manual_seed(0)
    flags = [*TINY, "--out", str(tmp_path / "x"), *args]
    with pytest.raises(SystemExit) as e:
        train.main(flags)
    assert_one_error_line(e.value.code, capsys.readouterr().err)
    assert not os.path.exists(tmp_path / "x")


def test_resume_without_checkpoint(tmp_path, capsys):
    torch.manual_seed(0)
    with pytest.raises(SystemExit) as e:
        train.main([*TINY, "--resume", "--out", str(tmp_path / "none")])
    err = capsys.readouterr().err
    assert_one_error_line(e.value.code, err)
    assert "checkpoint" in err


def test_resume_other_router(early_ckpt_dir, capsys):
    torch.manual_seed(0)
    before = (early_ckpt_dir / "ckpt.pt").read_bytes()
    with pytest.raises(SystemExit) as e:
        train.main([*TINY, "--router", "online", "--resume", "--out", str(early_ckpt_dir)])
    err = capsys.readouterr().err
    assert_one_error_line(e.value.code, err)
    assert "router" in err
    assert (early_ckpt_dir / "ckpt.pt").read_bytes() == before
    assert json.loads((early_ckpt_dir / "config.json").read_text())["router"] == "early"


def test_load_checkpoint_rejects_bad_files(early_ckpt_dir, tmp_path, capsys):
    torch.manual_seed(0)
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(os.urandom(300))
    truncated = tmp_path / "truncated.pt"
    data = (early_ckpt_dir / "ckpt.pt").read_bytes()
    truncated.write_bytes(data[:len(data) // 2])
    foreign = tmp_path / "foreign.pt"
    torch.save({"weights": torch.zeros(3)}, foreign)
    not_a_dict = tmp_path / "list.pt"
    torch.save([1, 2, 3], not_a_dict)
    other_vocab = tmp_path / "other_vocab.pt"  # e.g. trained before N_LABELS changed
    ckpt = torch.load(early_ckpt_dir / "ckpt.pt", weights_only=False)
    ckpt["model_config"]["vocab_size"] = len(tasks.VOCAB) + 16
    torch.save(ckpt, other_vocab)
    older_model = tmp_path / "older_model.pt"  # e.g. trained before token_shift existed
    ckpt = torch.load(early_ckpt_dir / "ckpt.pt", weights_only=False)
    del ckpt["model_config"]["token_shift"]
    torch.save(ckpt, older_model)
    for path in (garbage, truncated, foreign, not_a_dict, other_vocab, older_model, tmp_path / "missing.pt"):
        with pytest.raises(SystemExit) as e:
            train.load_checkpoint(str(path))
        assert_one_error_line(e.value.code, capsys.readouterr().err)
    assert train.load_checkpoint(str(early_ckpt_dir / "ckpt.pt"))["step"] == 1


def test_a_checkpoint_from_before_the_later_fields_loads_as_it_ran(early_ckpt_dir, tmp_path):
    """A field ModelConfig gained later takes the value the older checkpoint
    ran with (early_input, ..., halt_when_converged)."""
    ckpt = torch.load(early_ckpt_dir / "ckpt.pt", weights_only=True)
    for field in train.MODEL_FIELDS_ADDED:
        del ckpt["model_config"][field]
    older = tmp_path / "older.pt"
    torch.save(ckpt, older)
    loaded = train.load_checkpoint(str(older))["model_config"]
    assert loaded["early_input"] == "prelude" and loaded["halt_when_converged"] is False
    assert {k: loaded[k] for k in train.MODEL_FIELDS_ADDED} == train.MODEL_FIELDS_ADDED


def test_errors_through_the_command_line(early_ckpt_dir, tmp_path):
    """The same errors as a user sees them: exit code, one line, no traceback."""
    torch.manual_seed(0)
    x = str(tmp_path / "x")
    results = run_all([
        ("train.py", *TINY, "--sizes", "4-99", "--out", x),
        ("train.py", *TINY, "--router", "none", "--resume", "--out", str(early_ckpt_dir)),
    ])
    for res in results:
        assert_one_error_line(res.returncode, res.stderr)
    assert not os.path.exists(x)


class RunsCode:
    """A pickled object whose unpickling makes a folder: the attack a shared checkpoint can carry."""
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.mkdir, (self.marker,)


def test_a_checkpoint_that_carries_code_never_runs_it(early_ckpt_dir, tmp_path, capsys):
    marker = tmp_path / "code_ran"
    ckpt = load(early_ckpt_dir / "ckpt.pt")
    ckpt["model"] = RunsCode(str(marker))
    evil_dir = tmp_path / "evil"
    evil_dir.mkdir()
    torch.save(ckpt, evil_dir / "ckpt.pt")
    with pytest.raises(SystemExit) as e:
        train.load_checkpoint(str(evil_dir / "ckpt.pt"))
    assert_one_error_line(e.value.code, capsys.readouterr().err)
    results = run_all([
        ("evaluate.py", "--ckpt", str(evil_dir / "ckpt.pt"), "--out", str(tmp_path / "ev")),
        ("train.py", *TINY, "--router", "early", "--resume", "--out", str(evil_dir)),
    ])
    for res in results:
        assert_one_error_line(res.returncode, res.stderr)
    assert not marker.exists()


def test_unwritable_out_is_one_error_line(tmp_path):
    a_file = tmp_path / "file"
    a_file.write_text("")
    results = run_all([("train.py", *TINY, "--max-iters", "1", "--out", "/proc/nope/x"),
                       ("train.py", *TINY, "--max-iters", "1", "--out", str(a_file))])
    for res in results:
        assert_one_error_line(res.returncode, res.stderr)
        assert "--out" in res.stderr


def steps_logged(out):
    return [json.loads(line)["step"] for line in (out / "log.jsonl").read_text().splitlines()]


def test_log_holds_each_step_once(tmp_path, capsys):
    """Resuming at or below the checkpoint's step adds no row; rows a killed run
    wrote after its last checkpoint (and half a row) are replaced, not repeated."""
    torch.manual_seed(0)
    out = tmp_path / "r"
    flags = [*TINY, "--eval-every", "2", "--out", str(out)]
    train.main([*flags, "--max-iters", "3"])
    assert steps_logged(out) == [0, 2, 3]
    for max_iters in ("3", "1"):
        train.main([*flags, "--resume", "--max-iters", max_iters])
        assert steps_logged(out) == [0, 2, 3]
    with open(out / "log.jsonl", "a") as f:  # killed after logging step 4, before its checkpoint
        f.write(json.dumps({"step": 4, "loss": -1.0}) + "\n" + '{"step": 6, "lo')
    train.main([*flags, "--resume", "--max-iters", "5"])
    rows = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [0, 2, 3, 4, 5] and rows[3]["loss"] > 0
    train.main([*flags, "--max-iters", "1"])  # a new run in the same folder starts a new log
    assert steps_logged(out) == [0, 1]
    capsys.readouterr()
