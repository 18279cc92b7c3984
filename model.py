"""
ANIRA: a causal recurrent Transformer in which every token runs its own depth.

    tokens -> embedding (+ the previous tokens') -> prelude (n_prelude blocks) -> h0
           -> one shared block, iterated: token i runs d_i iterations (1..max_depth)
           -> final norm -> LM head

Routers decide d_i (arXiv 2602.08864, "Understanding Dynamic Compute
Allocation in Recurrent Transformers"):
  none    every token runs max_depth iterations (fixed-depth baseline);
          with share=False it is a standard Transformer of max_depth blocks.
  early   ANIRA-E: an MLP reads the shallow representation h0 (or, for the
          decision-timing ablation, the embeddings alone or only the prompt:
          early_input) and gives a distribution over depths before the
          first iteration.
  online  ANIRA-O: a halting unit reads the token's state after every
          iteration and gives the probability of stopping there.

Both adaptive routers are one mechanism that differs only in *when* it
decides. Each gives, per token, a hazard h_k = P(stop at k | reached k) and so
a halting distribution over depths

    p(d) = h_d * prod_{k<d} (1 - h_k),     h_max_depth = 1.

ANIRA-E's hazards come from a softmax fixed before the recurrence
(h_k = p(k) / sum_{j>=k} p(j)); ANIRA-O's from a sigmoid on the state after
iteration k. One halting rule serves both, in training and in inference:

    a token stops after the first iteration k with h_k > 0.5
    (with halt_when_converged, a test-time rule for ANIRA-O, only once its
    exit after k names the token its exit after k-1 named).

Halted tokens are frozen: their state stops changing, and at every later
iteration the other tokens attend to that frozen state (no token leaves the
attention). Causality holds at every depth.

Training objective (see `loss` below). The known failure of halting is a
collapse to depth 1 (ACT's weighted output and PonderNet's expected loss
both collapsed on DFS in a prototype of this project): when the task loss
flows through the halting distribution, the depths the router stops using
stop being trained, which makes them worse, which makes the router avoid
them. So here the two are decoupled:
  1. The language model is trained at every depth ("deep supervision", an
     exit after every iteration, weighted towards depth), whatever the router
     says. For this every token also runs a *counterfactual* continuation past
     its halting depth during training: its own state keeps iterating while
     every other token still sees it frozen. This is what tells us how much
     more depth would have bought it. With hint supervision (train.py
     --hints, lang) the exit after iteration d is trained on the d-th step
     of the algorithm's trace instead (the d-th hop of a chase), every exit
     weighing the same, as CLRS trains on an algorithm's intermediate states.
  2. Each token's target depth is the one that best trades its loss against
     compute:  d* = argmin_d  CE_d + ponder * (d - 1),  with CE_d the token's
     cross-entropy at depth d (detached). The router is trained to put its
     halting distribution on d*:  L_halt = -log p(d*). Tokens whose loss keeps
     falling with depth get a deeper target; easy tokens a shallow one.
  3. On dfs and topo the prompt is trained too, as plain language modelling
     at max_depth (its tokens never halt): train.py --prompt-loss, whose
     default per task is tasks.PROMPT_LOSS.
The router reads detached representations, so halting never shapes them.

Reading order: ANIRA.forward (embed, prelude, Halting, recur, head), ANIRA.recur
(the recurrence), ANIRA.loss and its two losses, Halting (the routers' hazards
and the halting rule), Skipping (how inference skips halted tokens' work: the
same recurrence, computed only where tokens still run), Block, KVCache.
"""
import contextlib
import math
from collections import namedtuple
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

ROUTERS = ("none", "early", "online")
EARLY_INPUTS = ("prelude", "embeddings", "prompt")  # what ANIRA-E reads: see early_router_input


@dataclass
class ModelConfig:
    vocab_size: int = 35      # len(tasks.VOCAB)
    d_model: int = 128
    n_heads: int = 4
    n_prelude: int = 1
    max_depth: int = 8
    router: str = "online"   # none | early | online
    share: bool = True       # False: max_depth unshared blocks (router none only)
    reinject: bool = False   # add h0 to the state before every iteration
    token_shift: int = 2     # inputs also see the previous token_shift tokens (0: off)
    halt_threshold: float = 0.5
    early_input: str = "prelude"  # prelude | embeddings | prompt (router early only)
    depth_embed: bool = True  # add a learned embedding of the iteration k before each iteration
    norm_state: bool = False  # LayerNorm the state before each iteration: its scale stops growing with k
    anchor: bool = False     # discrete anchoring: x_k = h0 + embedding of exit k-1's token (see recur);
    #                          learned with train.py --anchor-forcing, the step that chases 16 hops after
    #                          training on 4 (RESULTS.md "Thinking longer")
    prompt_depth: int = 0    # iterations every prompt token runs (0: max_depth, as routers leave it)
    halt_when_converged: bool = False  # ANIRA-O halts a token only once its exit names the token the previous
    #                          iteration's did: the answer has stopped changing (Deep Thinking's fixed point).
    #                          A test-time rule (evaluate.py --halt-when-converged; training's halting loss
    #                          ignores it): at least 2 iterations, never fewer than the router's, which on
    #                          long chases takes the router's early halts back (RESULTS.md "Thinking longer")


@dataclass
class Output:
    logits: torch.Tensor            # (B, T, V) at each token's own depth
    depth: torch.Tensor             # (B, T) iterations each token ran
    exit_logits: list = None        # per iteration (B, T, V), counterfactual (training) only
    log_p_depth: torch.Tensor = None  # (B, T, D) log halting distribution, counterfactual only


class ANIRA(nn.Module):

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        if cfg.router not in ROUTERS:
            raise ValueError(f"unknown router {cfg.router!r}; choose one of {', '.join(ROUTERS)}")
        if cfg.early_input not in EARLY_INPUTS:
            raise ValueError(f"unknown early_input {cfg.early_input!r}; choose one of {', '.join(EARLY_INPUTS)}")
        if not cfg.share and cfg.router != "none":
            raise ValueError("an unshared stack has no recurrence to halt: use router none")
        if cfg.anchor and (cfg.reinject or cfg.norm_state):
            raise ValueError("anchor replaces the state by h0 and a token: there is no state to reinject into "
                             "or to normalize")
        if cfg.halt_when_converged and cfg.router != "online":
            raise ValueError("halt_when_converged is a rule for ANIRA-O's halting (router online)")
        if not 0 <= cfg.prompt_depth <= cfg.max_depth:
            raise ValueError(f"prompt_depth {cfg.prompt_depth} is outside 0..max_depth ({cfg.max_depth})")
        self.cfg = cfg
        C, D = cfg.d_model, cfg.max_depth
        self.embed = nn.Embedding(cfg.vocab_size, C)
        self.shift_embed = nn.ModuleList(nn.Embedding(cfg.vocab_size, C) for _ in range(cfg.token_shift))
        self.prelude = nn.ModuleList(Block(C, cfg.n_heads) for _ in range(cfg.n_prelude))
        self.core = nn.ModuleList(Block(C, cfg.n_heads) for _ in range(1 if cfg.share else D))
        self.depth_embed = nn.Parameter(torch.randn(D, C) * 0.02)
        # the residual state grows with every iteration (RMS about 1.5 -> 5 over 8 of them), so
        # without this norm the block's input at iteration k also depends on k. Measured on lang
        # (seed 0): the scale stays flat, but chains longer than trained were not resolved better
        self.state_norm = nn.LayerNorm(C) if cfg.norm_state else None
        self.norm = nn.LayerNorm(C)
        self.head = nn.Linear(C, cfg.vocab_size, bias=False)
        self.head.weight = self.embed.weight  # tied, as in nanoGPT
        if cfg.router == "early":    # h0 -> logits over depths 1..D
            self.router = nn.Sequential(nn.LayerNorm(C), nn.Linear(C, C), nn.GELU(), nn.Linear(C, D))
        elif cfg.router == "online":  # state after iteration k -> halting logit
            self.router = nn.Sequential(nn.LayerNorm(C), nn.Linear(C, C), nn.GELU(), nn.Linear(C, 1))
        self.apply(init_weights)
        if cfg.router == "online":
            # start by continuing (sigmoid(-2) = 0.12 < 0.5): no early depth-1 trap
            nn.init.constant_(self.router[-1].bias, -2.0)
        # (early: zero logits are uniform over depths, whose hazards 1/(D-k+1)
        #  pass 0.5 only at the last depth, so it too starts at full depth)

    def forward(self, idx, adaptive=None, route=True, counterfactual=False, cache=None, forced_depth=None,
                outputs=None, anchors=None):
        """Run the model on token ids idx (B, T); returns an Output.

        adaptive  (B, T) bool: the tokens whose depth the router decides (the
                  answer); the others (the prompt) run max_depth. Default: all.
        route     False runs every token to max_depth (the warm-up before
                  halting is switched on); the router's distribution is still
                  computed, and trained.
        counterfactual  the training forward: every token runs all max_depth
                  iterations (past its halt, its own state keeps iterating while
                  the others see it frozen), and the Output holds every
                  iteration's exit and the halting distribution, for `loss`.
                  False (inference) computes only the tokens still running.
        cache     a KVCache: the T tokens follow the ones it holds (generate()).
        forced_depth  (B, T) ints in 1..max_depth: an oracle that runs each
                  token exactly that many iterations, whatever the router says
                  (evaluate.py --depth hops); any router, none included.
        outputs   (B, T) bool, with counterfactual: the tokens whose logits
                  the loss reads (default: all). At the last iteration the
                  others need only their keys and values, not its queries,
                  attention and MLP (on lang, whose prompt has no loss, two
                  thirds of the tokens): their logits and last exit are
                  those of the iteration before, which nothing reads.
        anchors   (B, T, max_depth) token ids, with anchor and counterfactual:
                  the token whose embedding iteration k+1's input takes in
                  place of exit k's prediction, -1 to keep the prediction
                  (train.py --anchor-forcing feeds the true hops).
        """
        if adaptive is None:
            adaptive = torch.ones_like(idx, dtype=torch.bool)
        pos = self.positions(idx.shape[1], idx.device, cache)
        embedded = self.embed_tokens(idx, cache)
        h0 = embedded
        for i, block in enumerate(self.prelude):
            h0 = block(h0, pos, cache and cache.layer(i))
        halting = Halting(self, embedded, h0, adaptive, route, cache, forced_depth)
        visible, depth, exits = self.recur(h0, halting, pos, cache, counterfactual, outputs, anchors)
        return Output(logits=self.head(self.norm(visible)), depth=depth, exit_logits=exits or None,
                      log_p_depth=halting.log_p_depth() if counterfactual else None)

    def recur(self, h0, halting, pos, cache=None, counterfactual=False, outputs=None, anchors=None):
        """The recurrence: token i runs d_i iterations of the shared block.

            x_k = s_{k-1} + e_k  (+ h0 with reinject)     s_0 = h0, e_k the embedding of iteration k
                  (s_{k-1} LayerNormed first with norm_state)
            x_k = h0 + E[argmax exit_{k-1}] + e_k  with anchor, for k > 1
            s_k = block(x_k), attending to the keys and values of x_k at the
                  tokens still running and of the frozen state at halted ones
            a token halts after iteration k if its hazard h_k > halt_threshold
                  (and, with halt_when_converged, exit k names exit k-1's token)

        Returns the visible states (each token's state at its own depth), the
        depths, and in training every iteration's exit logits. `state` is each
        token's own state, `visible` what the others attend to: they differ
        only in training, where a halted token keeps iterating (the
        counterfactual continuation that `loss` trains every depth with).
        Inference skips the halted tokens' work (`Skipping`); training, with
        `outputs`, the last iteration of tokens whose output nothing reads.
        """
        cfg = self.cfg
        state = visible = h0
        running = torch.ones(h0.shape[:2], dtype=torch.bool, device=h0.device)
        depth = torch.zeros_like(running, dtype=torch.long)
        skip = None if counterfactual else Skipping()
        exits = []
        for k in range(cfg.max_depth):
            block = self.core[0 if cfg.share else k]
            layer = cache and cache.layer(cfg.n_prelude + k)
            if skip is not None and skip.rows is not None:  # only the running tokens compute
                x = self.iteration_input(skip.take(visible), skip.take(h0) if cfg.reinject or cfg.anchor else None,
                                         k)
                state = block(x, pos, layer, skip.kv, skip.rows)
                skip.put(visible, state)
            else:  # every token computes; in training the others see a halted one frozen
                given = anchors[..., k - 1] if anchors is not None and k > 0 else None
                x = self.iteration_input(state, h0, k, given)
                kv = block.keys_values(torch.where(running[..., None], x, visible)) if counterfactual else None
                if outputs is not None and k == cfg.max_depth - 1:  # the last: only the outputs the loss reads
                    state = last_iteration(block, x, state, kv, pos, outputs)
                else:
                    state = block(x, pos, layer, kv)
                visible = torch.where(running[..., None], state, visible) if counterfactual else state
            depth += running
            if counterfactual:
                exits.append(self.head(self.norm(state)))
            if not halting.can_stop(k):
                continue
            halted = running & halting.stops_after(k, state, skip and skip.rows)
            running = running & ~halted
            if skip is not None and skip.freeze(block, visible, halted, running):
                if cache is not None:  # no token runs on: the later iterations see the frozen states
                    cache.write(slice(cfg.n_prelude + k + 1, None), *block.heads(skip.kv, pos))
                break
        return visible, depth, exits

    def iteration_input(self, state, h0, k, given=None):
        """x_k: the state s_{k-1} (normalized with norm_state), plus the
        embedding e_k of iteration k (unless the step must not depend on k:
        depth_embed False), plus h0 with reinject.

        With anchor, past the first iteration the state is replaced by h0 plus
        the embedding of the token exit k-1 predicts (hard argmax; no gradient
        through the choice, each exit has its own hint loss), the discrete
        bottleneck of Altabaa et al. 2025: the state carries one hop's answer
        and nothing else, so iteration k cannot tell how late it is from the
        state's growth. With --hints the exits name the hops of a chase, and
        iteration k computes the next hop from the current one. `given` (B, T)
        token ids replace the prediction where they are not -1 (teacher
        forcing in training: each hop learned from the true previous one)."""
        if self.cfg.anchor and k > 0:
            token = self.head(self.norm(state)).argmax(-1)
            if given is not None:
                token = torch.where(given >= 0, given, token)
            state = h0 + self.embed(token)
        state = self.state_norm(state) if self.cfg.norm_state else state
        x = state + self.depth_embed[k] if self.cfg.depth_embed else state
        return x + h0 if self.cfg.reinject else x

    def positions(self, T, device, cache=None):
        """Rotary tables and attention mask of the next T positions."""
        if cache is not None:
            return cache.extend(T, self.cfg.d_model // self.cfg.n_heads, device)
        return Positions(*rotary(T, self.cfg.d_model // self.cfg.n_heads, device), mask=None, causal=True)

    def early_router_input(self, embedded, h0, answer, cache=None):
        """What ANIRA-E's router reads (cfg.early_input), an ablation of how
        early "early" is. The paper's early decision leans on static cues
        (graph size, hubs); ours reads h0, which has already attended to the
        whole prompt and to the answer so far, so it may already hold the
        execution state (the DFS stack) that only online halting should see.
        Measured (RESULTS.md, "What the early router reads"): reading less does not make the
        decision static; it follows the token and its step into the answer.
          prelude     h0, the prelude's output (the default). With n_prelude 2,
                      after two attention blocks instead of one.
          embeddings  the token and token-shift embeddings, no attention: the
                      router sees its token and the token_shift before it.
          prompt      a decision made before the answer: h0 at the first
                      answer position (the prompt's last token, <sep>), the
                      same for every answer token of a sequence, plus a code
                      of the token's step s into the answer. It sees the whole
                      prompt (size, structure) and s, never the answer so far.
                      Prompt tokens (never routed) read their own h0.
        """
        mode = self.cfg.early_input
        if mode == "prelude":
            return h0
        if mode == "embeddings":
            return embedded
        B, T, C = h0.shape
        offset = cache.start if cache is not None else 0
        if offset:  # decoding: the prompt ran before and left its summary
            first, summary = cache.answer_start, cache.prompt_summary
        else:
            first = answer.int().argmax(1)  # (B,) first answer position
            summary = h0[torch.arange(B, device=h0.device), first]
            if cache is not None:
                cache.answer_start, cache.prompt_summary = first, summary
        step = torch.arange(offset, offset + T, device=h0.device) - first[:, None]  # (B, T)
        decided = summary[:, None] + step_code(step.clamp(min=0), C)
        return torch.where((step >= 0)[..., None], decided, h0)

    def embed_tokens(self, idx, cache=None):
        """Token embeddings plus the token shift: every token also sees the ids
        of the K = token_shift tokens before it (id 0, <pad>, before the
        first), each offset through its own embedding table: a short causal
        convolution over the input, as in the associative-recall studies
        (Zoology, Based). A lookup ("the value bound to c": c = 3 ... c -> ?)
        needs the key beside its value. Without the shift, previous-token
        heads must form first, and until they do no gradient rewards the
        lookup (the induction-head plateau): lang was never learned."""
        x = self.embed(idx)
        K, T = self.cfg.token_shift, idx.shape[1]
        if not K:
            return x
        before = cache.recent if cache is not None and cache.start else idx.new_zeros(idx.shape[0], K)
        padded = torch.cat([before, idx], 1)
        for j, embed in enumerate(self.shift_embed, 1):  # j tokens back
            x = x + embed(padded[:, K - j:K - j + T])
        if cache is not None:
            cache.recent = padded[:, -K:]
        return x

    def loss(self, out, targets, ponder=0.002, prompt_targets=None, exit_targets=None):
        """The training loss of a counterfactual forward's Output, and its terms
        as floats for logging (see the module docstring for why it is built so):

            L = L_lm + L_halt (adaptive routers) + L_prompt (with prompt_targets)

        targets (B, T): next-token ids, -1 where there is no loss.
        L_lm      every exit trained, `language_model_loss`; with exit_targets
                  (B, T, max_depth, hint supervision) exit d on its own target,
                  the d-th hop of a chase, for router none too.
        L_halt    -log p(d*), `halting_loss`.
        L_prompt  the mean cross-entropy of the prompt's next tokens at
                  max_depth (prompt tokens never halt): predicting the sorted
                  adjacency lists teaches which nodes are neighbours and the
                  order of labels, what DFS looks up.
        """
        lm = language_model_loss(out, targets, exit_targets, weigh_by_depth=self.cfg.router != "none")
        loss, parts = lm, {"lm": lm.item()}
        if self.cfg.router != "none":
            halt, target_depth = halting_loss(out, targets, ponder)
            loss = loss + halt
            parts.update(halt=halt.item(), target_depth=target_depth.float().mean().item() + 1)
        if prompt_targets is not None:
            in_prompt = prompt_targets != -1
            prompt = F.cross_entropy(out.logits[in_prompt], prompt_targets[in_prompt])
            loss = loss + prompt
            parts["prompt"] = prompt.item()
        return loss, parts

    @torch.inference_mode()  # no_grad, minus autograd's bookkeeping: 4-9% faster measured
    def generate(self, prompt, max_new_tokens, end_id=None):
        """Greedy decoding with a per-depth key/value cache.

        prompt: (B, P) ids (equal lengths). Returns (tokens (B, N), depths (B, N)):
        depths[b, t] is the number of iterations run to produce tokens[b, t].
        The prompt runs at full depth but for its last token, which predicts
        the first new token. A halted token really skips its remaining
        iterations, at any batch size: the forward computes only the running
        tokens, and the keys and values of the halted one's frozen state,
        computed once, fill its place in the later iterations' caches.
        """
        self.eval()
        B, P = prompt.shape
        cache = KVCache(P + max_new_tokens - 1, self.cfg.n_prelude + self.cfg.max_depth)
        adaptive = torch.zeros_like(prompt, dtype=torch.bool)
        adaptive[:, -1] = True
        # oneDNN's GELU costs about 7 us a call more than PyTorch's own kernel on
        # the few rows of a decoding step (measured): a tenth of a step at batch 1
        with native_kernels():
            out = self(prompt, adaptive=adaptive, cache=cache)
            tokens, depths = [], []
            done = torch.zeros(B, dtype=torch.bool, device=prompt.device)
            while True:
                nxt = out.logits[:, -1].argmax(-1)
                tokens.append(nxt)
                depths.append(out.depth[:, -1])
                if end_id is not None:
                    done |= nxt == end_id
                if len(tokens) == max_new_tokens or (end_id is not None and bool(done.all())):
                    break
                out = self(nxt[:, None], cache=cache)
        return torch.stack(tokens, 1), torch.stack(depths, 1)


def language_model_loss(out, targets, exit_targets=None, weigh_by_depth=True):
    """Deep supervision: sum_d w_d CE_d / sum_d w_d over the exits d = 1..D,
    w_d = d (the late exits matter most, as in early-exit training). With
    hints, exit d is trained on its own step of the trace, every step
    weighing the same, as CLRS trains its hints: fixed depth 4 learned the
    chase in 1 of 4 runs with the exits weighted by d, more often with equal
    weights (RESULTS.md, "A regime where depth is needed"). Router none
    without hints: the cross-entropy at max_depth, as any fixed-depth
    Transformer."""
    mask = targets != -1
    if exit_targets is None and not weigh_by_depth:
        return F.cross_entropy(out.logits[mask], targets[mask])
    D = len(out.exit_logits)
    ce = exit_cross_entropy(out.exit_logits, targets if exit_targets is None else exit_targets, mask)
    w = torch.arange(1, D + 1, device=ce.device, dtype=ce.dtype)
    if exit_targets is not None:
        w = torch.ones_like(w)
    return (ce.mean(0) * w).sum() / w.sum()


def halting_loss(out, targets, ponder):
    """The router's loss, L_halt = -log p(d*), towards each token's target depth

        d* = argmin_d  CE_d + ponder * (d - 1),

    CE_d the (detached) cross-entropy of the answer at exit d, whatever the
    exits are trained on: a token halts where its prediction stops improving
    by more than the cost of an iteration. Returns L_halt and d* - 1."""
    mask = targets != -1
    with torch.no_grad():
        ce = exit_cross_entropy(out.exit_logits, targets, mask)
    target_depth = (ce + ponder * torch.arange(ce.shape[-1], device=ce.device, dtype=ce.dtype)).argmin(-1)
    return F.nll_loss(out.log_p_depth[mask], target_depth), target_depth


def exit_cross_entropy(exit_logits, targets, mask):
    """(N, D): the cross-entropy of each exit at the N positions of `mask`,
    against targets (B, T), the same at every exit, or (B, T, D), one per exit."""
    if targets.dim() == 2:
        targets = targets[..., None].expand(-1, -1, len(exit_logits))
    at = mask.nonzero(as_tuple=True)  # one host-device sync (indexing by the bool mask syncs at every use)
    return torch.stack([F.cross_entropy(lg[at], targets[at][:, d], reduction="none")
                        for d, lg in enumerate(exit_logits)], -1)


class Halting:
    """The halting rule of one forward. A token the router decides for
    (adaptive, once routing is on) stops after the first iteration k whose
    hazard h_k = P(stop at k | reached k) passes halt_threshold:
      none    never: every token runs max_depth
      early   ANIRA-E: p = softmax(MLP(h0)) over depths 1..max_depth, fixed
              before the first iteration; h_k = p(k) / sum_{j>=k} p(j)
      online  ANIRA-O: h_k = sigmoid(MLP(s_k)), from the state after iteration k;
              with halt_when_converged only once exit k names the token
              exit k-1 named (never after the first iteration)
    Both routers read detached representations, so halting never shapes them.
    It keeps the halting distribution log p(d) that `loss` trains. With
    forced_depth (an oracle, for evaluation) token i stops after exactly
    forced_depth[i] iterations instead. With prompt_depth, the tokens the
    router does not decide for (the prompt) stop after that many iterations,
    whoever decides the others. Under bf16 autocast the router's
    logits are taken back to the state's dtype (float32), so the halting
    distribution is float32 on any device (CPU autocast would keep
    log_softmax and cumsum in bf16; CUDA's does not)."""

    def __init__(self, model, embedded, h0, adaptive, route=True, cache=None, forced_depth=None):
        self.model, self.cfg, self.forced = model, model.cfg, forced_depth
        self.adaptive = adaptive
        self.decides = adaptive & (route and self.cfg.router != "none")
        self.halt_logits = []  # online: a_k, with h_k = sigmoid(a_k)
        self.previous = None   # halt_when_converged: (B * T,) the token each one's last exit named
        if self.cfg.router == "early":  # all hazards fixed before the recurrence
            logits = model.router(model.early_router_input(embedded, h0, adaptive, cache).detach())
            self.log_p = F.log_softmax(logits.to(h0.dtype), -1)
            self.early_stops = hazards_from_log_p(self.log_p) > self.cfg.halt_threshold

    def can_stop(self, k):
        """Whether a token may stop after iteration k (the last stops every token)."""
        decided = self.cfg.router != "none" or self.forced is not None or self.cfg.prompt_depth
        return decided and k < self.cfg.max_depth - 1

    def stops_after(self, k, state, rows=None):
        """(B, T) bool: the tokens that stop after iteration k: the prompt at
        prompt_depth, the others where their hazard says so (and, with
        halt_when_converged, their exit repeats).
        state: (B, T, C), or (N, C) for the running tokens at the flat `rows`."""
        stop = self.hazard_stops(k, state, rows)
        if self.cfg.prompt_depth:
            return torch.where(self.adaptive, stop, k + 1 == self.cfg.prompt_depth)
        return stop

    def hazard_stops(self, k, state, rows=None):
        if self.forced is not None:
            return self.forced == k + 1
        if self.cfg.router == "none":  # only the prompt stops early (prompt_depth)
            return self.decides
        if self.cfg.router == "early":
            return self.decides & self.early_stops[..., k]
        self.halt_logits.append(self.model.router(state.detach()).squeeze(-1).to(state.dtype))
        stop = torch.sigmoid(self.halt_logits[-1]) > self.cfg.halt_threshold
        if self.cfg.halt_when_converged:
            stop = stop & self.answer_repeats(state, rows)
        if rows is not None:  # the running tokens' decisions in their places
            stop = stop.new_zeros(self.decides.numel()).index_copy_(0, rows, stop).view_as(self.decides)
        return self.decides & stop

    def answer_repeats(self, state, rows=None):
        """Whether each token's exit after this iteration names the token its
        exit after the previous one did (False at the first), shaped as state[..., 0]."""
        token = self.model.head(self.model.norm(state)).argmax(-1)
        if self.previous is None:
            self.previous = torch.full((self.decides.numel(),), -1, dtype=torch.long, device=token.device)
        at = slice(None) if rows is None else rows
        same = token.view(-1) == self.previous[at]
        self.previous[at] = token.view(-1)
        return same.view(token.shape)

    def log_p_depth(self):
        """(B, T, max_depth) log p(d); None for router none and the oracle."""
        if self.forced is not None:
            return None
        if self.cfg.router == "early":
            return self.log_p
        if self.cfg.router == "online":  # h_max_depth = 1 (its logit is never read)
            return log_p_from_halt_logits(F.pad(torch.stack(self.halt_logits, -1), (0, 1)))
        return None


class Skipping:
    """Inference's bookkeeping for skipping the halted tokens' work, so that a
    halted token is really not computed again. Holds, once a token has halted:
      rows  the flat indices (into the B*T positions) of the tokens still
            running, whose inputs are gathered, computed, and put back;
      kv    (B, T, 2C) the keys and values each position shows the others: a
            halted token's those of its frozen state, computed once, when it
            halted (a running token's are replaced by the block each iteration).
    While every token runs, rows is None and the loop computes them all."""

    def __init__(self):
        self.rows = self.kv = None

    def take(self, x):
        return gather(x, self.rows)

    def put(self, x, computed):
        put(x, self.rows, computed)

    def freeze(self, block, visible, halted, running):
        """Record the tokens that halted after this iteration; True once no token runs."""
        if not bool(halted.any()):
            return False
        self.rows = running.view(-1).nonzero().squeeze(1)
        if self.kv is None and len(self.rows) == 0:  # all at once (decoding one sequence: always)
            self.kv = block.keys_values(visible)
        else:
            frozen = halted.view(-1).nonzero().squeeze(1)
            kv = block.keys_values(gather(visible, frozen))
            if self.kv is None:  # in the dtype the block gives keys and values (bf16 under autocast)
                self.kv = kv.new_empty(*visible.shape[:2], kv.shape[-1])
            put(self.kv, frozen, kv)
        return len(self.rows) == 0


def last_iteration(block, x, state, kv, pos, outputs):
    """Training's last iteration computed at the `outputs` tokens only: their
    new states among the others' previous ones. Every token's keys and values
    kv are already there (a halted token's those of its frozen state)."""
    rows = outputs.view(-1).nonzero().squeeze(1)
    x = gather(x, rows)
    new = block.residual(x, block.ln1(x), kv, pos, run=rows)
    return state.reshape(-1, state.shape[-1]).index_copy(0, rows, new).view_as(state)


@contextlib.contextmanager
def native_kernels():
    """PyTorch's own CPU kernels instead of oneDNN's (torch.backends.mkldnn.flags
    does the same but warns about TF32 on Intel GPUs)."""
    enabled = torch.backends.mkldnn.enabled
    torch.backends.mkldnn.enabled = False
    try:
        yield
    finally:
        torch.backends.mkldnn.enabled = enabled


def gather(x, run):
    """The rows `run` of x (..., C) flattened to (N, C). index_select and
    index_copy_ (in put) gather and scatter rows several times faster than
    x[run] on a CPU."""
    return x.reshape(-1, x.shape[-1]).index_select(0, run)


def put(x, run, rows):
    """Write rows (N, C) in place into the rows `run` of x (..., C), as gathered."""
    x.view(-1, x.shape[-1]).index_copy_(0, run, rows)


def step_code(step, C):
    """Sinusoidal code (..., C) of integer steps (...): any answer length, no
    parameters, as the Transformer's original position encoding."""
    freqs = 1.0 / (10000 ** (torch.arange(C // 2, device=step.device) / (C // 2)))
    angles = step[..., None].float() * freqs
    return torch.cat([angles.sin(), angles.cos()], -1)


def hazards_from_log_p(log_p):
    """h_k = p(k) / sum_{j>=k} p(j), for a distribution fixed in advance."""
    tail = torch.logcumsumexp(log_p.flip(-1), -1).flip(-1)
    return torch.exp(log_p - tail)


def log_p_from_halt_logits(a):
    """log p(d) = log h_d + sum_{k<d} log(1 - h_k), with h_k = sigmoid(a_k) and
    h_D = 1 (the last depth always stops, whatever a_D says)."""
    log_continue = F.logsigmoid(-a)
    before = F.pad(torch.cumsum(log_continue, -1)[..., :-1], (1, 0))
    log_halt = F.pad(F.logsigmoid(a[..., :-1]), (0, 1))  # log h_D = 0
    return log_halt + before


# -----------------------------------------------------------------------------
# the Transformer block, with attention to a possibly different (frozen) stream

class Block(nn.Module):
    """Pre-norm block. Queries come from x; keys and values from `kv`, which are
    x's own except at halted tokens, where they are those of the frozen state."""

    def __init__(self, C, n_heads):
        super().__init__()
        self.n_heads = n_heads
        self.ln1, self.ln2 = nn.LayerNorm(C), nn.LayerNorm(C)
        self.q = nn.Linear(C, C)
        self.kv = nn.Linear(C, 2 * C)
        self.proj = nn.Linear(C, C)
        self.mlp = nn.Sequential(nn.Linear(C, 4 * C), nn.GELU(), nn.Linear(4 * C, C))
        self.proj.residual = self.mlp[-1].residual = True

    def forward(self, x, pos, cache=None, kv=None, run=None):
        """x (B, T, C): the inputs of every position; or with `run`, (N, C): those
        of the N running tokens at the flat indices `run` of the B*T positions.
        kv (B, T, 2C): the keys and values every position presents (None: x's
        own); with `run`, the running tokens' are replaced by their new ones
        (the halted keep their frozen ones)."""
        h = self.ln1(x)
        if kv is None:
            kv = self.kv(h)
        elif run is not None:
            put(kv, run, self.kv(h))
        return self.residual(x, h, kv, pos, cache, run)

    def residual(self, x, h, kv, pos, cache=None, run=None):
        """The block's output from its input x, x's LayerNorm h, and the keys
        and values kv to attend to, as they are: attention, then the MLP."""
        x = x + self.attend(self.q(h), kv, pos, cache, run)
        return x + self.mlp(self.ln2(x))

    def keys_values(self, x):
        return self.kv(self.ln1(x))

    def heads(self, kv, pos):
        """kv (B, T, 2C) -> keys (rotated) and values (B, H, T, C/H)."""
        B, T, C2 = kv.shape
        k, v = kv.view(B, T, 2, self.n_heads, C2 // (2 * self.n_heads)).permute(2, 0, 3, 1, 4)
        return apply_rotary(k, pos), v

    def attend(self, q, kv, pos, cache=None, run=None):
        B, T, C2 = kv.shape
        C, H = C2 // 2, self.n_heads
        k, v = self.heads(kv, pos)
        if cache is not None:  # the keys and values of every position so far
            k, v = cache.append(k, v)
        if run is not None and T > 1:  # the queries back in their places (zeros at halted tokens, dropped below)
            q = q.new_zeros(B * T, C).index_copy_(0, run, q)
        elif run is not None:  # one position per row (decoding): attend with the running rows' keys alone
            k, v = k.index_select(0, run), v.index_select(0, run)
        q = apply_rotary(q.view(-1, T, H, C // H).transpose(1, 2), pos)
        y = attention(q, k, v, pos).transpose(1, 2).reshape(len(q), T, C)
        if run is not None:
            y = y.view(-1, C) if T == 1 else gather(y, run)
        return self.proj(y)


def attention(q, k, v, pos):
    """Scaled dot-product attention, in float32 on a CPU even under bf16
    autocast: there bf16's is slower than float32's at this model's sizes
    (measured, inputs cast included: forward and backward of 64 x 4 heads of
    61 positions 3.3x, forward alone 1.6x, a decoding step at batch 32 2.8x),
    and would take back most of what bf16 gains in the matmuls (2.4x)."""
    if q.device.type == "cpu" and torch.bfloat16 in (q.dtype, k.dtype, v.dtype):
        with torch.autocast("cpu", enabled=False):
            return F.scaled_dot_product_attention(q.float(), k.float(), v.float(), attn_mask=pos.mask,
                                                  is_causal=pos.causal)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=pos.mask, is_causal=pos.causal)


# Rotary tables (T, head_dim) of T positions, and which keys each query sees:
# key j is visible to query i iff j <= S - T + i, for the S keys of the T new
# positions and those cached before them. As a mask (T, S), or, where the rule
# is simpler, mask None and `causal`: True without a cache (S = T: plain
# causal attention), False for one new position (T = 1: it sees every key).
Positions = namedtuple("Positions", "cos sin mask causal")


class KVCache:
    """The keys and values of the positions seen so far, for incremental
    decoding, in buffers allocated once for `size` positions so that a new
    token copies only its own. Layer i < n_prelude is prelude block i; layer
    n_prelude + k is core iteration k: what a query at iteration k attends to.
    There a token still running at k has the keys and values of its input at
    k, and a halted token those of its frozen state (written once it halts).
    `extend` takes the next positions; the forward then writes their keys and
    values at every layer. Beside them, what the next tokens' inputs need:
    the last token ids (the token shift) and ANIRA-E's prompt summary."""

    def __init__(self, size, n_layers):
        self.size, self.n_layers = size, n_layers
        self.start = self.length = 0  # the positions being written: start..length-1
        self.keys = self.values = None  # (n_layers, B, H, size, head_dim), at the first write
        self.rope = None  # the rotary tables of all `size` positions, made once
        self.recent = None  # the last token_shift ids
        self.answer_start = self.prompt_summary = None  # ANIRA-E with early_input "prompt"

    def extend(self, T, head_dim, device):
        """Take the next T positions; return their Positions."""
        if self.length + T > self.size:
            raise ValueError(f"the cache holds {self.size} positions; {self.length + T} were asked for")
        if self.rope is None:
            self.rope = rotary(self.size, head_dim, device)
        self.start, self.length = self.length, self.length + T
        S = self.length
        mask = None if T == 1 else \
            torch.arange(S, device=device)[None, :] <= torch.arange(self.start, S, device=device)[:, None]
        return Positions(self.rope[0][self.start:S], self.rope[1][self.start:S], mask, causal=False)

    def layer(self, i):
        return _LayerCache(self, i)

    def write(self, layers, k, v):
        """Store k, v (B, H, T, head_dim) at the positions taken by `extend` in
        `layers` (one index, or a slice of several); return the keys and
        values of those layers up to these positions."""
        if self.keys is None:  # in the block's dtype, v's: under bf16 autocast the rotated keys
            # are float32 (the rotary tables are) but attention reads them in bf16 anyway
            self.keys = v.new_empty(self.n_layers, *k.shape[:2], self.size, k.shape[3])
            self.values = torch.empty_like(self.keys)
        self.keys[layers, :, :, self.start:self.length] = k
        self.values[layers, :, :, self.start:self.length] = v
        return self.keys[layers, :, :, :self.length], self.values[layers, :, :, :self.length]


class _LayerCache:
    def __init__(self, cache, i):
        self.cache, self.i = cache, i

    def append(self, k, v):
        return self.cache.write(self.i, k, v)


def rotary(T, head_dim, device):
    """Rotary position embedding (RoPE) of positions 0..T-1, as tables (T,
    head_dim) for apply_rotary: cos twice, and sin with the sign of the pair's
    rotation. Relative positions let test sequences be longer than training ones."""
    half = head_dim // 2
    freqs = 1.0 / (10000 ** (torch.arange(half, device=device) / half))
    angles = torch.arange(T, device=device)[:, None] * freqs
    cos, sin = angles.cos(), angles.sin()
    return torch.cat([cos, cos], -1), torch.cat([-sin, sin], -1)


def apply_rotary(x, pos):
    """Rotate each pair (x_i, x_{i+half}) by its position's angle, in three ops."""
    return x * pos.cos + x.roll(x.shape[-1] // 2, -1) * pos.sin


def init_weights(m):
    if isinstance(m, nn.Linear):
        std = 0.02 / math.sqrt(2) if getattr(m, "residual", False) else 0.02
        nn.init.normal_(m.weight, std=std)
        if m.bias is not None:
            nn.init.zeros_(m.bias)
    elif isinstance(m, nn.Embedding):
        nn.init.normal_(m.weight, std=0.02)
