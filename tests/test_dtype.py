"""Tests of bf16 end to end (train.py --dtype): under
torch.autocast("cpu", dtype=torch.bfloat16), for every router, the training
forward, the routed inference forward (which skips halted tokens' work) and
cached generation run; they agree with float32 at a forced depth and with
each other within bf16's precision; train.py, evaluate.py and bench.py run
every forward under the run's dtype, and --resume refuses another one.

Models are tiny (d_model 32, 2 heads, depth 4), with weights spread so that
tokens differ and the routers halt some tokens and not others at the same
iteration: the case that gathers the running rows (model.Skipping).
"""
import json
import os
import subprocess
import sys

import pytest
import torch
import torch.nn as nn

import bench
import evaluate
import tasks
import train
from model import ANIRA, ROUTERS, ModelConfig, Positions, attention
from test_model import cached_logits

V = tasks.vocab_size("dfs")
D = 4
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = ["--d-model", "32", "--n-heads", "2", "--max-depth", "3", "--batch-size", "8",
        "--eval-num", "16", "--eval-every", "2", "--sizes", "4-5", "--halt-warmup", "1"]
SEED = {"none": 0, "early": 0, "online": 3}  # seeds whose routers halt at varied depths
CONVERGED = dict(depth_embed=False, anchor=True, prompt_depth=1, halt_when_converged=True)  # lang-longer's step


def bf16():
    return train.autocast(torch.device("cpu"), "bfloat16")


def tolerance(m, logits):
    # bf16 keeps 8 significant bits: each rounding to it errs by at most u = 2^-8 = 0.0039 of
    # the value. A logit passes through n_prelude + max_depth blocks and the head, each of
    # whose matmuls reads inputs rounded to bf16 once more; were those errors to add up rather
    # than cancel: (n_prelude + max_depth + 1) u of the logits' scale, 6u = 0.023 here
    # (measured: 1-3.5u). Exactness is test_model.py's (float64); this bounds what bf16 adds.
    return (m.cfg.n_prelude + m.cfg.max_depth + 1) * 2 ** -8 * logits.abs().max().item()


def make(router, **more):
    """A model whose outputs vary from token to token (weights of spread 0.2,
    gain about 1 at d_model 32) and whose router halts at varied depths."""
    torch.manual_seed(SEED[router])
    m = ANIRA(ModelConfig(vocab_size=V, d_model=32, n_heads=2, max_depth=D, router=router, **more))
    with torch.no_grad():
        for mod in m.modules():
            if isinstance(mod, nn.Linear):
                nn.init.normal_(mod.weight, std=0.2)
                if mod.bias is not None:
                    nn.init.normal_(mod.bias, std=0.2)
            elif isinstance(mod, nn.Embedding):
                nn.init.normal_(mod.weight, std=1.0)
        nn.init.normal_(m.depth_embed, std=0.5)
        if router != "none":  # halting logits far from 0: depths that vary
            for mod in m.router.modules():
                if isinstance(mod, nn.Linear):
                    nn.init.normal_(mod.weight, std=1.0)
                    nn.init.normal_(mod.bias, std=1.0)
    return m.eval()


def batch(B=4, T=24, seed=0):
    g = torch.Generator().manual_seed(seed)
    idx = torch.randint(0, V, (B, T), generator=g)
    adaptive = torch.ones_like(idx, dtype=torch.bool)
    adaptive[:, :6] = False  # a prompt, which runs max_depth
    return idx, adaptive, g


def some_halt_while_others_run(depth, dim=None):
    """Whether, in one forward, a token halts while another runs on, so that
    the running rows are gathered (the case that failed under bf16). depth: of
    one forward (dim None), or generate()'s (B, N), a forward per column (dim 0)."""
    if dim is None:
        return len(torch.unique(depth)) >= 2
    return bool((depth.amax(dim) > depth.amin(dim)).any())


def assert_close(a, b, tol):
    assert a.shape == b.shape
    err = (a.float() - b.float()).abs().max().item()
    assert err <= tol, f"max difference {err:.4f} > tolerance {tol:.4f}"


# -----------------------------------------------------------------------------
# the model under bf16 autocast

@pytest.mark.parametrize("router", ROUTERS)
def test_training_forward_and_backward_under_bf16(router):
    """The training forward (counterfactual) runs in bf16, its loss backpropagates
    to finite gradients, and the halting distribution stays float32."""
    m = make(router).train()
    idx, adaptive, _ = batch()
    targets = torch.where(adaptive, torch.roll(idx, -1, 1), -1)
    with bf16():
        out = m(idx, adaptive=adaptive, counterfactual=True)
        loss, _ = m.loss(out, targets, prompt_targets=torch.where(adaptive, -1, torch.roll(idx, -1, 1)))
    assert out.logits.dtype == torch.bfloat16  # it really ran in bf16
    assert len(out.exit_logits) == D
    if router != "none":
        assert out.log_p_depth.dtype == torch.float32
        assert some_halt_while_others_run(out.depth)
    loss.backward()
    grads = [p.grad for p in m.parameters() if p.grad is not None]
    assert grads and all(g.dtype == torch.float32 and torch.isfinite(g).all() for g in grads)


@pytest.mark.parametrize("router", ROUTERS)
def test_bf16_agrees_with_float32_at_a_forced_depth(router):
    """At the same (forced) depths, the routed inference forward and the
    training forward's exits in bf16 are float32's within bf16's precision. (At
    the router's own depths, a hazard near the threshold may flip a depth.)"""
    m = make(router)
    idx, adaptive, g = batch()
    forced = torch.randint(1, D + 1, idx.shape, generator=g)
    with torch.no_grad():
        f32 = m(idx, adaptive=adaptive, forced_depth=forced)
        f32_train = m(idx, adaptive=adaptive, forced_depth=forced, counterfactual=True)
        with bf16():
            b16 = m(idx, adaptive=adaptive, forced_depth=forced)
            b16_train = m(idx, adaptive=adaptive, forced_depth=forced, counterfactual=True)
    assert torch.equal(b16.depth, forced) and torch.equal(b16_train.depth, forced)
    tol = tolerance(m, f32.logits)
    assert 0 < (b16.logits.float() - f32.logits).abs().max() <= tol  # bf16, and close
    assert_close(b16_train.logits, f32_train.logits, tol)
    for a, b in zip(b16_train.exit_logits, f32_train.exit_logits):
        assert_close(a, b, tolerance(m, b))


@pytest.mark.parametrize("router,more", [(r, {}) for r in ROUTERS] + [("online", CONVERGED)],
                         ids=[*ROUTERS, "online-anchor-converged"])
def test_routed_forced_and_cached_paths_agree_under_bf16(router, more):
    """Under bf16, as in float32: the routed forward equals the forced one at
    the routed depths, and so does the training forward forced to them; cached
    generation's logits are those of the forced forward at the depths it ran
    (within bf16's precision: decoding one position at a time multiplies
    matrices of other shapes, which round otherwise). Where the router
    decides, each path gives the depths of the others (see mostly_equal)."""
    m = make(router, **more)
    idx, adaptive, _ = batch()
    B, P, N = 4, 10, 12
    prompt = idx[:, :P]
    with torch.no_grad(), bf16():
        routed = m(idx, adaptive=adaptive)
        forced = m(idx, adaptive=adaptive, forced_depth=routed.depth)
        counterfactual = m(idx, adaptive=adaptive, counterfactual=True)
        counterfactual_forced = m(idx, adaptive=adaptive, counterfactual=True, forced_depth=routed.depth)
        tokens, depths = m.generate(prompt, N)
        logits, cached_depths = cached_logits(m, prompt, tokens)
        sequence = torch.cat([prompt, tokens], 1)[:, :-1]
        answer = torch.zeros_like(sequence, dtype=torch.bool)
        answer[:, P - 1:] = True
        teacher_forced = m(sequence, adaptive=answer)
        at_cached_depths = m(sequence, adaptive=answer,
                             forced_depth=torch.cat([torch.full((B, P - 1), D), cached_depths], 1))
    if router != "none":
        assert some_halt_while_others_run(routed.depth) and some_halt_while_others_run(depths, dim=0)
    tol = tolerance(m, routed.logits)
    assert_close(forced.logits, routed.logits, tol)
    assert_close(counterfactual_forced.logits, routed.logits, tol)
    assert torch.equal(cached_depths, depths) and torch.equal(logits.argmax(-1), tokens)  # the same path
    assert_close(logits, at_cached_depths.logits[:, P - 1:], tolerance(m, at_cached_depths.logits))
    assert mostly_equal(counterfactual.depth, routed.depth)
    assert mostly_equal(teacher_forced.depth[:, P - 1:], depths)


def mostly_equal(a, b):
    """Depths two paths decided: a hazard within bf16's rounding of the
    threshold may fall on either side on one path and not on the other (no
    depth differed on the CPU these tests were written on)."""
    return (a == b).float().mean().item() >= 0.9


# -----------------------------------------------------------------------------
# train.py, evaluate.py and bench.py run every forward in the run's dtype

class Recording(ANIRA):
    """ANIRA that records, for every forward, the dtype autocast gives (float32: none)."""
    dtypes = []

    def forward(self, *args, **kwargs):
        on = torch.is_autocast_enabled("cpu")
        Recording.dtypes.append((kwargs.get("counterfactual", False), torch.get_autocast_dtype("cpu") if on
                                 else torch.float32))
        return super().forward(*args, **kwargs)


def recorded(monkeypatch, *modules):
    Recording.dtypes = []
    for module in modules:
        monkeypatch.setattr(module, "ANIRA", Recording)
    return Recording.dtypes


def test_attention_runs_in_float32_on_a_cpu_under_bf16():
    """CPU bf16 flash attention's backward is 3x slower than float32's at this
    model's sizes: under autocast the attention reads bf16 inputs and computes
    in float32, the same numbers (to float32 round-off) as float32 attention
    of those inputs, and its gradients reach them."""
    q, k, v = (torch.randn(2, 2, 7, 16).to(torch.bfloat16).requires_grad_() for _ in range(3))
    pos = Positions(None, None, mask=None, causal=True)
    with bf16():
        y = attention(q, k, v, pos)
    assert y.dtype == torch.float32
    expected = torch.nn.functional.scaled_dot_product_attention(q.float(), k.float(), v.float(), is_causal=True)
    assert torch.allclose(y, expected, atol=1e-5)
    y.sum().backward()
    assert all(t.grad is not None and t.grad.abs().sum() > 0 for t in (q, k, v))


@pytest.fixture(scope="module")
def bf16_run(tmp_path_factory):
    """4 steps of train.py --dtype bfloat16, recording the dtype of every forward."""
    out = tmp_path_factory.mktemp("dtype") / "bf16"
    with pytest.MonkeyPatch.context() as mp:
        dtypes = recorded(mp, train)
        torch.manual_seed(0)
        train.main([*TINY, "--router", "online", "--dtype", "bfloat16", "--max-iters", "4", "--out", str(out)])
    return out, list(dtypes)


def test_train_bf16_runs_every_forward_in_bf16(bf16_run):
    out, dtypes = bf16_run
    training = [d for counterfactual, d in dtypes if counterfactual]
    evaluation = [d for counterfactual, d in dtypes if not counterfactual]
    assert len(training) == 4 and len(evaluation) >= 3  # steps 0, 2, 4
    assert set(training) == set(evaluation) == {torch.bfloat16}
    assert json.loads((out / "config.json").read_text())["dtype"] == "bfloat16"
    assert train.load_checkpoint(str(out / "ckpt.pt"))["config"]["dtype"] == "bfloat16"
    rows = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [0, 2, 4] and all(r["loss"] > 0 for r in rows)


def test_train_float32_is_the_cpu_default(tmp_path, monkeypatch):
    dtypes = recorded(monkeypatch, train)
    torch.manual_seed(0)
    train.main([*TINY, "--max-iters", "1", "--eval-every", "100", "--out", str(tmp_path / "f32")])
    assert {d for _, d in dtypes} == {torch.float32}
    assert json.loads((tmp_path / "f32" / "config.json").read_text())["dtype"] == "float32"


def test_resume_with_another_dtype_is_one_error_line(bf16_run):
    out, _ = bf16_run
    before = (out / "ckpt.pt").read_bytes()
    res = subprocess.run([sys.executable, "train.py", *TINY, "--router", "online", "--dtype", "float32",
                          "--max-iters", "6", "--resume", "--out", str(out)], cwd=REPO, text=True,
                         capture_output=True, env=dict(os.environ, OMP_NUM_THREADS="1"), timeout=180)
    lines = [line for line in res.stderr.splitlines() if line.strip()]
    assert res.returncode not in (0, None) and len(lines) == 1, res.stderr
    assert lines[0].startswith("error: cannot resume") and "dtype" in lines[0], res.stderr
    assert (out / "ckpt.pt").read_bytes() == before


def test_a_checkpoint_from_before_dtype_loads_and_resumes_as_float32(bf16_run, tmp_path, capsys):
    ckpt = torch.load(bf16_run[0] / "ckpt.pt", weights_only=True)
    del ckpt["config"]["dtype"]
    old = tmp_path / "old"
    old.mkdir()
    torch.save(ckpt, old / "ckpt.pt")
    assert train.load_checkpoint(str(old / "ckpt.pt"))["config"]["dtype"] == "float32"
    with pytest.raises(SystemExit):
        train.main([*TINY, "--router", "online", "--dtype", "bfloat16", "--max-iters", "5", "--resume",
                    "--out", str(old)])
    assert "dtype='float32'" in capsys.readouterr().err
    train.main([*TINY, "--router", "online", "--max-iters", "5", "--resume", "--out", str(old)])  # CPU: float32
    assert train.load_checkpoint(str(old / "ckpt.pt"))["step"] == 5


@pytest.mark.parametrize("flag,expected", [([], torch.bfloat16), (["--dtype", "float32"], torch.float32)])
def test_evaluate_runs_in_the_checkpoint_dtype_unless_told(bf16_run, tmp_path, monkeypatch, flag, expected):
    """Evaluation and generation (--show) both, by default in the dtype the
    checkpoint was trained in."""
    dtypes = recorded(monkeypatch, evaluate)
    evaluate.main(["--ckpt", str(bf16_run[0] / "ckpt.pt"), "--sizes", "4-4", "--num", "2", "--show", "1",
                   "--out", str(tmp_path), *flag])
    assert {d for _, d in dtypes} == {expected}
    assert any(counterfactual for counterfactual, _ in dtypes) and not all(c for c, _ in dtypes)
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["dtype"] == str(expected).removeprefix("torch.")


def test_bench_speed_and_generate_run_in_the_dtype_asked(monkeypatch, capsys):
    dtypes = recorded(monkeypatch, bench)
    bench.main(["speed", "--dtype", "bfloat16", "--rounds", "1", "--batch-size", "2", "--max-depth", "2"])
    assert len(dtypes) == 3 * 4 + 1 and {d for _, d in dtypes} == {torch.bfloat16}  # + the FLOP count's step
    assert "bfloat16" in capsys.readouterr().out
    m = Recording(make("online").cfg)
    m.load_state_dict(make("online").state_dict())
    prompts = torch.randint(0, V, (4, 8), generator=torch.Generator().manual_seed(0))
    for dtype, expected in (("float32", torch.float32), ("bfloat16", torch.bfloat16)):
        Recording.dtypes.clear()
        tokens, depths = bench.generate_all(m, prompts, 2, 5, dtype)
        assert tokens.shape == depths.shape == (4, 5)
        assert len(Recording.dtypes) == 2 * 5 and {d for _, d in Recording.dtypes} == {expected}
