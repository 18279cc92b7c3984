"""Tests for tasks.py: generators checked against independent references.

The references here are deliberately written differently from tasks.py:
DFS is a real Python recursion over a graph rebuilt from `Example.graph`,
topo is a quadratic repeated scan, lang is resolved by parsing the prompt.
"""
import itertools
import json
import math
import os
import random
import subprocess
import sys

import numpy as np
import pytest

import tasks

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FAMILIES = ("random", "hub", "mix")
DENSITIES = (0.0, 0.5, 1.0, 2.0, 4.0)


def lab(x):
    return int(x)


def hubs_of(degree):
    """Hub definition from tasks.hub_set's docstring, on a {node: degree} dict."""
    mean = sum(degree.values()) / len(degree)
    return {v for v, d in degree.items() if d >= 3 and d >= 2 * mean}


# -----------------------------------------------------------------------------
# dfs

def dfs_instances(count=3000, seed=1234):
    """`count` dfs examples over sizes 2..20, both families (and mix), several densities."""
    rng = random.Random(seed)
    out = []
    for i in range(count):
        n = 2 + i % 15  # every size the labels allow: 2..16
        family = FAMILIES[(i // 15) % 3]
        density = DENSITIES[(i // 45) % len(DENSITIES)]
        out.append((n, family, density, tasks.make_example("dfs", rng, n, family=family,
                                                           density=density)))
    return out


@pytest.fixture(scope="module")
def dfs_examples():
    return dfs_instances()


def ref_dfs(graph):
    """Recursive DFS over the graph field; returns (order, features incl. <end>)."""
    nodes, start = graph["nodes"], graph["start"]
    nbrs = {v: set() for v in nodes}
    for u, v in graph["edges"]:
        nbrs[u].add(v)
        nbrs[v].add(u)
    degree = {v: len(nbrs[v]) for v in nodes}
    hubs = hubs_of(degree)
    n, n_edges, max_degree = len(nodes), len(graph["edges"]), max(degree.values())
    visited, discovered = set(), {start}
    order, feats = [], []
    state = {"returns": 0, "last_depth": None}

    def visit(v, depth, parent):
        step = len(order)
        newly = [u for u in nbrs[v] if u not in discovered]
        feats.append({
            "n_nodes": n, "n_edges": n_edges, "step": step, "remaining": n - step,
            "degree": degree[parent] if parent is not None else 0,
            "max_degree": max_degree,
            "is_hub": int(parent is not None and parent in hubs),
            "stack_depth": depth + 1,
            "backtrack": state["returns"],
            "frontier": len(discovered - visited),
            "newly_enabled": len(newly),
        })
        state["returns"] = 0
        state["last_depth"] = depth
        order.append(v)
        visited.add(v)
        discovered.update(newly)
        for u in sorted(nbrs[v], key=lab):
            if u not in visited:
                visit(u, depth + 1, v)
        state["returns"] += 1

    visit(start, 0, None)
    # after the last visit, every frame on the path returns
    assert state["returns"] == state["last_depth"] + 1
    feats.append({"n_nodes": n, "n_edges": n_edges, "step": n, "remaining": 0, "degree": 0,
                  "max_degree": max_degree, "is_hub": 0, "stack_depth": 0,
                  "backtrack": state["last_depth"] + 1, "frontier": 0, "newly_enabled": 0})
    return order, feats


def parse_dfs_prompt(prompt):
    """prompt 'a : x y ; b : ... ; start s <sep>' -> ({node: [nbrs]}, [node order], start)."""
    assert prompt[-1] == "<sep>" and prompt[-3] == "start"
    start = prompt[-2]
    body = prompt[:-3]
    adj, listed, i = {}, [], 0
    while i < len(body):
        node = body[i]
        assert body[i + 1] == ":"
        j = body.index(";", i + 2)
        adj.setdefault(node, []).append(body[i + 2:j])
        listed.append(node)
        i = j + 1
    return adj, listed, start


def test_dfs_matches_recursive_reference(dfs_examples):
    seen = {"backtrack": 0, "hub": 0, "families": set()}
    for n, family, density, ex in dfs_examples:
        order, feats = ref_dfs(ex.graph)
        ctx = (n, family, density, ex.prompt)
        assert ex.task == "dfs" and ex.n == n, ctx
        assert ex.target == order + ["<end>"], ctx
        assert list(tasks.FEATURES["dfs"]) == list(ex.features[0].keys()), ctx
        assert len(ex.features) == len(ex.target), ctx
        for t, (got, want) in enumerate(zip(ex.features, feats)):
            assert got == want, (ctx, t, ex.target[t], got, want)
        seen["backtrack"] += sum(f["backtrack"] > 0 for f in feats[1:-1])
        seen["hub"] += sum(f["is_hub"] for f in feats)
    # the comparison is not vacuous: backtracking and hub parents do occur
    assert seen["backtrack"] > 1000 and seen["hub"] > 100


def test_dfs_end_token_honest(dfs_examples):
    for n, _, _, ex in dfs_examples:
        end, last = ex.features[-1], ex.features[-2]
        assert ex.target[-1] == "<end>" and "<end>" not in ex.target[:-1]
        assert end["stack_depth"] == 0 and end["frontier"] == 0 and end["newly_enabled"] == 0
        assert end["step"] == n and end["remaining"] == 0
        assert end["degree"] == 0 and end["is_hub"] == 0
        # the whole path (depth of the last node + 1 frames) is popped
        assert end["backtrack"] == last["stack_depth"]


def test_dfs_graph_well_formed(dfs_examples):
    for n, family, _, ex in dfs_examples:
        g = ex.graph
        nodes = g["nodes"]
        assert len(nodes) == n and len(set(nodes)) == n
        assert all(v in tasks.LABELS for v in nodes)
        assert g["start"] in nodes
        pairs = [frozenset(e) for e in g["edges"]]
        assert all(len(e) == 2 and len(p) == 2 for e, p in zip(g["edges"], pairs)), "self-loop"
        assert len(set(pairs)) == len(pairs), "duplicate edge"
        assert all(set(p) <= set(nodes) for p in pairs)
        assert n - 1 <= len(pairs) <= n * (n - 1) // 2
        # connected: flood fill from the start reaches every node
        nbrs = {v: set() for v in nodes}
        for u, v in g["edges"]:
            nbrs[u].add(v)
            nbrs[v].add(u)
        seen, todo = {g["start"]}, [g["start"]]
        while todo:
            for u in nbrs[todo.pop()]:
                if u not in seen:
                    seen.add(u)
                    todo.append(u)
        assert seen == set(nodes), (family, g)


def test_dfs_prompt_encodes_graph(dfs_examples):
    for n, _, _, ex in dfs_examples:
        adj, listed, start = parse_dfs_prompt(ex.prompt)
        assert start == ex.graph["start"]
        assert sorted(listed, key=lab) == sorted(ex.graph["nodes"], key=lab)  # each once
        assert all(len(lists) == 1 for lists in adj.values())
        adj = {v: lists[0] for v, lists in adj.items()}
        want = {v: set() for v in ex.graph["nodes"]}
        for u, v in ex.graph["edges"]:
            want[u].add(v)
            want[v].add(u)
        for v, ns in adj.items():
            assert ns == sorted(ns, key=lab), "adjacency list not sorted by label"
            assert len(set(ns)) == len(ns) and v not in ns
            assert set(ns) == want[v]
            for u in ns:  # undirected: listed on both sides
                assert v in adj[u]
        assert ex.prompt.count("<sep>") == 1 and ex.prompt.count("start") == 1


def test_dfs_hub_family_has_hubs():
    """The hub family should usually produce a node that hub_set calls a hub."""
    rng = random.Random(7)
    hits = 0
    for _ in range(200):
        ex = tasks.make_example("dfs", rng, 12, family="hub", density=1.0)
        deg = {v: 0 for v in ex.graph["nodes"]}
        for u, v in ex.graph["edges"]:
            deg[u] += 1
            deg[v] += 1
        hits += bool(hubs_of(deg))
    assert hits > 150


def test_hub_set_definition():
    assert tasks.hub_set([3, 1, 1, 1]) == {0}          # mean 1.5, 3 >= 3
    assert tasks.hub_set([2, 1, 1]) == set()           # degree < 3
    assert tasks.hub_set([3, 3, 3, 3]) == set()        # not twice the mean
    assert tasks.hub_set([4, 4, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1]) == {0, 1}


# -----------------------------------------------------------------------------
# topo

@pytest.fixture(scope="module")
def topo_examples():
    rng = random.Random(4321)
    out = []
    for i in range(3000):
        n = 2 + i % 15  # every size the labels allow: 2..16
        family = FAMILIES[(i // 15) % 3]
        density = DENSITIES[(i // 45) % len(DENSITIES)]
        out.append((n, family, density, tasks.make_example("topo", rng, n, family=family,
                                                           density=density)))
    return out


def ref_topo(graph):
    """Repeated scan: at every step take the smallest-label node whose preds are all taken."""
    nodes = graph["nodes"]
    preds = {v: set() for v in nodes}
    succs = {v: set() for v in nodes}
    for u, v in graph["edges"]:
        preds[v].add(u)
        succs[u].add(v)
    degree = {v: len(preds[v]) + len(succs[v]) for v in nodes}
    hubs = hubs_of(degree)
    n, n_edges = len(nodes), len(graph["edges"])
    taken, order, feats = set(), [], []

    def ready_set():
        return {v for v in nodes if v not in taken and preds[v] <= taken}

    while len(order) < n:
        before = ready_set()
        assert before, "cycle: no node has in-degree zero among the remaining"
        v = min(before, key=lab)
        taken.add(v)
        after = ready_set()
        feats.append({"n_nodes": n, "n_edges": n_edges, "step": len(order),
                      "remaining": n - len(order), "ready": len(before),
                      "newly_enabled": len(after - before),
                      "in_degree": len(preds[v]), "out_degree": len(succs[v]),
                      "max_degree": max(degree.values()), "is_hub": int(v in hubs)})
        order.append(v)
    feats.append({"n_nodes": n, "n_edges": n_edges, "step": n, "remaining": 0, "ready": 0,
                  "newly_enabled": 0, "in_degree": 0, "out_degree": 0,
                  "max_degree": max(degree.values()), "is_hub": 0})
    return order, feats


def is_acyclic(nodes, edges):
    succs = {v: [] for v in nodes}
    for u, v in edges:
        succs[u].append(v)
    color = {v: 0 for v in nodes}

    def dfs(v):
        color[v] = 1
        for u in succs[v]:
            if color[u] == 1 or (color[u] == 0 and not dfs(u)):
                return False
        color[v] = 2
        return True

    return all(color[v] or dfs(v) for v in nodes)


def test_topo_matches_scan_reference(topo_examples):
    seen_hub = seen_multi_ready = 0
    for n, family, density, ex in topo_examples:
        ctx = (n, family, density, ex.prompt)
        g = ex.graph
        assert ex.task == "topo" and ex.n == n and g["start"] is None
        assert is_acyclic(g["nodes"], g["edges"]), ctx
        order, feats = ref_topo(g)
        assert ex.target == order + ["<end>"], ctx
        assert list(ex.features[0].keys()) == list(tasks.FEATURES["topo"])
        assert len(ex.features) == len(ex.target)
        for t, (got, want) in enumerate(zip(ex.features, feats)):
            assert got == want, (ctx, t, got, want)
        # valid topological order
        pos = {v: i for i, v in enumerate(order)}
        assert sorted(pos) == sorted(g["nodes"])
        assert all(pos[u] < pos[v] for u, v in g["edges"]), ctx
        seen_hub += sum(f["is_hub"] for f in feats)
        seen_multi_ready += sum(f["ready"] > 1 for f in feats)
    assert seen_hub > 100 and seen_multi_ready > 1000


def test_topo_lexicographically_smallest_bruteforce(topo_examples):
    """For small graphs, compare against the minimum over all valid permutations."""
    checked = 0
    for n, _, _, ex in topo_examples:
        if n > 6:
            continue
        g = ex.graph
        valid = [p for p in itertools.permutations(g["nodes"])
                 if all(p.index(u) < p.index(v) for u, v in g["edges"])]
        best = min(valid, key=lambda p: [lab(x) for x in p])
        assert ex.target[:-1] == list(best), (g, ex.target)
        checked += 1
        if checked >= 400:
            break
    assert checked >= 400


def test_topo_graph_and_prompt(topo_examples):
    for n, _, _, ex in topo_examples:
        g = ex.graph
        nodes = g["nodes"]
        assert len(nodes) == n and len(set(nodes)) == n and all(v in tasks.LABELS for v in nodes)
        pairs = [tuple(e) for e in g["edges"]]
        assert all(u != v for u, v in pairs), "self-loop"
        assert len(set(pairs)) == len(pairs), "duplicate edge"
        assert all(u in nodes and v in nodes for u, v in pairs)
        p = ex.prompt
        assert p[-1] == "<sep>" and p.count("<sep>") == 1
        # node list first (each node exactly once), then ';'
        assert p[n] == ";"
        assert sorted(p[:n], key=lab) == sorted(nodes, key=lab)
        rest = p[n + 1:-1]
        assert len(rest) % 4 == 0
        prompt_edges = []
        for i in range(0, len(rest), 4):
            u, arrow, v, semi = rest[i:i + 4]
            assert arrow == ">" and semi == ";"
            prompt_edges.append((u, v))
        assert sorted(prompt_edges) == sorted(pairs)


# -----------------------------------------------------------------------------
# lang

def parse_lang_prompt(prompt):
    """-> list of (position, var, rhs) statements; checks the 'x = y ;' grammar."""
    assert prompt[-1] == "<sep>" and prompt.count("<sep>") == 1
    body = prompt[:-1]
    assert len(body) % 4 == 0
    stmts = []
    for i in range(0, len(body), 4):
        var, eq, rhs, semi = body[i:i + 4]
        assert eq == "=" and semi == ";", body[i:i + 4]
        assert var in tasks.NAMES and (rhs in tasks.NAMES or rhs in tasks.VALUES)
        stmts.append((i, var, rhs))
    return stmts


def resolve(stmts, var):
    """Follow bindings from var; -> (value, hops, position of the value's
    statement, position of the earliest statement read on the way)."""
    by_var = {v: (pos, rhs) for pos, v, rhs in stmts}
    hops, earliest = 0, None
    while True:
        pos, rhs = by_var[var]
        hops += 1
        earliest = pos if earliest is None else min(earliest, pos)
        if rhs in tasks.VALUES:
            return rhs, hops, pos, earliest
        var = rhs
        assert hops <= len(stmts), "binding cycle"


def chase(stmts, var):
    """The tokens each hop from var reaches: the variables it points through, then the value."""
    by_var = {v: rhs for _, v, rhs in stmts}
    reached = [by_var[var]]
    while reached[-1] not in tasks.VALUES:
        reached.append(by_var[reached[-1]])
    return reached


def lang_cases():
    rng = random.Random(99)
    cases = []
    for i in range(3600):
        names = [tasks.N_LABELS, 24, tasks.MAX_NAMES][i // 1200]  # lang's pool: the labels, then its own
        n = 1 + i % (names * 2 // 3)
        hops = 1 + (i // 16) % 5 + (names > tasks.N_LABELS) * 3  # up to 8 hops among other chains
        distractors = [None, 0, 3, 7][(i // 80) % 4]
        order = tasks.CHAIN_ORDERS[(i // 320) % 2]
        if n + (n // 2 if distractors is None else distractors) > names:
            distractors = 0
        uniform = i % 3 == 0 and hops <= n  # the test prompts of long chains (evaluate.py --uniform-hops)
        ex = tasks.make_example("lang", rng, n, hops=hops, distractors=distractors, chain_order=order, names=names,
                                uniform_hops=uniform)
        cases.append((n, hops, n // 2 if distractors is None else distractors, order, names, ex))
    return cases


@pytest.fixture(scope="module")
def lang_examples():
    return lang_cases()


def test_lang_resolution_and_features(lang_examples):
    max_hops_seen = {}
    names_seen = {}
    for n, hops, distractors, order, names, ex in lang_examples:
        ctx = (n, hops, distractors, order, names, ex.prompt, ex.target)
        assert ex.task == "lang" and ex.n == n and ex.graph is None
        stmts = parse_lang_prompt(ex.prompt)
        variables = [v for _, v, _ in stmts]
        assert len(set(variables)) == len(variables), "variable bound twice"
        assert len(stmts) == n + distractors, ctx
        # the names come from the pool alone, and the ids fit the vocabulary of that pool
        assert set(variables) <= set(tasks.NAMES[:names]), ctx
        assert max(tasks.encode(ex.prompt + ex.target)) < tasks.vocab_size("lang", names), ctx
        names_seen.setdefault(names, set()).update(variables)
        # forward: every referenced variable is bound earlier in the prompt, so
        # reading it resolves it; reverse: later, so a query must chase it
        where = {v: pos for pos, v, _ in stmts}
        for pos, v, rhs in stmts:
            if rhs in tasks.NAMES:
                assert (where[rhs] < pos) == (order == "forward"), ctx
        n_q = min(4, n)
        t = ex.target
        assert len(t) == 4 * n_q + 1 and t[-1] == "<end>", ctx
        assert list(ex.features[0].keys()) == list(tasks.FEATURES["lang"])
        assert len(ex.features) == len(t)
        queried = []
        for q in range(n_q):
            var, arrow, value, semi = t[4 * q:4 * q + 4]
            assert arrow == "->" and semi == ";", ctx
            want_value, want_hops, root_pos, earliest = resolve(stmts, var)
            assert value == want_value, ctx
            assert ex.prompt[root_pos + 2] == value  # the chain's root: root = VALUE
            assert earliest == (root_pos if order == "forward" else where[var]), ctx
            value_pos = len(ex.prompt) + 4 * q + 2
            f = ex.features[4 * q:4 * q + 4]
            assert f[0]["kind"] == tasks.RANDOM and f[0]["hops"] == 0 and f[0]["distance"] == 0
            assert f[1]["kind"] == tasks.FILLER and f[1]["hops"] == 0 and f[1]["distance"] == 0
            assert f[2]["kind"] == tasks.REFERENCE, ctx
            assert f[2]["hops"] == want_hops, ctx
            assert 1 <= f[2]["hops"] <= hops, ctx
            assert f[2]["distance"] == value_pos - earliest, ctx
            assert f[3]["kind"] == tasks.FILLER and f[3]["hops"] == 0 and f[3]["distance"] == 0
            # the hints: the value's chase, hop by hop; every other token is its own
            assert ex.hints[4 * q + 2] == chase(stmts, var), ctx
            assert len(ex.hints[4 * q + 2]) == want_hops
            assert [ex.hints[4 * q + j] for j in (0, 1, 3)] == [[var], ["->"], [";"]]
            queried.append(var)
            max_hops_seen[hops, order] = max(max_hops_seen.get((hops, order), 0), want_hops)
        assert len(ex.hints) == len(t) and ex.hints[-1] == ["<end>"]
        end = ex.features[-1]
        assert end["kind"] == tasks.FILLER and end["hops"] == 0 and end["distance"] == 0
        assert len(set(queried)) == n_q, "a variable queried twice"
        for i, f in enumerate(ex.features):
            assert f["n_vars"] == n and f["distractors"] == distractors and f["step"] == i
        if n <= 4:
            # all n queryable variables are queried; the others are the distractors:
            # bound directly to a value and never referenced
            others = [s for s in stmts if s[1] not in queried]
            assert len(others) == distractors, ctx
            referenced = {rhs for _, _, rhs in stmts}
            for _, v, rhs in others:
                assert rhs in tasks.VALUES and v not in referenced, ctx
    # the hops parameter is actually reached
    assert max_hops_seen == {(h, o): h for h in range(1, 9) for o in tasks.CHAIN_ORDERS}, max_hops_seen
    # and every name of each pool is drawn
    assert {names: len(seen) for names, seen in names_seen.items()} == {16: 16, 24: 24, 48: 48}


def test_uniform_hops_asks_for_every_chain_length_alike():
    """uniform_hops keeps the prompt and asks, in every prompt, for the end of
    its first chain, whose length is uniform in 1..hops: each hop count is
    asked about in at least about 1/hops of the prompts, where random queries
    rarely reach the longest chains."""
    hops, n, num = 8, 12, 1600
    asked = {False: [], True: []}
    for seed in range(num):
        for uniform in (False, True):
            ex = tasks.make_example("lang", random.Random(seed), n, hops=hops, chain_order="reverse", names=24,
                                    uniform_hops=uniform)
            asked[uniform].append((ex.prompt, [f["hops"] for f in ex.features if f["kind"] == tasks.REFERENCE]))
    assert [p for p, _ in asked[False]] == [p for p, _ in asked[True]]
    for h in range(1, hops + 1):  # the first chain's, and sometimes another chain's of h hops
        prompts = sum(h in refs for _, refs in asked[True])
        assert prompts >= num / hops * 0.8, (h, prompts)
    assert sum(hops in refs for _, refs in asked[False]) < num / hops / 2
    with pytest.raises(ValueError, match="does not fit"):
        tasks.make_example("lang", random.Random(0), 6, hops=8, uniform_hops=True)


def test_lang_chain_orders_draw_the_same_bindings():
    """reverse changes only the order of each chain's statements: the same
    seed gives the same variables, values, queries and features but distance."""
    for seed in range(50):
        fwd, rev = (tasks.make_example("lang", random.Random(seed), 8, chain_order=o) for o in tasks.CHAIN_ORDERS)
        if any(rhs in tasks.LABELS for _, _, rhs in parse_lang_prompt(fwd.prompt)):  # a chain of 2+
            assert fwd.prompt != rev.prompt
        assert {(v, r) for _, v, r in parse_lang_prompt(fwd.prompt)} == \
            {(v, r) for _, v, r in parse_lang_prompt(rev.prompt)}
        assert fwd.target == rev.target
        strip = [{k: x for k, x in f.items() if k != "distance"} for f in fwd.features]
        assert strip == [{k: x for k, x in f.items() if k != "distance"} for f in rev.features]
    with pytest.raises(ValueError, match="chain order"):
        tasks.make_example("lang", random.Random(0), 6, chain_order="sideways")


@pytest.mark.parametrize("depth", [1, 2, 3, 5])
def test_exit_targets_follow_the_chase_and_end_on_the_answer(depth):
    """Exit k (1-based) is trained on the k-th hop of a value's chase, the value
    once the chase has reached it, and the last exit on the answer; every exit
    of any other token on its target; -1 where make_batch's targets are -1."""
    rng = random.Random(7)
    exs = [tasks.make_example("lang", rng, n, chain_order="reverse") for n in (3, 8, 5, 8)]  # padded
    _, targets, feats = tasks.make_batch(exs)
    exits = tasks.exit_targets(exs, targets, depth)
    assert exits.shape == targets.shape + (depth,)
    assert (exits[targets == -1] == -1).all() and (exits[..., -1] == targets).all()
    checked_multi_hop = 0
    for b, ex in enumerate(exs):
        stmts = parse_lang_prompt(ex.prompt)
        start = len(ex.prompt) - 1
        for j, (token, f) in enumerate(zip(ex.target, ex.features)):
            row = tasks.decode(exits[b, start + j])
            if f["kind"] != tasks.REFERENCE:
                assert row == [token] * depth
                continue
            var = ex.target[j - 2]  # the query: var -> value
            reached = chase(stmts, var)
            assert row[:-1] == [reached[min(k, len(reached) - 1)] for k in range(depth - 1)]
            checked_multi_hop += depth > 1 and len(reached) > 1
    assert checked_multi_hop > 0 or depth == 1
    # tasks without a chase: every exit is the answer
    dfs = tasks.sample_examples("dfs", rng, (4, 6), 3)
    _, dfs_targets, _ = tasks.make_batch(dfs)
    assert (tasks.exit_targets(dfs, dfs_targets, depth) == dfs_targets[..., None]).all()


def test_by_chance_marks_only_lang_queried_variables():
    ex = tasks.make_example("lang", random.Random(0), 6)
    assert [tasks.by_chance(f) for f in ex.features] == [f["kind"] == tasks.RANDOM for f in ex.features]
    assert sum(tasks.by_chance(f) for f in ex.features) == 4
    _, targets, feats = tasks.make_batch([ex])
    assert tasks.by_chance(feats).sum() == 4 and not tasks.by_chance(feats)[targets == -1].any()
    dfs = tasks.make_example("dfs", random.Random(0), 6)
    assert not any(tasks.by_chance(f) for f in dfs.features)


def test_lang_kind_constants():
    assert (tasks.FILLER, tasks.RANDOM, tasks.REFERENCE) == (0, 1, 2)


def test_lang_hops_one_has_no_references():
    rng = random.Random(3)
    for _ in range(100):
        ex = tasks.make_example("lang", rng, 8, hops=1)
        assert all(rhs in tasks.VALUES for _, _, rhs in parse_lang_prompt(ex.prompt))
        assert all(f["hops"] in (0, 1) for f in ex.features)


# -----------------------------------------------------------------------------
# tokenizer

def test_vocab_unique_and_specials():
    assert len(set(tasks.VOCAB)) == len(tasks.VOCAB)
    assert tasks.VOCAB[tasks.PAD] == "<pad>" and tasks.VOCAB[tasks.SEP] == "<sep>"
    assert tasks.VOCAB[tasks.END] == "<end>"
    ids = tasks.encode(tasks.VOCAB)
    assert ids == list(range(len(tasks.VOCAB)))
    assert tasks.decode(ids) == tasks.VOCAB
    shuffled = random.Random(0).sample(tasks.VOCAB * 2, 2 * len(tasks.VOCAB))
    assert tasks.decode(tasks.encode(shuffled)) == shuffled
    assert tasks.encode([]) == [] and tasks.decode([]) == []


@pytest.mark.parametrize("task", tasks.TASKS)
def test_round_trip_and_label_coverage(task):
    lo, hi = tasks.DEFAULT_SIZES[task]
    hi = min(2 * hi, tasks.max_size(task))  # what evaluate.py tests by default
    rng = random.Random(5)
    for n in range(2, hi + 1):
        tasks.check_size(task, n)
        for _ in range(20):
            ex = tasks.make_example(task, rng, n)
            toks = ex.prompt + ex.target
            ids = tasks.encode(toks)
            assert all(isinstance(i, int) and 0 <= i < len(tasks.VOCAB) for i in ids)
            assert tasks.decode(ids) == toks
            assert tasks.decode(tasks.encode(ex.prompt)) == ex.prompt
    exs = tasks.sample_examples(task, rng, (lo, hi), 50)
    assert {ex.n for ex in exs} <= set(range(lo, hi + 1))
    for ex in exs:
        tasks.encode(ex.prompt + ex.target)


@pytest.mark.parametrize("task,n", [("dfs", tasks.N_LABELS + 1), ("topo", tasks.N_LABELS + 1),
                                    ("lang", tasks.max_size("lang") + 1), ("dfs", 100)])
def test_size_too_large_for_labels(task, n):
    with pytest.raises(ValueError, match=r"label"):
        tasks.make_example(task, random.Random(0), n)
    with pytest.raises(ValueError, match=rf"\b{n}\b"):
        tasks.check_size(task, n)


def test_size_limits_exact():
    N = tasks.N_LABELS
    tasks.make_example("dfs", random.Random(0), N)
    tasks.make_example("topo", random.Random(0), N)
    n = tasks.max_size("lang")                                # n + n // 2 labels
    assert n + n // 2 <= N < (n + 1) + (n + 1) // 2
    tasks.make_example("lang", random.Random(0), n)
    tasks.make_example("lang", random.Random(0), N // 2, distractors=N // 2)
    with pytest.raises(ValueError, match="label"):
        tasks.make_example("lang", random.Random(0), N // 2, distractors=N // 2 + 1)


@pytest.mark.parametrize("task,n", [("dfs", 1), ("topo", 0), ("lang", 0), ("dfs", -3)])
def test_size_too_small(task, n):
    with pytest.raises(ValueError, match="too small"):
        tasks.make_example(task, random.Random(0), n)


def test_unknown_task_and_family():
    with pytest.raises(ValueError, match="unknown task"):
        tasks.make_example("nope", random.Random(0), 5)
    for task in ("dfs", "topo"):
        with pytest.raises(ValueError, match="family"):
            tasks.make_example(task, random.Random(0), 5, family="nope")


def test_unknown_token():
    with pytest.raises(ValueError, match="'foo'"):
        tasks.encode(["3", "foo"])
    with pytest.raises(ValueError):
        tasks.encode([str(tasks.MAX_NAMES)])  # a name beyond lang's largest pool


# -----------------------------------------------------------------------------
# make_batch

@pytest.mark.parametrize("task", tasks.TASKS)
def test_make_batch(task):
    rng = random.Random(11)
    exs = [tasks.make_example(task, rng, n) for n in (2, 9, 5, 11, 3)]
    idx, targets, features = tasks.make_batch(exs)
    seqs = [ex.prompt + ex.target for ex in exs]
    T = max(len(s) for s in seqs) - 1
    assert idx.shape == targets.shape == (len(exs), T)
    assert idx.dtype == np.int64 and targets.dtype == np.int64
    assert set(features) == set(tasks.FEATURES[task])
    assert len({len(s) for s in seqs}) > 1  # padding is exercised
    for b, (ex, s) in enumerate(zip(exs, seqs)):
        L, P = len(s), len(ex.prompt)
        ids = tasks.encode(s)
        assert idx[b, :L - 1].tolist() == ids[:-1]
        assert (idx[b, L - 1:] == tasks.PAD).all()
        assert (targets[b, :P - 1] == -1).all()           # prompt: no loss
        assert (targets[b, L - 1:] == -1).all()           # padding: no loss
        assert targets[b, P - 1:L - 1].tolist() == tasks.encode(ex.target)
        assert (targets[b, P - 1:L - 1] != -1).all()
        assert idx[b, P - 1] == tasks.SEP                 # <sep> predicts the first target token
        # <end> is never an input
        assert tasks.END not in idx[b].tolist()
        # next-token alignment
        assert (targets[b, :L - 2][targets[b, :L - 2] != -1] ==
                idx[b, 1:L - 1][targets[b, :L - 2] != -1]).all()
        mask = targets[b] != -1
        for f in tasks.FEATURES[task]:
            arr = features[f][b]
            assert arr.shape == (T,)
            assert (~np.isnan(arr) == mask).all(), f
            assert arr[mask].tolist() == [float(fd[f]) for fd in ex.features], f


@pytest.mark.parametrize("task", tasks.TASKS)
def test_prompt_targets(task):
    """The prompt's own next tokens, up to <sep>; nothing on the answer or padding."""
    exs = [tasks.make_example(task, random.Random(12), n) for n in (3, 7, 5)]
    idx, targets, _ = tasks.make_batch(exs)
    prompt = tasks.prompt_targets(idx, targets)
    assert prompt.shape == idx.shape and prompt.dtype == np.int64
    for b, ex in enumerate(exs):
        P = len(ex.prompt)
        assert prompt[b, :P - 1].tolist() == tasks.encode(ex.prompt[1:])  # ends with <sep>
        assert (prompt[b, P - 1:] == -1).all()
    assert ((prompt != -1) & (targets != -1)).sum() == 0


def test_make_batch_single_example():
    ex = tasks.make_example("dfs", random.Random(2), 4)
    idx, targets, features = tasks.make_batch([ex])
    assert idx.shape == (1, len(ex.prompt) + len(ex.target) - 1)
    assert (targets != -1).sum() == len(ex.target)
    assert (~np.isnan(features["step"])).sum() == len(ex.target)


# -----------------------------------------------------------------------------
# determinism

def draw(task, seed, num=8):
    rng = random.Random(seed)
    return [tasks.make_example(task, rng, n) for n in range(3, 3 + num)]


def as_tuple(ex):
    return (ex.task, ex.n, ex.prompt, ex.target, ex.features, ex.graph)


@pytest.mark.parametrize("task", tasks.TASKS)
def test_same_seed_same_examples(task):
    a = [as_tuple(e) for e in draw(task, 17)]
    b = [as_tuple(e) for e in draw(task, 17)]
    assert a == b
    c = [as_tuple(e) for e in draw(task, 18)]
    assert a != c
    # every example differs between seeds (prompts are long enough to make a clash unlikely)
    assert sum(x[2] != y[2] for x, y in zip(a, c)) >= 6


@pytest.mark.parametrize("task", tasks.TASKS)
def test_global_random_not_used(task):
    random.seed(1)
    a = [as_tuple(e) for e in draw(task, 5)]
    random.seed(2)
    state = random.getstate()
    b = [as_tuple(e) for e in draw(task, 5)]
    assert a == b
    assert random.getstate() == state, "tasks consumed the global random state"
    # sample_examples too
    random.seed(3)
    x = [as_tuple(e) for e in tasks.sample_examples(task, random.Random(8), (4, 8), 5)]
    random.seed(4)
    y = [as_tuple(e) for e in tasks.sample_examples(task, random.Random(8), (4, 8), 5)]
    assert x == y


# -----------------------------------------------------------------------------
# command line

def run_cli(*args):
    return subprocess.run([sys.executable, "tasks.py", *args], cwd=REPO, capture_output=True,
                          text=True, timeout=60)


def test_cli_show():
    r = run_cli("--task", "dfs", "--n", "6", "--num", "2")
    assert r.returncode == 0, r.stderr
    out = r.stdout
    assert out.count("# dfs  n=6") == 2
    assert out.count("prompt: ") == 2
    headers = [line for line in out.splitlines() if line.startswith("target")]
    assert len(headers) == 2
    for h in headers:
        assert h.split()[1:] == tasks.FEATURES["dfs"]
    # rows: 6 nodes + <end> per example, each with one value per feature
    rows = [line.split() for line in out.splitlines()
            if line and not line.startswith(("#", "prompt", "target"))]
    assert len(rows) == 2 * 7
    assert all(len(r_) == 1 + len(tasks.FEATURES["dfs"]) for r_ in rows)
    assert sum(r_[0] == "<end>" for r_ in rows) == 2


@pytest.mark.parametrize("task", tasks.TASKS)
def test_cli_json(task):
    r = run_cli("--task", task, "--n", "7", "--num", "3", "--json", "--seed", "5")
    assert r.returncode == 0, r.stderr
    lines = r.stdout.strip().splitlines()
    assert len(lines) == 3
    rng = random.Random(5)
    for line in lines:
        rec = json.loads(line)
        want = {"task", "n", "prompt", "target", "features"}
        if task != "lang":
            want.add("graph")
        assert set(rec) == want
        assert rec["task"] == task and rec["n"] == 7
        if task != "lang":
            assert set(rec["graph"]) == {"nodes", "edges", "start"}
            assert (rec["graph"]["start"] is None) == (task == "topo")
        # same examples as the library with the same seed and default parameters
        ex = tasks.make_example(task, rng, 7)
        assert rec["prompt"] == ex.prompt and rec["target"] == ex.target
        assert rec["features"] == ex.features
        if task != "lang":
            assert rec["graph"] == json.loads(json.dumps(ex.graph))
    again = run_cli("--task", task, "--n", "7", "--num", "3", "--json", "--seed", "5")
    assert again.stdout == r.stdout
    other = run_cli("--task", task, "--n", "7", "--num", "3", "--json", "--seed", "6")
    assert other.returncode == 0 and other.stdout != r.stdout


@pytest.mark.parametrize("args", [
    ("--task", "nope"),
    ("--n", "0"),
    ("--n", "40"),
    ("--family", "nope"),
    ("--task", "topo", "--family", "nope"),
    ("--task", "lang", "--n", "30"),
    ("--num", "0"),
])
def test_cli_errors(args):
    r = run_cli(*args)
    assert r.returncode == 2
    err = r.stderr.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:"), r.stderr
    assert "Traceback" not in r.stderr
    assert r.stdout == ""
