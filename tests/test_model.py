"""Tests for model.py: causality, frozen halted tokens, depth bounds, the
halting rule, cached generation (and a prompt fed in pieces) against the
uncached forward, the halting-distribution math, the collapse guard of the
training objective, and a tiny overfitting run.

Models are tiny (d_model 32, 2 heads, depth 3-4). Most tests randomize the
weights with a large spread (`perturb`) so that the outputs vary from token
to token and the routers really halt at different depths: with the default
initialisation every token would run the same depth and predict the same
token, and most of these properties would hold trivially.
"""
import random

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import model as model_module
import tasks
from model import ANIRA, ROUTERS, KVCache, ModelConfig, hazards_from_log_p, log_p_from_halt_logits

V = tasks.vocab_size("dfs")
# Tests that compare two computations of the same numbers (cached against
# uncached, a batch against one prompt, routed against counterfactual) run in
# float64: float32 round-off differs between CPUs and kernel paths by ~1e-5,
# float64's by ~1e-14, so EXACT is 1e-9, far above round-off and far below the
# 1e-3 and more that a real difference in what is computed makes.
EXACT = 1e-9


@pytest.fixture(autouse=True)
def float64():
    before = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(before)
CONFIGS = [  # (router, share, reinject, other ModelConfig fields)
    ("none", True, False, {}),
    ("early", True, False, {}),
    ("online", True, False, {}),
    ("online", True, True, {}),
    ("none", False, False, {}),
    ("online", True, False, {"depth_embed": False}),
    ("online", True, False, {"depth_embed": False, "norm_state": True}),
    ("online", True, False, {"depth_embed": False, "anchor": True, "prompt_depth": 1}),
    ("none", True, False, {"anchor": True, "prompt_depth": 2}),
    ("online", True, False, {"depth_embed": False, "anchor": True, "prompt_depth": 1, "halt_when_converged": True}),
]
CONFIG_IDS = ["none", "early", "online", "online-reinject", "none-unshared", "online-no-depth-embed",
              "online-norm-state", "online-anchor-prompt-1", "none-anchor-prompt-2", "online-anchor-converged"]


def make(router="online", share=True, reinject=False, D=4, seed=0, **more):
    torch.manual_seed(seed)
    return ANIRA(ModelConfig(vocab_size=V, d_model=32, n_heads=2, max_depth=D, router=router,
                             share=share, reinject=reinject, **more))


def randomize_router(m, std=1.0):
    """Router weights with std 1: halting logits far from 0, depths that vary."""
    for mod in m.router.modules():
        if isinstance(mod, nn.Linear):
            nn.init.normal_(mod.weight, std=std)
            nn.init.normal_(mod.bias, std=std)


def perturb(m, std=0.4, router_std=1.0):
    """Random weights with a large spread, so that logits and depths vary."""
    with torch.no_grad():
        for mod in m.modules():
            if isinstance(mod, nn.Linear):
                nn.init.normal_(mod.weight, std=std)
                if mod.bias is not None:
                    nn.init.normal_(mod.bias, std=std)
            elif isinstance(mod, nn.Embedding):
                nn.init.normal_(mod.weight, std=1.0)
        nn.init.normal_(m.depth_embed, std=0.5)
    if m.cfg.router != "none":
        randomize_router(m, router_std)
    return m


def trained(m, idx, targets, route=True, ponder=0.002, **loss_args):
    """The training forward and its loss, as train.py runs them: the Output
    with .loss and .parts attached."""
    out = m(idx, adaptive=targets != -1, route=route, counterfactual=True)
    out.loss, out.parts = m.loss(out, targets, ponder, **loss_args)
    return out


def dfs_batch(seed, num=4, sizes=(4, 5)):
    exs = tasks.sample_examples("dfs", random.Random(seed), sizes, num)
    idx, targets, _ = tasks.make_batch(exs)
    return exs, torch.from_numpy(idx), torch.from_numpy(targets)


def non_router_params(m):
    return [(n, p) for n, p in m.named_parameters() if not n.startswith("router.")]


# -----------------------------------------------------------------------------
# causality

@pytest.mark.parametrize("router,share,reinject,more", CONFIGS, ids=CONFIG_IDS)
def test_causality_eval_and_training(router, share, reinject, more):
    torch.manual_seed(1)
    m = perturb(make(router, share, reinject, **more, D=4, seed=1))
    B, T, t = 3, 16, 9
    idx = torch.randint(0, V, (B, T))
    idx2 = idx.clone()
    idx2[:, t] = (idx[:, t] + torch.randint(1, V, (B,))) % V
    assert (idx2[:, t] != idx[:, t]).all()
    allc = torch.ones(B, T, dtype=torch.bool)

    m.eval()
    with torch.no_grad():
        a, b = m(idx, adaptive=allc), m(idx2, adaptive=allc)
    assert torch.allclose(a.logits[:, :t], b.logits[:, :t], atol=EXACT, rtol=0)
    assert torch.equal(a.depth[:, :t], b.depth[:, :t])
    # the change is visible from position t on (the test perturbs something real)
    assert not torch.allclose(a.logits[:, t], b.logits[:, t], atol=1e-3)
    if router != "none":
        assert len(torch.unique(a.depth)) >= 2, "the routers should halt at different depths here"

    # training forward: every exit, the halting distribution and the own-depth logits
    m.train()
    targets = torch.randint(0, V, (B, T))
    targets[:, :4] = -1  # a prompt with no loss: non-adaptive tokens
    with torch.no_grad():
        a, b = trained(m, idx, targets), trained(m, idx2, targets)
    assert torch.allclose(a.logits[:, :t], b.logits[:, :t], atol=EXACT, rtol=0)
    assert torch.equal(a.depth[:, :t], b.depth[:, :t])
    assert len(a.exit_logits) == 4
    for ea, eb in zip(a.exit_logits, b.exit_logits):
        assert torch.allclose(ea[:, :t], eb[:, :t], atol=EXACT, rtol=0)
    if router != "none":
        assert a.log_p_depth.shape == (B, T, 4)
        assert torch.allclose(a.log_p_depth[:, :t], b.log_p_depth[:, :t], atol=EXACT, rtol=0)
        assert not torch.allclose(a.exit_logits[-1][:, t], b.exit_logits[-1][:, t], atol=1e-3)
        assert len(torch.unique(a.depth[targets != -1])) >= 2


@pytest.mark.parametrize("K", [0, 1, 2, 3])
def test_token_shift_sees_exactly_the_k_previous_tokens(K):
    torch.manual_seed(0)
    m = perturb(ANIRA(ModelConfig(vocab_size=V, d_model=32, n_heads=2, max_depth=2, token_shift=K)))
    idx = torch.randint(1, V, (2, 10))
    whole = m.embed_tokens(idx)
    t = 7
    for back in range(6):
        other = idx.clone()
        other[:, t - back] = idx[:, t - back] % (V - 1) + 1  # another token id
        changed = (m.embed_tokens(other)[:, t] - whole[:, t]).abs().amax() > 0
        assert bool(changed) == (back <= K), (K, back)
    # in chunks with a cache (as generate() feeds it), the same inputs
    cache, pieces = KVCache(10, 0), []
    for lo, hi in ((0, 4), (4, 5), (5, 6), (6, 10)):
        cache.extend(hi - lo, 16, idx.device)  # the forward takes its positions, then embeds
        pieces.append(m.embed_tokens(idx[:, lo:hi], cache))
    torch.testing.assert_close(torch.cat(pieces, 1), whole)


# -----------------------------------------------------------------------------
# depths and frozen halted tokens

@pytest.mark.parametrize("router", ["early", "online"])
def test_depth_bounds_adaptive_routers(router):
    torch.manual_seed(2)
    for seed in range(3):
        m = perturb(make(router, D=4, seed=seed)).eval()
        idx = torch.randint(0, V, (4, 20))
        with torch.no_grad():
            out = m(idx)
        assert out.depth.dtype in (torch.int64, torch.int32)
        assert int(out.depth.min()) >= 1 and int(out.depth.max()) <= 4
        assert len(torch.unique(out.depth)) >= 2
        # non-adaptive tokens (a prompt) always run the full depth
        adaptive = torch.zeros_like(idx, dtype=torch.bool)
        adaptive[:, 12:] = True
        with torch.no_grad():
            out = m(idx, adaptive=adaptive)
        assert (out.depth[:, :12] == 4).all()
        assert int(out.depth[:, 12:].min()) >= 1


@pytest.mark.parametrize("router,share,reinject,more", CONFIGS, ids=CONFIG_IDS)
def test_full_depth_cases(router, share, reinject, more):
    torch.manual_seed(3)
    m = perturb(make(router, share, reinject, **more, D=3, seed=3)).eval()
    idx = torch.randint(0, V, (3, 14))
    none_adaptive = torch.zeros_like(idx, dtype=torch.bool)
    with torch.no_grad():
        routed = m(idx, adaptive=torch.ones_like(none_adaptive))
        fixed = m(idx, adaptive=none_adaptive)
        unrouted = m(idx, route=False)
    if router == "none":  # every adaptive token runs max_depth
        assert (routed.depth == 3).all()
    assert (fixed.depth == (more.get("prompt_depth") or 3)).all()  # adaptive False everywhere: the prompt
    assert (unrouted.depth == 3).all()   # route=False
    if not more.get("prompt_depth"):
        assert torch.allclose(fixed.logits, unrouted.logits, atol=EXACT)
    # training forward with route=False: full depth as well
    m.train()
    targets = torch.randint(0, V, idx.shape)
    with torch.no_grad():
        out = trained(m, idx, targets, route=False)
    assert (out.depth == 3).all()


def record_core_calls(m):
    """Forward hook on the shared core block, one record per iteration: `run`,
    the flat indices (into B*T) of the tokens that computed, with their inputs
    `x` and outputs `out` (N, C), and `kv` (B*T, 2C), the keys and values every
    position showed the others."""
    calls = []

    def hook(module, args, output):
        x, rope, cache, kv, run = (*args, None, None, None)[:5]
        if kv is None:  # every token showed its own
            kv = module.keys_values(x)
        n = kv.shape[0] * kv.shape[1]
        run = torch.arange(n) if run is None else run
        calls.append(dict(run=run.clone(), x=x.reshape(len(run), -1).clone(),
                          out=output.reshape(len(run), -1).clone(), kv=kv.reshape(n, -1).clone()))

    return calls, m.core[0].register_forward_hook(hook)


def rows_of(call):
    """{flat token index: its row in the call's x and out}"""
    return {int(i): r for r, i in enumerate(call["run"])}


@pytest.mark.parametrize("depth_embed", [False, True])
def test_anchor_replaces_the_state_by_h0_and_the_previous_exits_token(depth_embed):
    """With anchor, the input of every iteration past the first is h0 plus the
    embedding of the token the previous iteration's exit predicts (and e_k with
    depth_embed): nothing else of the state reaches the next iteration; and the
    prompt runs prompt_depth iterations, in inference and in training."""
    D, P = 4, 6
    m = perturb(make("online", D=D, seed=5, depth_embed=depth_embed, anchor=True, prompt_depth=1)).eval()
    idx = torch.randint(0, V, (3, 14))
    adaptive = torch.zeros_like(idx, dtype=torch.bool)
    adaptive[:, P:] = True
    h0 = m.prelude[0](m.embed_tokens(idx), m.positions(14, idx.device)).reshape(-1, 32)
    calls, handle = record_core_calls(m)
    with torch.no_grad():
        out = m(idx, adaptive=adaptive)
        trained = m.train()(idx, adaptive=adaptive, counterfactual=True)
    handle.remove()
    assert (out.depth[:, :P] == 1).all() and (out.depth[:, P:] > 1).any()
    assert (trained.depth[:, :P] == 1).all() and torch.equal(trained.depth, out.depth)
    e = m.depth_embed if depth_embed else torch.zeros(D, 32)
    inference = calls[:int(out.depth.max())]
    for k, call in enumerate(inference):
        expected = h0[call["run"]] + e[k]
        if k:
            before = rows_of(inference[k - 1])
            previous = inference[k - 1]["out"][[before[int(i)] for i in call["run"]]]
            expected = expected + m.embed(m.head(m.norm(previous)).argmax(-1))
        assert torch.allclose(call["x"], expected, atol=EXACT), k
        assert k == 0 or not adaptive.view(-1)[call["run"]].logical_not().any()  # the prompt stopped at 1
    assert len(calls) == len(inference) + D  # the training forward: every token, every iteration


def test_anchor_forcing_feeds_the_given_tokens_in_training():
    """In the training forward, `anchors` (train.py --anchor-forcing) replaces
    the prediction of exit k by the given token wherever it is not -1: the
    input of iteration k+1 is h0 plus that token's embedding."""
    D = 4
    m = perturb(make("online", D=D, seed=5, depth_embed=False, anchor=True, prompt_depth=1)).train()
    idx = torch.randint(0, V, (3, 14))
    anchors = torch.randint(0, V, (3, 14, D))
    anchors[torch.rand(anchors.shape) < 0.5] = -1
    h0 = m.prelude[0](m.embed_tokens(idx), m.positions(14, idx.device)).reshape(-1, 32)
    calls, handle = record_core_calls(m)
    with torch.no_grad():
        m(idx, counterfactual=True, anchors=anchors)
    handle.remove()
    assert len(calls) == D
    for k in range(1, D):
        predicted = m.head(m.norm(calls[k - 1]["out"])).argmax(-1)
        given = anchors[..., k - 1].reshape(-1)
        assert (given[given >= 0] != predicted[given >= 0]).any()  # the given tokens change something
        token = torch.where(given >= 0, given, predicted)
        assert torch.allclose(calls[k]["x"], h0 + m.embed(token), atol=EXACT), k


@pytest.mark.parametrize("router", ["early", "online"])
def test_halted_tokens_are_frozen_eval(router):
    """Inference: a token halted after iteration d is not computed again; its
    logits come from its state after iteration d, and at every later iteration
    the others attend to the keys and values of exactly that state. While it
    runs, it shows the keys and values of its own input of that iteration."""
    torch.manual_seed(4)
    D = 4
    m = perturb(make(router, D=D, seed=4)).eval()
    idx = torch.randint(0, V, (3, 18))
    calls, handle = record_core_calls(m)
    with torch.no_grad():
        out = m(idx)
        halted = 0
        assert 1 <= len(calls) <= D
        rows = [rows_of(c) for c in calls]
        for b in range(idx.shape[0]):
            for t in range(idx.shape[1]):
                i, d = b * idx.shape[1] + t, int(out.depth[b, t])
                frozen = calls[d - 1]["out"][rows[d - 1][i]]
                assert torch.allclose(out.logits[b, t], m.head(m.norm(frozen)), atol=EXACT)
                for k in range(len(calls)):
                    assert (i in rows[k]) == (k < d)  # computed while running, never after
                    if k < d:  # running: its own input of iteration k
                        x = calls[k]["x"][rows[k][i]]
                        assert torch.allclose(calls[k]["kv"][i], m.core[0].keys_values(x), atol=EXACT)
                        if k > 0:
                            before = calls[k - 1]["out"][rows[k - 1][i]]
                            assert torch.allclose(x, before + m.depth_embed[k], atol=EXACT)
                    else:  # halted: seen frozen, as its final state
                        assert torch.allclose(calls[k]["kv"][i], m.core[0].keys_values(frozen), atol=EXACT)
                halted += d < D
    handle.remove()
    assert halted > 0


@pytest.mark.parametrize("router", ["early", "online"])
def test_halted_tokens_training_counterfactual(router):
    """In training a halted token is seen frozen by the others, its own logits
    are at its own depth, but its state keeps iterating (the counterfactual
    continuation) and every exit is computed from that continuing state."""
    torch.manual_seed(5)
    D = 4
    m = perturb(make(router, D=D, seed=5)).train()
    idx = torch.randint(0, V, (3, 16))
    targets = torch.randint(0, V, idx.shape)
    targets[:, :3] = -1
    calls, handle = record_core_calls(m)
    with torch.no_grad():
        out = trained(m, idx, targets)
        assert len(calls) == D and len(out.exit_logits) == D
        halted = 0
        for b in range(idx.shape[0]):
            for t in range(idx.shape[1]):
                i, d = b * idx.shape[1] + t, int(out.depth[b, t])
                frozen = calls[d - 1]["out"][i]
                assert torch.allclose(out.logits[b, t], m.head(m.norm(frozen)), atol=EXACT)
                for k in range(D):
                    assert torch.equal(calls[k]["run"], torch.arange(idx.numel()))  # every token computes
                    assert torch.allclose(out.exit_logits[k][b, t], m.head(m.norm(calls[k]["out"][i])), atol=EXACT)
                    if k > 0:  # the own state always continues
                        assert torch.allclose(calls[k]["x"][i], calls[k - 1]["out"][i] + m.depth_embed[k], atol=EXACT)
                    # ... while the others see it frozen from depth d on
                    shown = calls[k]["x"][i] if k < d else frozen
                    assert torch.allclose(calls[k]["kv"][i], m.core[0].keys_values(shown), atol=EXACT)
                halted += d < D
    handle.remove()
    assert halted > 0
    assert (out.depth[targets == -1] == D).all()


@pytest.mark.parametrize("router", ["early", "online"])
def test_counterfactual_forward_keeps_the_routed_logits_and_depths(router):
    """evaluate.py reads the exits of the counterfactual forward: its logits
    and depths must be those of plain inference."""
    torch.manual_seed(6)
    m = perturb(make(router, seed=6)).eval()
    idx = torch.randint(0, V, (3, 16))
    adaptive = torch.ones_like(idx, dtype=torch.bool)
    with torch.no_grad():
        plain, counterfactual = m(idx, adaptive=adaptive), m(idx, adaptive=adaptive, counterfactual=True)
    assert (plain.depth < m.cfg.max_depth).any() and (plain.depth > 1).any()
    assert torch.equal(plain.depth, counterfactual.depth)
    assert torch.allclose(plain.logits, counterfactual.logits, atol=EXACT)


# -----------------------------------------------------------------------------
# the halting rule: a token stops after the first iteration whose hazard passes halt_threshold

MARGIN = 1e-6  # hazards this close to the threshold are left out: round-off may tip them either way


def early_hazards(m, idx):
    """ANIRA-E's hazards (B, T, D), from scratch: h0 from the prelude,
    p = softmax(router(h0)), h_k = p(k) / sum_{j>=k} p(j)."""
    h0, pos = m.embed_tokens(idx), m.positions(idx.shape[1], idx.device)
    for block in m.prelude:
        h0 = block(h0, pos)
    p = F.softmax(m.router(h0), -1)
    return p / p.flip(-1).cumsum(-1).flip(-1)


def routed_with_hazards(m, idx, adaptive):
    """The inference forward and the hazards (B, T, D) it decided on. ANIRA-O's
    are sigmoid(router(state after iteration k)) of the states the core block's
    hook recorded, NaN after a token stopped. They are taken along the model's
    own path because a state depends on which tokens halted before (they are
    seen frozen); if every depth follows the rule on that path, by induction
    on k the path is the one the rule makes."""
    calls, handle = record_core_calls(m)
    with torch.no_grad():
        out = m(idx, adaptive=adaptive)
        handle.remove()
        if m.cfg.router == "early":
            return out, early_hazards(m, idx)
        hazards = torch.full((idx.numel(), m.cfg.max_depth), float("nan"))
        for k, call in enumerate(calls):
            hazards[call["run"], k] = torch.sigmoid(m.router(call["out"])).squeeze(-1)
    return out, hazards.view(*idx.shape, -1)


def halting_rule(hazards, adaptive, threshold):
    """The depths the rule gives: the first k < D with h_k > threshold, else D
    (D for the tokens the router does not decide); and which tokens are clear
    of the threshold: no hazard the rule read is within MARGIN of it."""
    D = hazards.shape[-1]
    passes = hazards[..., :-1] > threshold  # NaN (not run) never passes
    depth = torch.where(passes.any(-1) & adaptive, passes.int().argmax(-1) + 1, D)
    read = torch.arange(1, D) <= depth[..., None]
    near = ((hazards[..., :-1] - threshold).abs() < MARGIN) & read
    return depth, ~near.any(-1), hazards[..., :-1][read & adaptive[..., None]]


@pytest.mark.parametrize("threshold", [0.3, 0.5, 0.7])
@pytest.mark.parametrize("router", ["early", "online"])
def test_depth_is_the_first_iteration_whose_hazard_passes_the_threshold(router, threshold):
    """Each adaptive token runs until the first iteration whose hazard passes
    cfg.halt_threshold (not the logit, not p(k), not a fixed 0.5), in the
    inference forward and in cached generation; the others run max_depth."""
    D = 4
    m = perturb(make(router, D=D, seed=0, halt_threshold=threshold), router_std=0.3).eval()
    idx = torch.randint(0, V, (4, 24), generator=torch.Generator().manual_seed(0))
    adaptive = torch.ones_like(idx, dtype=torch.bool)
    adaptive[:, :5] = False  # a prompt
    out, hazards = routed_with_hazards(m, idx, adaptive)
    depth, clear, read = halting_rule(hazards, adaptive, threshold)
    assert clear.float().mean() > 0.9
    assert torch.equal(out.depth[clear], depth[clear])
    assert len(torch.unique(depth[adaptive & clear])) >= 3
    with torch.no_grad():  # the training forward halts by the same rule
        assert torch.equal(m(idx, adaptive=adaptive, counterfactual=True).depth, out.depth)
    # hazards close on both sides of the threshold: another rule would give other depths
    assert ((read > threshold) & (read < threshold + 0.1)).any()
    assert ((read <= threshold) & (read > threshold - 0.1)).any()

    # generate(): the depths the rule gives on the teacher-forced sequence
    P = 8
    prompt = idx[:, :P]
    tokens, depths = m.generate(prompt, 12)
    adaptive = torch.zeros(4, P + 11, dtype=torch.bool)
    adaptive[:, P - 1:] = True
    _, hazards = routed_with_hazards(m, torch.cat([prompt, tokens[:, :-1]], 1), adaptive)
    depth, clear, _ = halting_rule(hazards, adaptive, threshold)
    depth, clear = depth[:, P - 1:], clear[:, P - 1:]
    assert clear.float().mean() > 0.9 and len(torch.unique(depth[clear])) >= 2
    assert torch.equal(depths[clear], depth[clear])


@pytest.mark.parametrize("always_stop", [True, False])
def test_halt_when_converged_waits_for_the_exit_to_repeat(always_stop):
    """With halt_when_converged, ANIRA-O's token stops after the first
    iteration k > 1 whose hazard passes the threshold and whose exit names the
    token exit k-1 named; with a hazard that always passes, at the first
    repeat. Read on each token's own path (the counterfactual exits), and the
    inference forward and cached generation halt at the same depths."""
    D = 6
    m = perturb(make("online", D=D, seed=2, depth_embed=False, anchor=True, prompt_depth=1,
                     halt_when_converged=True), router_std=0.3).eval()
    if always_stop:
        nn.init.constant_(m.router[-1].bias, 50.0)
    idx = torch.randint(0, V, (4, 24), generator=torch.Generator().manual_seed(2))
    adaptive = torch.ones_like(idx, dtype=torch.bool)
    adaptive[:, :5] = False  # a prompt
    with torch.no_grad():
        out = m(idx, adaptive=adaptive, counterfactual=True)
        served = m(idx, adaptive=adaptive)
    token = torch.stack([lg.argmax(-1) for lg in out.exit_logits], -1)  # (B, T, D) on each token's own path
    repeats = F.pad(token[..., 1:] == token[..., :-1], (1, 0))
    passes = hazards_from_log_p(out.log_p_depth) > m.cfg.halt_threshold
    stops = repeats & passes
    if always_stop:
        assert stops[..., :-1].equal(repeats[..., :-1])
    stops[..., -1] = True
    expected = torch.where(adaptive, stops.int().argmax(-1) + 1, 1)
    assert torch.equal(out.depth, expected)
    assert torch.equal(served.depth, expected)
    assert len(torch.unique(expected[adaptive])) >= 3
    vetoed = passes[..., :-1] & ~stops[..., :-1]  # the hazard passed, the exit had not repeated
    assert (expected[adaptive] < D).any() and vetoed[adaptive].any()
    P = 8  # generate(): the depths of the teacher-forced forward on what it generated
    tokens, depths = m.generate(idx[:, :P], 10)
    full = torch.cat([idx[:, :P], tokens[:, :-1]], 1)
    adaptive = torch.zeros_like(full, dtype=torch.bool)
    adaptive[:, P - 1:] = True
    with torch.no_grad():
        assert torch.equal(depths, m(full, adaptive=adaptive).depth[:, P - 1:])


class NamesTokenZero(nn.Module):
    """An LM head whose every exit names token 0 (the id an unset 'previous token' could hold)."""

    def forward(self, x):
        return F.pad(torch.ones(*x.shape[:-1], 1), (0, V - 1))


def test_halt_when_converged_never_stops_after_the_first_iteration():
    """The first exit has no previous one to repeat, whichever token it names:
    with a hazard that always passes and exits that always name token 0,
    every answer token stops after exactly two iterations."""
    m = perturb(make("online", D=4, seed=2, depth_embed=False, anchor=True, prompt_depth=1,
                     halt_when_converged=True)).eval()
    nn.init.constant_(m.router[-1].bias, 50.0)
    m.head = NamesTokenZero()
    idx = torch.randint(0, V, (2, 12), generator=torch.Generator().manual_seed(0))
    adaptive = torch.ones_like(idx, dtype=torch.bool)
    with torch.no_grad():
        for counterfactual in (False, True):
            assert (m(idx, adaptive=adaptive, counterfactual=counterfactual).depth == 2).all()


class RecordingCache(KVCache):
    instances = []

    def __init__(self, *args):
        super().__init__(*args)
        RecordingCache.instances.append(self)


@pytest.mark.parametrize("router", ["early", "online"])
def test_generate_cache_frozen_keys(router, monkeypatch):
    """In generate()'s cache, a token that halted at depth d has, at every
    iteration after d, the same keys and values (those of its frozen state)."""
    torch.manual_seed(6)
    D = 4
    m = perturb(make(router, D=D, seed=6))
    RecordingCache.instances = []
    monkeypatch.setattr(model_module, "KVCache", RecordingCache)
    B, P, N = 4, 10, 10
    prompt = torch.randint(0, V, (B, P))
    tokens, depths = m.generate(prompt, N)
    assert len(RecordingCache.instances) == 1
    cache = RecordingCache.instances[0]
    assert tokens.shape == depths.shape == (B, N)
    assert int(depths.min()) >= 1 and int(depths.max()) <= D
    assert len(torch.unique(depths)) >= 2
    core = m.cfg.n_prelude  # the layer of core iteration 0
    assert cache.keys.shape[0] == core + D  # a layer per prelude block and per iteration
    assert cache.length == cache.keys.shape[3] == P + N - 1  # every position at every iteration
    checked = 0
    for b in range(B):
        for j in range(N):
            p, d = P - 1 + j, int(depths[b, j])
            if d == D:
                continue
            k_frozen, v_frozen = cache.keys[core + d, b, :, p], cache.values[core + d, b, :, p]
            for k in range(d + 1, D):
                assert torch.allclose(cache.keys[core + k, b, :, p], k_frozen, atol=EXACT, rtol=0)
                assert torch.allclose(cache.values[core + k, b, :, p], v_frozen, atol=EXACT, rtol=0)
            # the last active iteration saw the token's input of that iteration, not its final state
            assert not torch.allclose(cache.keys[core + d - 1, b, :, p], k_frozen, atol=1e-4)
            checked += 1
    assert checked > 0


# -----------------------------------------------------------------------------
# cached generation equals the uncached forward

def cached_logits(m, prompt, tokens):
    """The logits and depths of the positions from the prompt's last on, run as
    generate() runs them: the prompt, then one token at a time with a cache."""
    cache = KVCache(prompt.shape[1] + tokens.shape[1] - 1, m.cfg.n_prelude + m.cfg.max_depth)
    adaptive = torch.zeros_like(prompt, dtype=torch.bool)
    adaptive[:, -1] = True
    with torch.no_grad():
        outs = [m(prompt, adaptive=adaptive, cache=cache)]
        outs += [m(tokens[:, j:j + 1], cache=cache) for j in range(tokens.shape[1] - 1)]
    return torch.cat([o.logits[:, -1:] for o in outs], 1), torch.cat([o.depth[:, -1:] for o in outs], 1)


def teacher_forced(m, prompt, tokens):
    """The uncached forward over the prompt and the generated tokens (but the
    last), routing the positions from the prompt's last on, as generate() does."""
    P = prompt.shape[1]
    full = torch.cat([prompt, tokens], 1)[:, :-1]
    adaptive = torch.zeros_like(full, dtype=torch.bool)
    adaptive[:, P - 1:] = True
    m.eval()
    with torch.no_grad():
        return m(full, adaptive=adaptive)


@pytest.mark.parametrize("router,share,reinject,more", CONFIGS, ids=CONFIG_IDS)
def test_generate_matches_uncached_forward(router, share, reinject, more):
    """Generation, which skips the halted tokens' work, gives the tokens,
    depths and logits of the teacher-forced forward: at batch 4, where the
    tokens of one step halt at different depths, and one prompt at a time."""
    torch.manual_seed(7)
    D = 4
    m = perturb(make(router, share, reinject, **more, D=D, seed=7))
    B, P, N = 4, 12, 10
    prompt = torch.randint(0, V, (B, P))
    tokens, depths = m.generate(prompt, N)
    assert tokens.shape == depths.shape == (B, N)
    assert len(torch.unique(tokens)) >= 3, "outputs should vary for the comparison to mean something"
    if router != "none":  # some step's tokens halt at different depths: the batch really gathers
        assert (depths.amax(0) > depths.amin(0)).any()
    else:
        assert (depths == D).all()
    out = teacher_forced(m, prompt, tokens)
    assert torch.equal(out.logits[:, P - 1:].argmax(-1), tokens)
    assert torch.equal(out.depth[:, P - 1:], depths)
    assert (out.depth[:, :P - 1] == (more.get("prompt_depth") or D)).all()  # the prompt
    logits, cached_depths = cached_logits(m, prompt, tokens)
    assert torch.equal(cached_depths, depths)
    assert torch.allclose(logits, out.logits[:, P - 1:], atol=EXACT, rtol=0)

    # one prompt at a time gives the same as the batch
    for b in range(B):
        tb, db = m.generate(prompt[b:b + 1], N)
        assert torch.equal(tb[0], tokens[b]) and torch.equal(db[0], depths[b])
        assert torch.allclose(cached_logits(m, prompt[b:b + 1], tokens[b:b + 1])[0][0], logits[b], atol=EXACT, rtol=0)


@pytest.mark.parametrize("router,share,reinject,more", CONFIGS + [("early", True, False, {"early_input": "prompt"})],
                         ids=CONFIG_IDS + ["early-prompt-input"])
def test_prompt_in_chunks_through_the_cache_equals_the_uncached_forward(router, share, reinject, more):
    """A sequence fed through the cache in pieces (several tokens, then one,
    then several after the cached ones, where the mask is not plain causal)
    gives the logits and depths of one uncached forward, halted tokens included."""
    D, B, T = 4, 3, 20
    m = perturb(make(router, share, reinject, **more, D=D, seed=8)).eval()
    idx = torch.randint(0, V, (B, T), generator=torch.Generator().manual_seed(8))
    adaptive = torch.ones_like(idx, dtype=torch.bool)
    adaptive[:, :4] = False  # a prompt in the first piece (early_input "prompt" reads it there)
    cache = KVCache(T, m.cfg.n_prelude + D)
    with torch.no_grad():
        whole = m(idx, adaptive=adaptive)
        pieces = [m(idx[:, lo:hi], adaptive=adaptive[:, lo:hi], cache=cache) for lo, hi in ((0, 7), (7, 8), (8, T))]
    if router != "none":  # tokens of the last piece halt at different depths
        assert len(torch.unique(whole.depth[:, 8:])) >= 2
    assert torch.equal(torch.cat([p.depth for p in pieces], 1), whole.depth)
    assert torch.allclose(torch.cat([p.logits for p in pieces], 1), whole.logits, atol=EXACT, rtol=0)


@pytest.mark.parametrize("router,share,reinject,more", CONFIGS, ids=CONFIG_IDS)
def test_training_skips_the_last_iteration_of_tokens_nothing_reads(router, share, reinject, more):
    """With `outputs`, the training forward runs the last iteration's query,
    attention and MLP at those tokens only (rows counted through the block's
    query), and changes nothing the loss reads: the same depths, halting
    distribution and earlier exits everywhere, the same last exit and logits
    at the outputs, and the same loss and gradients for a loss that reads
    only them (halted outputs included: their neighbours see them frozen)."""
    torch.manual_seed(8)
    D = 4
    m = perturb(make(router, share, reinject, D=D, seed=8, **more)).train()
    idx = torch.randint(0, V, (3, 16))
    targets = torch.randint(0, V, idx.shape)
    targets[:, :5] = -1  # the prompt
    outputs = targets != -1
    rows = []
    handles = [block.q.register_forward_hook(lambda mod, args, out: rows.append(args[0].shape[:-1].numel()))
               for block in m.core]
    runs = {}
    for name, read in (("all", None), ("outputs", outputs)):
        m.zero_grad()
        rows.clear()
        out = m(idx, adaptive=outputs, counterfactual=True, outputs=read)
        out.loss, _ = m.loss(out, targets)
        out.loss.backward()
        runs[name] = out, sum(rows), {n: p.grad.clone() for n, p in m.named_parameters() if p.grad is not None}
    for handle in handles:
        handle.remove()
    (full, full_rows, full_grads), (part, part_rows, part_grads) = runs["all"], runs["outputs"]
    assert full_rows == D * idx.numel() and part_rows == (D - 1) * idx.numel() + int(outputs.sum())
    if router != "none":
        assert (full.depth[outputs] < D).any()  # some outputs halted before the last iteration
        assert torch.allclose(full.log_p_depth, part.log_p_depth, atol=EXACT)
    assert torch.equal(full.depth, part.depth)
    for k in range(D - 1):
        assert torch.allclose(full.exit_logits[k], part.exit_logits[k], atol=EXACT)
    assert torch.allclose(full.exit_logits[-1][outputs], part.exit_logits[-1][outputs], atol=EXACT)
    assert torch.allclose(full.logits[outputs], part.logits[outputs], atol=EXACT)
    if not more.get("anchor"):  # (anchored, a prompt frozen before it reaches a fixed point: the same token
        # in, the same frozen keys and values seen, the same state out)
        assert not torch.allclose(full.exit_logits[-1][~outputs], part.exit_logits[-1][~outputs], atol=1e-3)
    assert torch.allclose(full.loss, part.loss, atol=EXACT)
    assert full_grads.keys() == part_grads.keys()
    for n in full_grads:
        assert torch.allclose(full_grads[n], part_grads[n], atol=EXACT), n


@pytest.mark.parametrize("router", ["early", "online"])
def test_inference_computes_only_running_tokens(router):
    """In inference the core block runs its query, output projection and MLP
    for the running tokens alone, and the keys and values of a halted token's
    frozen state once: the rows through each of its linear layers, counted,
    are what the depths say. Training still runs every token at every depth."""
    torch.manual_seed(1)
    D = 4
    m = perturb(make(router, D=D, seed=1)).eval()
    block, rows = m.core[0], {}
    layers = {"q": block.q, "kv": block.kv, "proj": block.proj, "mlp": block.mlp[0]}

    def counter(name):
        def hook(module, args, output):
            rows[name] += args[0].reshape(-1, args[0].shape[-1]).shape[0]
        return hook

    handles = [layer.register_forward_hook(counter(name)) for name, layer in layers.items()]

    def expect(depth):  # a query per iteration run, plus the frozen keys of each token halted early
        ran = int(depth.sum())
        return {"q": ran, "proj": ran, "mlp": ran, "kv": ran + int((depth < D).sum())}

    # the teacher-forced inference forward: a prompt at full depth, then adaptive tokens
    idx = torch.randint(0, V, (3, 18))
    adaptive = torch.zeros_like(idx, dtype=torch.bool)
    adaptive[:, 6:] = True
    rows.update({name: 0 for name in layers})
    with torch.no_grad():
        out = m(idx, adaptive=adaptive)
    assert len(torch.unique(out.depth[:, 6:])) >= 3
    assert rows == expect(out.depth)

    # generate(), batch 4: the prompt's tokens run D iterations, each new position its depth
    B, P, N = 4, 10, 8
    rows.update({name: 0 for name in layers})
    tokens, depths = m.generate(torch.randint(0, V, (B, P)), N)
    assert (depths.amax(0) > depths.amin(0)).any()
    assert rows == expect(torch.cat([torch.full((B, P - 1), D), depths], 1))

    # training: every token at every depth (the counterfactual continuation)
    m.train()
    rows.update({name: 0 for name in layers})
    targets = torch.randint(0, V, idx.shape)
    with torch.no_grad():
        trained(m, idx, targets)
    assert rows["q"] == rows["kv"] == D * idx.numel()
    for h in handles:
        h.remove()


# -----------------------------------------------------------------------------
# what the early router reads (ModelConfig.early_input): the decision-timing ablation

EARLY_VARIANTS = [("prelude", 1), ("prelude", 2), ("embeddings", 1), ("prompt", 1)]
EARLY_IDS = ["prelude", "prelude-2-blocks", "embeddings", "prompt"]


def early_decisions(early_input, n_prelude, idx, targets):
    """The early router's log halting distribution (B, T, D) and the depths, in
    the training forward, of a perturbed model."""
    m = perturb(make("early", seed=3, early_input=early_input, n_prelude=n_prelude))
    m.train()
    with torch.no_grad():
        out = trained(m, idx, targets)
    return out.log_p_depth, out.depth


def answer_batch(B=3, T=16, P=6, seed=0):
    """Random ids with a prompt of P tokens: targets from position P - 1 on."""
    g = torch.Generator().manual_seed(seed)
    idx = torch.randint(0, V, (B, T), generator=g)
    targets = torch.randint(0, V, (B, T), generator=g)
    targets[:, :P - 1] = -1
    return idx, targets


def changed_at(idx, t):
    idx2 = idx.clone()
    idx2[:, t] = (idx[:, t] + 1 + torch.arange(idx.shape[0]) % (V - 1)) % V
    return idx2


@pytest.mark.parametrize("early_input,n_prelude", EARLY_VARIANTS, ids=EARLY_IDS)
def test_early_router_inputs_are_causal(early_input, n_prelude):
    idx, targets = answer_batch()
    t = 10
    a, da = early_decisions(early_input, n_prelude, idx, targets)
    b, db = early_decisions(early_input, n_prelude, changed_at(idx, t), targets)
    assert torch.allclose(a[:, :t], b[:, :t], atol=EXACT, rtol=0)
    assert torch.equal(da[:, :t], db[:, :t])
    assert len(torch.unique(da[targets != -1])) >= 2, "the router should pick several depths here"


def test_embedding_router_sees_only_its_token_and_the_token_shift():
    idx, targets = answer_batch()
    t, K = 8, ModelConfig.token_shift
    a, _ = early_decisions("embeddings", 1, idx, targets)
    b, _ = early_decisions("embeddings", 1, changed_at(idx, t), targets)
    assert not torch.allclose(a[:, t], b[:, t], atol=1e-4)  # it sees its own token
    assert torch.allclose(a[:, t + K + 1:], b[:, t + K + 1:], atol=EXACT, rtol=0)  # no attention
    # whereas the prelude router (h0) sees every earlier token
    c, _ = early_decisions("prelude", 1, idx, targets)
    d, _ = early_decisions("prelude", 1, changed_at(idx, t), targets)
    assert not torch.allclose(c[:, t + K + 1:], d[:, t + K + 1:], atol=1e-4)


def test_prompt_router_never_sees_the_answer_so_far():
    P = 6
    idx, targets = answer_batch(P=P)
    a, _ = early_decisions("prompt", 1, idx, targets)
    answer = slice(P - 1, None)
    # an answer token changed: no answer token's decision moves
    b, _ = early_decisions("prompt", 1, changed_at(idx, P + 2), targets)
    assert torch.allclose(a[:, answer], b[:, answer], atol=EXACT, rtol=0)
    # a prompt token changed: the decisions move (it reads the prompt)
    c, _ = early_decisions("prompt", 1, changed_at(idx, 2), targets)
    assert not torch.allclose(a[:, answer], c[:, answer], atol=1e-4)
    # and they differ from step to step of the answer
    assert not torch.allclose(a[:, P], a[:, P + 1], atol=1e-4)


@pytest.mark.parametrize("early_input", ["embeddings", "prompt"])
def test_generate_matches_uncached_forward_for_early_inputs(early_input):
    torch.manual_seed(5)
    m = perturb(make("early", seed=5, early_input=early_input))
    B, P, N = 4, 12, 10
    prompt = torch.randint(0, V, (B, P))
    tokens, depths = m.generate(prompt, N)
    assert (depths.amax(0) > depths.amin(0)).any(), "tokens of one step should halt at different depths"
    out = teacher_forced(m, prompt, tokens)
    assert torch.equal(out.logits[:, P - 1:].argmax(-1), tokens)
    assert torch.equal(out.depth[:, P - 1:], depths)
    logits, _ = cached_logits(m, prompt, tokens)
    assert torch.allclose(logits, out.logits[:, P - 1:], atol=EXACT, rtol=0)


def test_generate_stops_at_end_id():
    torch.manual_seed(8)
    m = perturb(make("online", D=4, seed=8))
    prompt = torch.randint(0, V, (1, 9))
    tokens, depths = m.generate(prompt, 12)
    distinct = [i for i in range(1, 12) if int(tokens[0, i]) not in tokens[0, :i].tolist()]
    assert distinct, "need a token that first appears after position 0"
    j = distinct[0]
    end = int(tokens[0, j])
    t2, d2 = m.generate(prompt, 12, end_id=end)
    assert t2.shape[1] == j + 1
    assert torch.equal(t2[0], tokens[0, :j + 1]) and torch.equal(d2[0], depths[0, :j + 1])


# -----------------------------------------------------------------------------
# halting distribution math

def test_log_p_from_halt_logits_by_hand():
    torch.manual_seed(9)
    a = torch.tensor([0.0, torch.log(torch.tensor(3.0)), -torch.log(torch.tensor(3.0)), 5.0])
    # hazards 1/2, 3/4, 1/4, and the last depth always stops
    p = log_p_from_halt_logits(a).exp()
    expect = torch.tensor([0.5, 0.5 * 0.75, 0.5 * 0.25 * 0.25, 0.5 * 0.25 * 0.75])
    assert torch.allclose(p, expect, atol=EXACT)
    assert torch.allclose(p.sum(), torch.tensor(1.0), atol=EXACT)

    a = torch.randn(3, 5, 6) * 3
    log_p = log_p_from_halt_logits(a)
    assert log_p.shape == a.shape
    assert torch.allclose(log_p.exp().sum(-1), torch.ones(3, 5), atol=EXACT)
    h = torch.sigmoid(a.double())
    h[..., -1] = 1.0
    cont = torch.cumprod(1 - h, -1)
    by_hand = h * torch.cat([torch.ones_like(cont[..., :1]), cont[..., :-1]], -1)
    assert torch.allclose(log_p.exp().double(), by_hand, atol=EXACT)
    # all the remaining mass is on the last depth, whatever its own logit says
    for last in (-50.0, 0.0, 50.0):
        a2 = a.clone()
        a2[..., -1] = last
        assert torch.allclose(log_p_from_halt_logits(a2), log_p, atol=EXACT)
    assert torch.allclose(log_p[..., -1].exp().double(), torch.prod(1 - h[..., :-1], -1), atol=EXACT)


def test_hazards_from_log_p_inverts():
    torch.manual_seed(10)
    log_p = F.log_softmax(torch.randn(4, 7, 5) * 2, -1)
    h = hazards_from_log_p(log_p)
    assert h.shape == log_p.shape
    assert (h >= 0).all() and (h <= 1 + 1e-6).all()
    assert torch.allclose(h[..., -1], torch.ones(4, 7), atol=EXACT)
    cont = torch.cumprod(1 - h, -1)
    rebuilt = h * torch.cat([torch.ones_like(cont[..., :1]), cont[..., :-1]], -1)
    assert torch.allclose(rebuilt, log_p.exp(), atol=EXACT)
    # and through the online form: logits of those hazards give the same distribution back
    a = torch.logit(h.double().clamp(1e-12, 1 - 1e-12))
    assert torch.allclose(log_p_from_halt_logits(a).exp(), log_p.exp().double(), atol=EXACT)
    # uniform over D depths: hazards 1/(D-k+1), above 0.5 only at the last depth
    u = hazards_from_log_p(torch.full((5,), -torch.log(torch.tensor(5.0))))
    assert torch.allclose(u, torch.tensor([1 / 5, 1 / 4, 1 / 3, 1 / 2, 1.0]), atol=EXACT)


# -----------------------------------------------------------------------------
# the collapse guard

def hand_loss_terms(out, targets, ponder):
    mask = targets != -1
    y = targets[mask]
    ce = torch.stack([F.cross_entropy(lg[mask], y, reduction="none") for lg in out.exit_logits], -1)
    D = ce.shape[-1]
    w = torch.arange(1, D + 1, dtype=ce.dtype)
    lm = (ce.mean(0) * w).sum() / w.sum()
    d_star = (ce.detach() + ponder * torch.arange(D, dtype=ce.dtype)).argmin(-1)
    return lm, d_star, ce


@pytest.mark.parametrize("router", ["early", "online"])
def test_target_depth_and_router_gradient(router):
    torch.manual_seed(11)
    D = 4
    m = perturb(make(router, D=D, seed=11), router_std=0.3).train()
    _, idx, targets = dfs_batch(11)
    mask = targets != -1
    for ponder in (0.0, 0.05, 0.5):
        out = trained(m, idx, targets, route=False, ponder=ponder)
        lm, d_star, ce = hand_loss_terms(out, targets, ponder)
        # d* = argmin_d CE_d + ponder (d - 1), checked against a brute-force loop
        for i in range(0, len(d_star), 7):
            costs = [ce[i, d].item() + ponder * d for d in range(D)]
            assert costs[int(d_star[i])] == pytest.approx(min(costs), abs=1e-6)
        assert out.parts["target_depth"] == pytest.approx(d_star.float().mean().item() + 1, abs=1e-5)
        assert out.parts["lm"] == pytest.approx(lm.item(), abs=1e-5)
        halt = F.nll_loss(out.log_p_depth[mask], d_star)
        assert out.parts["halt"] == pytest.approx(halt.item(), abs=1e-5)
        assert out.loss.item() == pytest.approx(lm.item() + halt.item(), abs=1e-5)
    assert len(torch.unique(d_star)) >= 2  # the targets really differ between tokens
    # a large compute cost puts every target at depth 1
    out = trained(m, idx, targets, route=False, ponder=100.0)
    assert out.parts["target_depth"] == pytest.approx(1.0)

    # one gradient step of the router moves probability onto d*
    ponder = 0.05
    out = trained(m, idx, targets, route=False, ponder=ponder)
    _, d_star, _ = hand_loss_terms(out, targets, ponder)
    before = out.log_p_depth[mask].gather(1, d_star[:, None]).mean().item()
    m.zero_grad()
    out.loss.backward()
    with torch.no_grad():
        for p in m.router.parameters():
            p -= 0.05 * p.grad
        after_out = trained(m, idx, targets, route=False, ponder=ponder)
    after = after_out.log_p_depth[mask].gather(1, d_star[:, None]).mean().item()
    assert after > before


@pytest.mark.parametrize("router", ["none", "online"])
def test_prompt_loss_adds_the_prompt_cross_entropy(router):
    """With prompt_targets the loss gains the mean next-token cross-entropy of
    the prompt at max_depth, and its gradient reaches the shared block."""
    m = perturb(make(router, seed=13)).train()
    exs, idx, targets = dfs_batch(13)
    prompt = torch.from_numpy(tasks.prompt_targets(idx.numpy(), targets.numpy()))
    plain = trained(m, idx, targets, route=False)
    out = trained(m, idx, targets, route=False, prompt_targets=prompt)
    in_prompt = prompt != -1
    assert in_prompt.sum() == sum(len(ex.prompt) - 1 for ex in exs)
    assert (out.depth[in_prompt] == m.cfg.max_depth).all()
    expected = F.cross_entropy(out.logits[in_prompt], prompt[in_prompt])
    assert out.parts["prompt"] == pytest.approx(expected.item(), abs=1e-5)
    assert out.loss.item() == pytest.approx(plain.loss.item() + expected.item(), abs=1e-4)
    m.zero_grad()
    (out.loss - plain.loss).backward()
    assert m.core[0].mlp[0].weight.grad.abs().sum() > 0


@pytest.mark.parametrize("router", ROUTERS)
def test_exit_targets_train_each_exit_and_leave_d_star_on_the_answer(router):
    """Hint supervision: the exit at depth d is trained on its own target (for
    router none too, every exit weighing the same), while d* still weighs
    each depth's cross-entropy against the answer."""
    D, ponder = 3, 0.01
    m = perturb(make(router, D=D, seed=14)).train()
    exs = tasks.sample_examples("lang", random.Random(14), (5, 6), 4, chain_order="reverse")
    idx, targets, _ = tasks.make_batch(exs)
    exits = torch.from_numpy(tasks.exit_targets(exs, targets, D))
    idx, targets = torch.from_numpy(idx), torch.from_numpy(targets)
    mask = targets != -1
    assert (exits[mask][:, 0] != targets[mask]).any()  # some hints differ from the answer
    plain = trained(m, idx, targets, route=False, ponder=ponder)
    out = trained(m, idx, targets, route=False, ponder=ponder, exit_targets=exits)
    assert len(out.exit_logits) == D
    ce = torch.stack([F.cross_entropy(lg[mask], exits[mask][:, d], reduction="none")
                      for d, lg in enumerate(out.exit_logits)], -1)
    lm = ce.mean().item()
    assert out.parts["lm"] == pytest.approx(lm, abs=1e-5)
    assert out.parts["lm"] != pytest.approx(plain.parts["lm"], abs=1e-5)
    if router == "none":
        assert torch.allclose(out.exit_logits[-1], out.logits)  # the last exit is the output
        assert out.loss.item() == pytest.approx(lm, abs=1e-5)
        return
    _, d_star, _ = hand_loss_terms(plain, targets, ponder)  # from the answer's cross-entropy
    assert out.parts["target_depth"] == pytest.approx(d_star.float().mean().item() + 1, abs=1e-5)
    assert out.parts["halt"] == pytest.approx(plain.parts["halt"], abs=1e-5)
    assert out.loss.item() == pytest.approx(lm + plain.parts["halt"], abs=1e-5)
    # the answer at every exit: the exits of the loss without hints, weighed equally
    answer = trained(m, idx, targets, route=False, ponder=ponder, exit_targets=targets[..., None].expand(-1, -1, D))
    plain_ce = torch.stack([F.cross_entropy(lg[mask], targets[mask]) for lg in plain.exit_logits])
    assert answer.parts["lm"] == pytest.approx(plain_ce.mean().item(), abs=1e-5)
    assert answer.parts["lm"] != pytest.approx(plain.parts["lm"], abs=1e-5)  # which weighs them by d


def test_lm_trained_at_every_depth_when_router_halts_at_one():
    torch.manual_seed(12)
    D = 4
    m = make("online", D=D, seed=12)
    with torch.no_grad():
        m.router[-1].bias.fill_(10.0)  # hazard ~ 1 after the first iteration
    _, idx, targets = dfs_batch(12)
    mask = targets != -1
    with torch.no_grad():
        ev = m.eval()(idx, adaptive=mask)
    assert (ev.depth[mask] == 1).all() and (ev.depth[~mask] == D).all()
    m.train()
    out = trained(m, idx, targets, route=True)
    assert (out.depth[mask] == 1).all()  # the visible stream halts at depth 1
    assert len(out.exit_logits) == D
    assert not torch.allclose(out.exit_logits[-1][mask], out.exit_logits[0][mask], atol=1e-4)
    m.zero_grad()
    out.loss.backward()
    # the last depth's embedding is only used by iteration D: it gets gradient
    # only if the halted tokens run their counterfactual continuation
    assert m.depth_embed.grad[D - 1].abs().sum() > 0
    for name, p in m.core.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


@pytest.mark.parametrize("router", ["early", "online"])
def test_router_reads_detached_states(router):
    torch.manual_seed(13)
    m = perturb(make(router, D=4, seed=13), router_std=0.5).train()
    _, idx, targets = dfs_batch(13)
    mask = targets != -1
    out = trained(m, idx, targets, ponder=0.05)
    assert len(torch.unique(out.depth[mask])) >= 2  # the router really decides: depths differ
    # the halting loss alone reaches the router only
    halt = F.nll_loss(out.log_p_depth[mask], torch.randint(0, 4, (int(mask.sum()),)))
    m.zero_grad()
    halt.backward(retain_graph=True)
    for name, p in non_router_params(m):
        assert p.grad is None or (p.grad == 0).all(), name
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in m.router.parameters())
    # and the full loss gives the language model the gradient of its own part only
    m.zero_grad()
    out.loss.backward(retain_graph=True)
    full = {n: p.grad.clone() for n, p in non_router_params(m)}
    m.zero_grad()
    lm, _, _ = hand_loss_terms(out, targets, 0.05)
    lm.backward()
    for name, p in non_router_params(m):
        assert torch.allclose(full[name], p.grad, atol=EXACT), name


# -----------------------------------------------------------------------------
# a tiny model overfits a tiny batch

@pytest.mark.parametrize("router", ["online", "none"])
def test_overfits_tiny_batch(router):
    torch.manual_seed(14)
    exs, idx, targets = dfs_batch(14, num=4, sizes=(4, 5))
    mask = targets != -1
    m = make(router, D=3, seed=14)

    def accuracy():
        m.eval()
        with torch.no_grad():
            out = m(idx, adaptive=mask)
        m.train()
        return (out.logits.argmax(-1)[mask] == targets[mask]).float().mean().item()

    assert accuracy() < 0.5
    opt = torch.optim.AdamW(m.parameters(), lr=3e-3)
    for _ in range(200):
        out = trained(m, idx, targets)
        opt.zero_grad()
        out.loss.backward()
        opt.step()
    assert accuracy() == 1.0
    # greedy decoding with the cache reproduces every target exactly
    for ex in exs:
        prompt = torch.tensor([tasks.encode(ex.prompt)])
        tokens, depths = m.generate(prompt, len(ex.target) + 3, end_id=tasks.END)
        assert tasks.decode(tokens[0].tolist()) == ex.target
        assert int(depths.min()) >= 1 and int(depths.max()) <= 3


# -----------------------------------------------------------------------------

def test_bad_configs_raise():
    torch.manual_seed(15)
    with pytest.raises(ValueError):
        ANIRA(ModelConfig(router="nope"))
    with pytest.raises(ValueError):
        ANIRA(ModelConfig(d_model=32, n_heads=2, share=False, router="online"))
    with pytest.raises(ValueError):
        ANIRA(ModelConfig(d_model=32, n_heads=2, share=False, router="early"))
    with pytest.raises(ValueError):
        ANIRA(ModelConfig(d_model=32, n_heads=2, router="early", halt_when_converged=True))
    m = ANIRA(ModelConfig(d_model=32, n_heads=2, max_depth=3, share=False, router="none"))
    assert len(m.core) == 3


def test_norm_state_feeds_every_iteration_the_normalized_state():
    """With norm_state (train.py --norm-state) iteration k reads LayerNorm(s_{k-1}),
    in training (every token) and at inference (the running ones)."""
    m = perturb(make("online", D=4, seed=16, depth_embed=False, norm_state=True))
    with torch.no_grad():
        m.state_norm.weight.normal_(1.0, 0.5)
        m.state_norm.bias.normal_(0.0, 0.5)
    idx = torch.randint(0, V, (2, 12))
    for train_mode in (True, False):
        calls, handle = record_core_calls(m.train(train_mode))
        with torch.no_grad():
            if train_mode:
                trained(m, idx, torch.randint(0, V, idx.shape))
            else:
                m(idx)
        handle.remove()
        assert len(calls) >= 2
        for k in range(1, len(calls)):
            rows = rows_of(calls[k - 1])
            before = calls[k - 1]["out"][[rows[int(i)] for i in calls[k]["run"]]]
            assert torch.allclose(calls[k]["x"], m.state_norm(before), atol=EXACT)


@pytest.mark.parametrize("depth_embed", [True, False])
def test_depth_embedding_ties_the_step_to_k_only_when_on(depth_embed):
    """With depth_embed off (train.py --no-depth-embed) the block's input at
    iteration k is the state alone, so the step cannot depend on k."""
    m = perturb(make("online", D=4, seed=15, depth_embed=depth_embed)).eval()
    idx = torch.randint(0, V, (2, 12))
    with torch.no_grad():
        before = m(idx, route=False).logits
        m.depth_embed.normal_(0, 1.0)
        after = m(idx, route=False).logits
    assert torch.allclose(before, after, atol=EXACT) != depth_embed

