"""More than one process through accelerate: 2 CPU processes (gloo) give the losses of one process with the same global
batch, whether started by `accelerate launch -m dpo_nb.cli train` or by `accelerate.notebook_launcher`."""
import json, os, socket, subprocess, sys, textwrap

import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM

from conftest import save_tiny_model
from dpo_nb.history import History

pytest.importorskip("accelerate")
WORDS = ["<pad>", "<bos>", "<eos>", "<unk>", "the", "film", "was", "plot", "is", "good", "bad", "very", "great", "awful", "and"]


@pytest.fixture(scope="module")
def local(tmp_path_factory):
    "A tiny model + tokenizer saved with save_pretrained and 48 pairs of varied length in a JSONL file."
    d = tmp_path_factory.mktemp("dist")
    save_tiny_model(d / "model", WORDS)
    rng = np.random.default_rng(0)
    with open(d / "pairs.jsonl", "w") as f:
        for i in range(48):
            extra = " ".join(rng.choice(["very", "and"], size=int(rng.integers(0, 5))))
            f.write(json.dumps(dict(prompt=f"the {rng.choice(['film', 'plot'])} {rng.choice(['was', 'is'])} {extra}",
                                    chosen=f" {extra} {rng.choice(['good', 'great'])}",
                                    rejected=f" {rng.choice(['bad', 'awful'])} {extra}")) + "\n")
    return d


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0)); return s.getsockname()[1]


ENV = dict(os.environ, OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false")
TRAIN = ["train", "--data", "{data}", "--model", "{model}", "--out", "{out}", "--device", "cpu", "--max-steps", "5",
         "--batch-size", "8", "--learning-rate", "0.01", "--beta", "0.5", "--eval-fraction", "0.25", "--eval-every", "2",
         "--warmup-ratio", "0", "--ref-cache", "false", "--progress", "false"]


def train_args(local, out, *extra):
    return [a.format(data=local / "pairs.jsonl", model=local / "model", out=out) for a in TRAIN] + list(extra)


def run(cmd):
    r = subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-5000:]
    return r


@pytest.mark.parametrize("extra", [[], ["--grad-accum-steps", "2", "--group-by-length", "true"]])
def test_accelerate_launch_two_processes_equal_one(local, tmp_path, extra):
    run([sys.executable, "-m", "dpo_nb.cli"] + train_args(local, tmp_path / "one", *extra))
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
              "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(free_port()), "-m", "dpo_nb.cli"]
    r = run(launch + train_args(local, tmp_path / "two", *extra))
    assert r.stdout.count("model: ") == 1  # process 0 reports (and writes) alone
    one, two = History.load(tmp_path / "one" / "history"), History.load(tmp_path / "two" / "history")
    assert (one.meta["processes"], two.meta["processes"]) == (1, 2)
    assert (one.meta["data_parallel"], two.meta["data_parallel"]) == (None, "DistributedDataParallel")  # gradients averaged by DDP
    assert len(two.steps) == 5
    np.testing.assert_allclose(two.steps["loss"], one.steps["loss"], atol=1e-6, rtol=0)
    assert one.steps["loss"].iloc[-1] < one.steps["loss"].iloc[0] - 0.05  # it learned, so equal losses mean something
    np.testing.assert_allclose(two.evals["loss"], one.evals["loss"], atol=1e-6, rtol=0)
    # every pair of every step recorded, in the same order (the global batch, gathered from both processes)
    a, b = one.pairs.query("split == 'train'"), two.pairs.query("split == 'train'")
    np.testing.assert_array_equal(a["pair_id"], b["pair_id"])
    np.testing.assert_allclose(a["margin"], b["margin"], atol=1e-5)
    wa = AutoModelForCausalLM.from_pretrained(tmp_path / "one" / "model").state_dict()
    wb = AutoModelForCausalLM.from_pretrained(tmp_path / "two" / "model").state_dict()
    for k in wa: torch.testing.assert_close(wb[k], wa[k], atol=1e-5, rtol=1e-4, msg=k)


def test_a_batch_that_does_not_split_evenly_is_refused(local, tmp_path):
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
              "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(free_port()), "-m", "dpo_nb.cli"]
    args = train_args(local, tmp_path / "odd")
    args[args.index("--batch-size") + 1] = "7"
    r = subprocess.run(launch + args, env=ENV, capture_output=True, text=True, timeout=600)
    assert r.returncode != 0 and "batch_size=7 must divide evenly among the 2 processes" in r.stderr


def test_notebook_launcher_two_processes_equal_one(local, tmp_path):
    script = textwrap.dedent(f"""
        import json, sys
        from accelerate import notebook_launcher

        def train(out):
            from transformers import AutoModelForCausalLM, AutoTokenizer
            from dpo_nb.train import DPOConfig, DPOTrainer
            model = AutoModelForCausalLM.from_pretrained({str(local / 'model')!r})
            tok = AutoTokenizer.from_pretrained({str(local / 'model')!r})
            cfg = DPOConfig(batch_size=8, max_steps=4, learning_rate=0.01, beta=0.5, warmup_ratio=0.0, progress=False,
                            device="cpu", ref_cache=False, probe_pairs=0)
            t = DPOTrainer(model, tok, {str(local / 'pairs.jsonl')!r}, cfg)
            t.fit()
            if t.is_main: json.dump(dict(world=t.world, loss=t.history.steps["loss"].tolist()), open(out, "w"))

        n = int(sys.argv[1])
        if n == 1: train(sys.argv[2])
        else: notebook_launcher(train, (sys.argv[2],), num_processes=n, use_port={str(free_port())!r})
    """)
    (tmp_path / "nb.py").write_text(script)
    for n in (1, 2): run([sys.executable, str(tmp_path / "nb.py"), str(n), str(tmp_path / f"{n}.json")])
    one, two = (json.loads((tmp_path / f"{n}.json").read_text()) for n in (1, 2))
    assert (one["world"], two["world"]) == (1, 2)
    np.testing.assert_allclose(two["loss"], one["loss"], atol=1e-6, rtol=0)


def test_process_0_decides_the_reference_cache(local, tmp_path):
    """Process 1 sees an empty cache folder while process 0's holds the file: both follow process 0 (no hang), and only
    process 0 fingerprints the weights."""
    script = textwrap.dedent(f"""
        import json, os, sys
        from accelerate import notebook_launcher

        def train(out, run):
            import dpo_nb.train as T
            from transformers import AutoModelForCausalLM, AutoTokenizer
            rank = int(os.environ.get("RANK", "0"))
            calls = []
            fp = T.model_fingerprint
            T.model_fingerprint = lambda m: calls.append(1) or fp(m)
            cache = {str(tmp_path)!r} + ("/cache0" if rank == 0 else f"/cache{{rank}}-run{{run}}")  # rank 1: always empty
            model = AutoModelForCausalLM.from_pretrained({str(local / 'model')!r})
            tok = AutoTokenizer.from_pretrained({str(local / 'model')!r})
            cfg = T.DPOConfig(batch_size=8, max_steps=3, learning_rate=0.01, beta=0.5, warmup_ratio=0.0, progress=False,
                              device="cpu", ref_cache=True, cache_dir=cache, probe_pairs=0)
            t = T.DPOTrainer(model, tok, {str(local / 'pairs.jsonl')!r}, cfg)
            t.fit()
            json.dump(dict(calls=len(calls), cache=t.ref_cache_log["train"][0], loss=t.history.steps["loss"].tolist()),
                      open(f"{{out}}-{{rank}}.json", "w"))

        notebook_launcher(train, (sys.argv[1], sys.argv[2]), num_processes=2, use_port=sys.argv[3])
    """)
    (tmp_path / "cache.py").write_text(script)
    res = {}
    for run_no in (1, 2):
        r = subprocess.run([sys.executable, str(tmp_path / "cache.py"), str(tmp_path / f"run{run_no}"), str(run_no), str(free_port())],
                           env=ENV, capture_output=True, text=True, timeout=300)
        assert r.returncode == 0, r.stderr[-4000:]
        res[run_no] = [json.loads((tmp_path / f"run{run_no}-{k}.json").read_text()) for k in (0, 1)]
    (first0, first1), (second0, second1) = res[1], res[2]
    assert [x["calls"] for x in res[1] + res[2]] == [1, 0, 1, 0]  # the fingerprint: once, by process 0
    assert (first0["cache"], first1["cache"]) == ("written", "computed")
    assert (second0["cache"], second1["cache"]) == ("read", "read")  # process 1's own folder is empty: it follows process 0
    np.testing.assert_allclose(second0["loss"], first0["loss"], atol=1e-6, rtol=0)


@pytest.mark.parametrize("var, name", [("ACCELERATE_USE_DEEPSPEED", "DeepSpeed"), ("ACCELERATE_USE_FSDP", "FSDP")])
def test_a_sharding_launcher_config_is_refused_not_ignored(local, tmp_path, var, name):
    "accelerate launch with a DeepSpeed or FSDP config sets these; the trainer does not shard, so it says so and stops"
    env = dict(ENV, **{var: "true"})
    r = subprocess.run([sys.executable, "-m", "dpo_nb.cli"] + train_args(local, tmp_path / "out"), env=env, capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 2, r.stderr[-3000:]
    line, = r.stderr.strip().splitlines()[-1:]
    assert line.startswith("dpo-nb train: error: ") and f"a {name} config" in line and "--multi_gpu" in line
    assert not (tmp_path / "out" / "model").exists()
