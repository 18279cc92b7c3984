"""bench.py generate --quick: the command runs and writes every measure. No
timing is asserted (speed is the benchmark's business, not the tests')."""
import json
import math

import bench


def test_generate_quick_writes_every_measure(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the tiny models it trains on the spot go to out/bench/ here
    bench.main(["generate", "--quick", "--json", "bench.json"])
    report = json.loads((tmp_path / "bench.json").read_text())
    assert [m["router"] for m in report["models"]] == ["early", "online"]
    for m in report["models"]:
        assert 1 <= m["decode_mean_depth"] <= m["max_depth"]
        assert m["fixed_depth"] == math.ceil(m["decode_mean_depth"])
        assert [row["batch"] for row in m["rows"]] == [1, 4]
        for row in m["rows"]:
            assert set(row["tokens_per_s"]) == {"routed", "full", "fixed", "depth1"}
            assert all(v > 0 for v in row["tokens_per_s"].values())
            assert 0 < row["prompt_share"] < 1
            assert 0 < row["ideal"] <= 1
            assert row["decode_ratio"] > 0 and row["end_to_end_ratio"] > 0
            assert (row["skip_efficiency"] is None) == (row["ideal"] == 1)
            assert (row["iteration_seconds"] is None) == (m["fixed_depth"] == 1)
