"bench/gpu_check.py (the one-command GPU check) runs end to end on CPU at toy size, so that it cannot rot."
import importlib.util, json, math, subprocess, sys
from pathlib import Path

import pytest

pytest.importorskip("trl")
pytest.importorskip("peft")

ROOT = Path(__file__).resolve().parents[1]
RUNS = ["smollm2-135m/full", "smollm2-135m/lora", "smollm2-135m/fp16-as-on-T4", "smollm2-135m/full-fp32",
        "qwen2.5-0.5b/full", "qwen2.5-0.5b/lora", "qwen2.5-0.5b/qlora", "1.5b/lora", "1.5b/qlora"]
HAS_BNB = importlib.util.find_spec("bitsandbytes") is not None


def finite(x) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x)


def test_gpu_check_tiny_on_cpu(tmp_path):
    out = tmp_path / "out"
    # a generous budget: on a slow machine the runs should slow down, not be skipped
    cmd = [sys.executable, str(ROOT / "bench" / "gpu_check.py"), "--device", "cpu", "--tiny", "--out", str(out),
           "--budget-s", "3000"]
    p = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, f"exit {p.returncode}\nstdout:\n{p.stdout[-3000:]}\nstderr:\n{p.stderr[-6000:]}"

    res = json.loads((out / "gpu_check.json").read_text())
    rows = {r["run"]: r for r in res["rows"]}
    assert [r["run"] for r in res["rows"]] == RUNS  # one row per run, in the order they ran
    assert res["device"] == "cpu" and res["tiny"] and set(res["versions"]) >= {"torch", "transformers", "trl", "peft"}
    for name, r in rows.items():
        if r["mode"] == "qlora" and not HAS_BNB:
            assert r["status"] == "skipped" and "bitsandbytes" in r["reason"]
            continue
        assert r["status"] == "ok", f"{name}: {r.get('error')}"
        assert r["compares_trl"] and r["agree"] is True, f"{name}: max |loss diff| {r['loss_max_abs_diff']}"
        assert r["same_init"] and r["ids_equal"]
        assert finite(r["loss_max_abs_diff"]) and r["loss_max_abs_diff"] <= r["tolerance"]
        for tool in ("dpo_nb", "trl"):
            t = r[tool]
            assert len(t["losses"]) == 1 + res["steps"] and all(map(finite, t["losses"])), (name, tool)
            for k in ("pairs/s", "tokens/s", "peak_memory_mb"):
                assert finite(t[k]), (name, tool, k, t[k])
            assert t["pairs/s"] > 0 and t["tokens/s"] > t["pairs/s"]
            assert t["mfu"] is None  # no GPU peak on CPU
        assert finite(r["speed_x_trl"])
    fp16 = rows["smollm2-135m/fp16-as-on-T4"]["dpo_nb"]  # the GradScaler path ran and is recorded
    assert fp16["precision_info"]["autocast"] == "float16" and fp16["loss_scale"] > 0
    assert fp16["amp_overflow_steps"] >= 0
    assert rows["smollm2-135m/full"]["dpo_nb"]["precision_info"]["upcast_to_fp32"] > 0  # loaded bf16, trained on fp32 masters
    assert rows["smollm2-135m/full-fp32"]["tolerance"] == 1e-4

    md = (out / "gpu_check.md").read_text()
    assert "| run | precision | dpo_nb pairs/s | TRL pairs/s |" in md
    assert all(f"| {name} |" in md for name in RUNS)
    assert "| run | precision |" in p.stdout  # the table is printed too
