"""
Complexity-controlled tasks for studying per-token compute.

Every example is a prompt followed by a target; the model is trained to
produce the target after the separator, and every target token comes with a
dict of ground-truth features that say how hard that token is (how many
stack pops a DFS needs before it, how many variables a reference must be
resolved through, ...). These features are never shown to the model: they
are what the analysis regresses the model's per-token depth on.

Three tasks, each with explicit difficulty parameters:

  dfs   depth-first preorder of an undirected connected graph.
        prompt:  3 : 5 9 ; 9 : 3 ; 5 : 3 ; start 3 <sep>
        target:  3 5 9 <end>
  topo  lexicographically smallest topological order of a DAG (Kahn + min-heap).
        prompt:  7 2 4 ; 4 > 7 ; 2 > 7 ; <sep>    target: 2 4 7 <end>
  lang  variable bindings, then queries resolved through chains of `hops`.
        prompt:  3 = C ; 8 = 3 ; 5 = A ; <sep>  target: 8 -> C ; 5 -> A ; <end>
        chain_order="reverse" writes each chain last link first
        (8 = 3 ; 5 = A ; 3 = C): when a statement is read, the variable it
        names is not bound yet, so a k-hop query has to chase its bindings at
        the query token itself: the regime built for depth to be needed
        (README and RESULTS.md, "A regime where depth is needed").

Node names are random labels out of N_LABELS (twice the largest training
size), so a larger test graph needs no new tokens. lang draws its variable
names from a pool of its own size (`names`, default N_LABELS): the first
N_LABELS are the graph labels, the others tokens of lang's alone, at the end
of the vocabulary (vocab_size), so that long chains fit among other chains
while dfs and topo keep their 16 labels.

    python tasks.py --task dfs --n 6 --num 2      # readable examples
    python tasks.py --task topo --n 5 --json      # one JSON object per line
"""
import argparse
import heapq
import json
import random
import sys
from dataclasses import dataclass, field

import numpy as np

TASKS = ("dfs", "topo", "lang")
CHAIN_ORDERS = ("forward", "reverse")  # lang: how each chain's statements are written
# node / variable labels "0".."15": twice the largest default training size,
# so graphs up to 16 nodes can be tested out of distribution (lang, which also
# needs n // 2 distractor names, up to 11 variables). Fewer labels learn
# faster (each label's embedding and its order among the others are seen more
# often): dfs online reached 88.3% exact-match at step 2000 with 16 labels
# against 69.5% with 32 (RESULTS.md, "What made the tasks learnable in minutes").
N_LABELS = 16
N_VALUES = 10  # lang values "A".."J"
# lang's largest pool of variable names: room for a 32-variable prompt and its
# 16 distractors, where a 16-hop chain sits among other chains
MAX_NAMES = 48
SPECIALS = ["<pad>", "<sep>", "<end>", ":", ";", ">", "=", "->", "start"]
LABELS = [str(i) for i in range(N_LABELS)]
VALUES = [chr(ord("A") + i) for i in range(N_VALUES)]
NAMES = LABELS + [str(i) for i in range(N_LABELS, MAX_NAMES)]  # lang's pool: the labels first
# the names beyond the labels come last, so every other token keeps its id
VOCAB = SPECIALS + LABELS + VALUES + NAMES[N_LABELS:]
STOI = {s: i for i, s in enumerate(VOCAB)}
PAD, SEP, END = STOI["<pad>"], STOI["<sep>"], STOI["<end>"]

# Feature columns of every task, in CSV order. Graph-task features describe
# the moment the target token's node is chosen ("before the choice").
FEATURES = {
    "dfs": ["n_nodes", "n_edges", "step", "remaining", "degree", "max_degree", "is_hub",
            "stack_depth", "backtrack", "frontier", "newly_enabled"],
    "topo": ["n_nodes", "n_edges", "step", "remaining", "ready", "newly_enabled",
             "in_degree", "out_degree", "max_degree", "is_hub"],
    "lang": ["kind", "hops", "distance", "n_vars", "distractors", "step"],
}
# lang token kinds, the integer values of the `kind` feature
FILLER, RANDOM, REFERENCE = 0, 1, 2
DEFAULT_SIZES = {"dfs": (4, 8), "topo": (4, 8), "lang": (4, 8)}
# Whether train.py also trains the prompt as a language model (its default
# for --prompt-loss). A dfs prompt, sorted adjacency lists, holds what the
# traversal looks up (which nodes are neighbours, the order of labels), and
# predicting it makes dfs learn faster; topo keeps it too (not measured
# without). A lang prompt is random bindings by construction: predicting it
# teaches nothing, and it kept lang from learning the lookup at all (RESULTS.md,
# "What made the tasks learnable in minutes").
PROMPT_LOSS = {"dfs": True, "topo": True, "lang": False}


@dataclass
class Example:
    task: str
    n: int                 # the size parameter: nodes (dfs, topo) or variables (lang)
    prompt: list           # token strings, ending with <sep>
    target: list           # token strings, ending with <end>
    features: list         # one dict per target token
    graph: dict = field(default=None)  # dfs/topo: {"nodes", "edges", "start"} as labels
    hints: list = field(default=None)  # lang: one list per target token, its chase (see lang_example)


def make_example(task, rng, n, family="mix", density=1.0, hops=4, distractors=None,
                 chain_order="forward", names=N_LABELS, uniform_hops=False):
    """One example of `task` with size `n`, drawn from `rng` (a random.Random).

    family:      dfs/topo graph family: "random", "hub", or "mix" (either, 50/50)
    density:     extra edges per node beyond a spanning tree (dfs), or the
                 expected out-degree (topo)
    hops:        lang: longest chain a query is resolved through
    distractors: lang: statements that no query needs (default n // 2)
    chain_order: lang: "forward" writes a chain first link first (a = C ;
                 b = a), "reverse" last link first (b = a ; a = C)
    names:       lang: the pool of variable names, NAMES[:names]
    uniform_hops: lang (tests of long chains): one chain's length is drawn
                 uniformly from 1..hops and a query asks its end, so every
                 hop count up to `hops` is asked about as often (random
                 chains rarely reach the longest)
    """
    distractors = n // 2 if distractors is None else distractors
    check_size(task, n, distractors, names)
    if not 0 <= density <= 8:
        raise ValueError(f"density {density} is outside 0..8")
    if hops < 1 or distractors < 0:
        raise ValueError("lang needs hops >= 1 and distractors >= 0")
    if uniform_hops and hops > n:
        raise ValueError(f"a chain of {hops} hops does not fit in {n} variables")
    if chain_order not in CHAIN_ORDERS:
        raise ValueError(f"unknown chain order {chain_order!r}; choose one of {', '.join(CHAIN_ORDERS)}")
    if task == "dfs":
        return dfs_example(rng, n, family, density)
    if task == "topo":
        return topo_example(rng, n, family, density)
    return lang_example(rng, n, hops, distractors, chain_order, pool=names, uniform_hops=uniform_hops)


def vocab_size(task, names=N_LABELS):
    """The vocabulary a model of `task` needs: VOCAB up to the last name it
    can draw (lang's pool beyond the labels; dfs and topo stop at the values)."""
    return len(SPECIALS) + N_VALUES + (max(names, N_LABELS) if task == "lang" else N_LABELS)


def max_size(task, names=N_LABELS):
    """The largest size the vocabulary can label (lang also needs n // 2 distractors)."""
    if task != "lang":
        return N_LABELS
    return max(n for n in range(1, names + 1) if n + n // 2 <= names)


def check_size(task, n, distractors=None, names=N_LABELS):
    """Raise ValueError with a one-line reason if `task` cannot be drawn at size n."""
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; choose one of {', '.join(TASKS)}")
    if not 1 <= names <= MAX_NAMES:
        raise ValueError(f"a pool of {names} names: lang's names are 1..{MAX_NAMES}")
    low = 2 if task != "lang" else 1
    if n < low:
        raise ValueError(f"size {n} is too small for {task} (at least {low})")
    needed = n + (n // 2 if distractors is None else distractors) if task == "lang" else n
    if task != "lang" and needed > N_LABELS:
        raise ValueError(f"size {n} needs {needed} distinct labels but the vocabulary has {N_LABELS}")
    if task == "lang" and needed > names:
        raise ValueError(f"size {n} needs {needed} distinct labels (variables and distractors) "
                         f"but the pool has {names} names (--names)")


# -----------------------------------------------------------------------------
# dfs: depth-first preorder, neighbours in increasing label order

def dfs_example(rng, n, family, density):
    values, edges = random_graph(rng, n, family, density)
    labels = [LABELS[x] for x in values]
    adj = adjacency(n, edges, values)
    start = rng.randrange(n)
    order, feats = dfs_trace(adj, start)
    # prompt: adjacency lists (each sorted by label), lists in shuffled order
    prompt = []
    for v in rng.sample(range(n), n):
        prompt += [labels[v], ":"] + [labels[u] for u in adj[v]] + [";"]
    prompt += ["start", labels[start], "<sep>"]
    target = [labels[v] for v in order] + ["<end>"]
    graph = {"nodes": [labels[v] for v in range(n)],
             "edges": [[labels[u], labels[v]] for u, v in edges], "start": labels[start]}
    return Example("dfs", n, prompt, target, feats, graph)


def dfs_trace(adj, start):
    """Recursive-DFS preorder with an explicit path stack, and per-step features.

    `adj[v]` must be sorted by label. For the node visited at step t:
      stack_depth   nodes on the recursion path once it is pushed (start: 1)
      backtrack     pops from the previous path before its parent is on top
                    (0 when it is a child of the previous node)
      degree        degree of its parent, the node it is reached from (start: 0)
      frontier      discovered, unvisited nodes just before the choice (incl. it)
      newly_enabled its neighbours discovered for the first time by this visit
    The <end> token gets honest values: the whole path is popped.
    """
    n = len(adj)
    degrees = [len(a) for a in adj]
    max_degree, hubs = max(degrees), hub_set(degrees)
    n_edges = sum(degrees) // 2
    visited, discovered = [False] * n, [False] * n
    discovered[start] = True
    n_discovered = 1
    next_child = [0] * n  # per node: index of the next neighbour to try
    order, feats, path = [], [], []
    parent, pops = -1, 0
    v = start
    while True:
        step = len(order)
        newly = 0
        for u in adj[v]:
            if not discovered[u]:
                discovered[u] = True
                newly += 1
        feats.append({"n_nodes": n, "n_edges": n_edges, "step": step, "remaining": n - step,
                      "degree": degrees[parent] if parent >= 0 else 0, "max_degree": max_degree,
                      "is_hub": int(parent in hubs), "stack_depth": len(path) + 1,
                      "backtrack": pops, "frontier": n_discovered - step,
                      "newly_enabled": newly})
        n_discovered += newly
        visited[v] = True
        order.append(v)
        path.append(v)
        # find the next node: pop until the top has an unvisited neighbour
        pops, v = 0, -1
        while path:
            top = path[-1]
            nbrs = adj[top]
            while next_child[top] < len(nbrs) and visited[nbrs[next_child[top]]]:
                next_child[top] += 1
            if next_child[top] < len(nbrs):
                parent, v = top, nbrs[next_child[top]]
                break
            path.pop()
            pops += 1
        if v < 0:
            break
    feats.append({"n_nodes": n, "n_edges": n_edges, "step": n, "remaining": 0, "degree": 0,
                  "max_degree": max_degree, "is_hub": 0, "stack_depth": 0,
                  "backtrack": pops, "frontier": 0, "newly_enabled": 0})
    return order, feats


def random_graph(rng, n, family, density):
    """Connected undirected graph: (label values, edges as index pairs u < v).

    random: a random recursive tree plus ~density*n extra random edges.
    hub:    k = max(1, n // 5) hub nodes joined in a path, every other node
            attached to a random hub, plus a few extra edges between leaves.
    Nodes get distinct random labels, so node index order is not label order.
    """
    if family == "mix":
        family = "random" if rng.random() < 0.5 else "hub"
    if family == "random":
        edges = {(rng.randrange(v), v) for v in range(1, n)}
        n_extra = rng.randint(0, round(density * n))
    elif family == "hub":
        k = max(1, n // 5)
        edges = {(h - 1, h) for h in range(1, k)}
        edges |= {(rng.randrange(k), v) for v in range(k, n)}
        n_extra = rng.randint(0, max(0, round(density * n / 4)))
    else:
        raise ValueError(f"unknown graph family {family!r}; choose random, hub or mix")
    max_edges = n * (n - 1) // 2
    lo = k if family == "hub" else 0  # hub family: extra edges only among non-hubs
    for _ in range(n_extra):
        if len(edges) >= max_edges or n - lo < 2:
            break
        u, v = rng.sample(range(lo, n), 2)
        edges.add((min(u, v), max(u, v)))
    edges = sorted(edges)
    rng.shuffle(edges)
    return rng.sample(range(N_LABELS), n), edges


def adjacency(n, edges, label_values, directed=False):
    """Neighbour lists (out-neighbours if directed), each sorted by label value."""
    adj = [[] for _ in range(n)]
    for u, v in edges:
        adj[u].append(v)
        if not directed:
            adj[v].append(u)
    for a in adj:
        a.sort(key=label_values.__getitem__)
    return adj


def hub_set(degrees):
    """Hubs: nodes of degree >= 3 and at least twice the mean degree."""
    mean = sum(degrees) / len(degrees)
    return {v for v, d in enumerate(degrees) if d >= 3 and d >= 2 * mean}


# -----------------------------------------------------------------------------
# topo: lexicographically smallest topological order (Kahn's algorithm, min-heap)

def topo_example(rng, n, family, density):
    values, edges = random_dag(rng, n, family, density)
    labels = [LABELS[x] for x in values]
    order, feats = topo_trace(n, edges, values)
    prompt = [labels[v] for v in rng.sample(range(n), n)] + [";"]
    for u, v in edges:
        prompt += [labels[u], ">", labels[v], ";"]
    prompt.append("<sep>")
    target = [labels[v] for v in order] + ["<end>"]
    graph = {"nodes": [labels[v] for v in range(n)],
             "edges": [[labels[u], labels[v]] for u, v in edges], "start": None}
    return Example("topo", n, prompt, target, feats, graph)


def topo_trace(n, edges, label_values):
    """Kahn's algorithm taking the smallest label first, and per-step features.

    For the node chosen at step t: `ready` is the size of the ready set
    (in-degree 0, not yet taken) before the choice, `newly_enabled` the nodes
    whose in-degree falls to zero once it is taken.
    """
    out = adjacency(n, edges, label_values, directed=True)
    in_deg = [0] * n
    for _, v in edges:
        in_deg[v] += 1
    degrees = [in_deg[v] + len(out[v]) for v in range(n)]
    max_degree, hubs = max(degrees), hub_set(degrees)
    pending = list(in_deg)
    heap = [(label_values[v], v) for v in range(n) if pending[v] == 0]
    heapq.heapify(heap)
    order, feats = [], []
    while heap:
        ready = len(heap)
        _, v = heapq.heappop(heap)
        newly = 0
        for u in out[v]:
            pending[u] -= 1
            if pending[u] == 0:
                heapq.heappush(heap, (label_values[u], u))
                newly += 1
        feats.append({"n_nodes": n, "n_edges": len(edges), "step": len(order),
                      "remaining": n - len(order), "ready": ready, "newly_enabled": newly,
                      "in_degree": in_deg[v], "out_degree": len(out[v]),
                      "max_degree": max_degree, "is_hub": int(v in hubs)})
        order.append(v)
    feats.append({"n_nodes": n, "n_edges": len(edges), "step": n, "remaining": 0, "ready": 0,
                  "newly_enabled": 0, "in_degree": 0, "out_degree": 0,
                  "max_degree": max_degree, "is_hub": 0})
    return order, feats


def random_dag(rng, n, family, density):
    """Random DAG: (label values, shuffled edges u -> v) over a hidden random order.

    random: each forward pair is an edge with probability 2*density/(n-1), so
            the mean out-degree is about `density`.
    hub:    k = max(1, n // 5) hubs early in the hidden order point to each
            later node with probability 0.6, on top of a sparse random DAG.
    """
    if family == "mix":
        family = "random" if rng.random() < 0.5 else "hub"
    if family not in ("random", "hub"):
        raise ValueError(f"unknown graph family {family!r}; choose random, hub or mix")
    hidden = rng.sample(range(n), n)  # hidden[i] is the node at place i
    p = min(1.0, 2 * density / max(1, n - 1)) * (0.5 if family == "hub" else 1.0)
    k = max(1, n // 5) if family == "hub" else 0
    edges = [(hidden[i], hidden[j]) for i in range(n) for j in range(i + 1, n)
             if rng.random() < (0.6 if i < k else p)]
    rng.shuffle(edges)
    return rng.sample(range(N_LABELS), n), edges


# -----------------------------------------------------------------------------
# lang: bindings resolved through chains of references

def lang_example(rng, n, hops, distractors, chain_order="forward", n_queries=4, pool=N_LABELS,
                 uniform_hops=False):
    """`n` queryable variables in chains of 1..hops bindings, plus distractors,
    their names drawn from the first `pool` of NAMES. The first chain's
    length is uniform in 1..hops (when hops <= n); uniform_hops queries its end.

    A chain  a = C ; b = a ; c = b  binds three variables to the value C; a
    query  c -> C  needs hops = 3 bindings resolved. Distractor variables are
    bound to values and never queried. Target tokens: the queried variable
    (kind random: which one is asked cannot be predicted), "->" and ";"
    (filler), the value (reference), and <end> (filler: the query count is fixed).

    hints, the trace of the algorithm (CLRS's "hints"): for a value, what
    each hop of its chase reaches, c -> [b, a, C], the value last; for any
    other target token, [token]. train.py --hints trains the exit of the
    k-th iteration on the k-th hop (tasks.exit_targets).

    The chains' statements are interleaved at random. chain_order "forward"
    keeps each chain first link first, so the prompt can resolve every
    variable as soon as it is bound and a query is one lookup; "reverse"
    writes it last link first (c = b ; b = a ; a = C), so when `c = b` is read
    b is not bound yet, and a k-hop query must chase its k bindings itself.
    """
    names = [NAMES[x] for x in rng.sample(range(pool), n + distractors)]
    chains, rest = [], names[:n]
    while rest:
        length = rng.randint(1, min(hops, len(rest)))
        chains.append((rng.choice(VALUES), rest[:length]))
        rest = rest[length:]
    chains += [(rng.choice(VALUES), [name]) for name in names[n:]]
    slots = [c for c, (_, chain) in enumerate(chains) for _ in chain]
    rng.shuffle(slots)
    prompt, taken, statement_at = [], [0] * len(chains), {}
    for c in slots:
        value, chain = chains[c]
        i = taken[c] if chain_order == "forward" else len(chain) - 1 - taken[c]
        taken[c] += 1
        statement_at[chain[i]] = len(prompt)
        prompt += [chain[i], "=", value if i == 0 else chain[i - 1], ";"]
    # variable -> (value, hops, position of the earliest statement its
    # resolution reads: the root's in forward order, its own in reverse)
    binding = {name: (value, i + 1, min(statement_at[v] for v in chain[:i + 1]))
               for value, chain in chains for i, name in enumerate(chain)}
    # the chase from each variable: the variable every hop reaches, then the value
    chase = {name: chain[:i][::-1] + [value] for value, chain in chains for i, name in enumerate(chain)}
    prompt.append("<sep>")
    target, feats, hints = [], [], []

    def emit(token, kind, hops_=0, distance=0, hint=None):
        feats.append({"kind": kind, "hops": hops_, "distance": distance, "n_vars": n,
                      "distractors": distractors, "step": len(target)})
        hints.append(hint or [token])
        target.append(token)

    queried = rng.sample(names[:n], min(n_queries, n))
    if uniform_hops:  # one query asks the end of the first chain, at a random place among the others
        end = chains[0][1][-1]
        queried = [q for q in queried if q != end][:n_queries - 1]
        queried.insert(rng.randint(0, len(queried)), end)
    for name in queried:
        value, h, pos = binding[name]
        emit(name, RANDOM)
        emit("->", FILLER)
        emit(value, REFERENCE, h, len(prompt) + len(target) - pos, chase[name])
        emit(";", FILLER)
    emit("<end>", FILLER)
    return Example("lang", n, prompt, target, feats, hints=hints)


# -----------------------------------------------------------------------------
# tokenizer and batching

def encode(tokens):
    """Token strings -> ids. Raises ValueError on a token outside VOCAB."""
    try:
        return [STOI[t] for t in tokens]
    except KeyError as e:
        raise ValueError(f"token {e.args[0]!r} is not in the vocabulary") from None


def decode(ids):
    return [VOCAB[i] for i in ids]


def by_chance(features):
    """Where a target token is random by design (lang's queried variable:
    which one is asked cannot be predicted). Exact-match skips these tokens.
    `features` is one token's dict or make_batch's dict of arrays."""
    kind = features.get("kind")
    return kind == RANDOM if kind is not None else False


def sample_examples(task, rng, sizes, num, **params):
    """`num` examples with sizes drawn uniformly from the range sizes = (lo, hi)."""
    lo, hi = sizes
    check_size(task, lo, names=params.get("names", N_LABELS))
    check_size(task, hi, names=params.get("names", N_LABELS))
    return [make_example(task, rng, rng.randint(lo, hi), **params) for _ in range(num)]


def make_batch(examples):
    """Pack examples into one causal sequence each, right-padded.

    Returns numpy arrays:
      idx      (B, T) token ids: prompt + target without its last token
      targets  (B, T) next-token ids at target positions, -1 elsewhere (no loss
               on the prompt or on padding)
      features {name: (B, T) float array}, each target token's feature at the
               position that predicts it, NaN elsewhere
    Position p predicts token p + 1, so the <sep> position predicts the first
    target token and the last target token (<end>) is never an input.
    """
    seqs = [encode(ex.prompt + ex.target) for ex in examples]
    T = max(len(s) for s in seqs) - 1
    idx = np.full((len(seqs), T), PAD, dtype=np.int64)
    targets = np.full((len(seqs), T), -1, dtype=np.int64)
    names = FEATURES[examples[0].task]
    features = {f: np.full((len(seqs), T), np.nan) for f in names}
    for b, (ex, s) in enumerate(zip(examples, seqs)):
        idx[b, :len(s) - 1] = s[:-1]
        start = len(ex.prompt) - 1
        targets[b, start:len(s) - 1] = s[len(ex.prompt):]
        for f in names:
            features[f][b, start:len(s) - 1] = [fd[f] for fd in ex.features]
    return idx, targets, features


def exit_targets(examples, targets, depth):
    """Hint supervision: (B, T, depth) ids, the target of each iteration's
    exit, from make_batch's targets. Exit k (1-based) of a token with a chase
    (Example.hints) is trained on the k-th hop's token, the value once the
    chase has reached it; the last exit always on the answer, as every exit
    of a token without a chase (and -1 where targets is -1). A recurrent block
    can then learn one hop per iteration, each supervised, instead of having
    to discover the composition from the answer alone."""
    out = np.repeat(targets[..., None], depth, -1)
    for b, ex in enumerate(examples):
        start = len(ex.prompt) - 1  # the position that predicts the first target token
        for j, chase in enumerate(ex.hints or []):
            for k in range(depth - 1):
                out[b, start + j, k] = STOI[chase[min(k, len(chase) - 1)]]
    return out


def prompt_targets(idx, targets):
    """Next-token ids at the prompt's positions, -1 at the answer and padding:
    the targets of train.py's language-model loss on the prompt. (Padding is
    found as PAD tokens, which never occur inside an example.)"""
    following = np.full_like(idx, -1)
    following[:, :-1] = idx[:, 1:]
    return np.where((targets == -1) & (following != PAD), following, -1)


# -----------------------------------------------------------------------------
# command line: print examples readably or as JSON lines

def show(ex):
    lines = [f"# {ex.task}  n={ex.n}", "prompt: " + " ".join(ex.prompt)]
    names = FEATURES[ex.task]
    lines.append("target  " + "  ".join(f"{f:>{max(4, len(f))}}" for f in names))
    for tok, fd in zip(ex.target, ex.features):
        lines.append(f"{tok:>6}  " + "  ".join(f"{fd[f]:>{max(4, len(f))}}" for f in names))
    return "\n".join(lines)


def main(argv=None):
    p = argparse.ArgumentParser(description="Print examples of the complexity-controlled tasks, "
                                "each target token beside its ground-truth features.")
    p.add_argument("--task", default="dfs", help=f"one of {', '.join(TASKS)} (default dfs)")
    p.add_argument("--n", type=int, default=6, help="size: nodes (dfs, topo) or variables (lang)")
    p.add_argument("--num", type=int, default=2, help="number of examples")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--family", default="mix", help="graph family: random, hub or mix")
    p.add_argument("--density", type=float, default=1.0, help="graph edge density")
    p.add_argument("--hops", type=int, default=4, help="lang: longest reference chain")
    p.add_argument("--chain-order", default="forward",
                   help="lang: forward (a = C ; b = a) or reverse (b = a ; a = C) chains")
    p.add_argument("--names", type=int, default=N_LABELS,
                   help=f"lang: the pool of variable names, up to {MAX_NAMES} (default {N_LABELS})")
    p.add_argument("--uniform-hops", action="store_true",
                   help="lang: ask for the end of one chain of 1..--hops hops in every prompt")
    p.add_argument("--json", action="store_true", help="one JSON object per line")
    args = p.parse_args(argv)
    rng = random.Random(args.seed)
    try:
        if args.num < 1:
            raise ValueError("--num must be at least 1")
        params = dict(family=args.family, density=args.density, hops=args.hops,
                      chain_order=args.chain_order, names=args.names, uniform_hops=args.uniform_hops)
        examples = [make_example(args.task, rng, args.n, **params) for _ in range(args.num)]
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    for ex in examples:
        if args.json:
            record = {"task": ex.task, "n": ex.n, "prompt": ex.prompt, "target": ex.target,
                      "features": ex.features}
            if ex.graph is not None:
                record["graph"] = ex.graph
            print(json.dumps(record))
        else:
            print(show(ex) + "\n")


if __name__ == "__main__":
    main()
