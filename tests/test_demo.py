"""The main job on the real embedded model (SmolLM2-135M) and the command line."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")

from tiny_models import have_embedded_model  # noqa: E402




@pytest.mark.model
@pytest.mark.filterwarnings("ignore::palu_c.WhiteningWarning")  # 128 calibration tokens < 576 channels: singular Gram by design
@pytest.mark.slow
@pytest.mark.skipif(not have_embedded_model(), reason="embedded model not installed (make install-model)")
def test_demo_on_embedded_model():
    from palu_c.demo import run_demo

    lines = []
    result = run_demo(ratio=0.5, n_samples=2, seq_len=64, out=lines.append)
    assert result["kv_dim"] == 192 and result["rank"] == 96
    assert len(result["rows"]) == 30
    mean = result["mean"]
    for key, value in mean.items():
        assert 0.0 < value < 1.0, (key, value)
    # Activation-aware factorization must beat plain SVD on held-out activations, as the method promises.
    assert mean["k_out_whiten"] < mean["k_out_plain"]
    assert mean["v_out_whiten"] < mean["v_out_plain"]
    assert any("latent 11,520 B/token (50.0%)" in line for line in lines)


def run_cli(*args):
    return subprocess.run([sys.executable, "-m", "palu_c", *args], capture_output=True, text=True, timeout=300)


def test_cli_info():
    proc = run_cli("info")
    assert proc.returncode == 0, proc.stderr
    info = json.loads(proc.stdout)
    assert {"version", "lapack", "cuda_compiled", "cuda_devices"} <= set(info)


@pytest.mark.parametrize("args, message", [
    (("--tokens", "4k"), "--tokens takes comma-separated positive integers"),
    (("--batch", "0"), "--batch takes comma-separated positive integers"),
    (("--shape", "llama3-8b", "--group-size", "3"), "none of the group sizes [3] divides the 8 KV heads"),
    (("--shape", "llama3-8b", "--model", "x"), "give --shape or --model, not both"),
    (("--ratio", "0"), "--ratio must be in (0, 1]"),
    (("--model", "./no/such/folder"), "no such folder"),
])
def test_cli_bench_rejects_bad_arguments(capsys, args, message):
    from palu_c.__main__ import main

    assert main(["bench", *args]) == 2
    err = capsys.readouterr().err
    assert message in err, err


def test_cli_bench_reads_the_shape_from_a_config_folder(capsys, tmp_path):
    """A folder with only an HF config (no weights) gives the attention shape: 28 heads over 4 KV heads of a
    3584-wide model (Qwen2-7B's) has 7 query heads per KV head and head_dim 128; group size 3 divides nothing there.
    Without CUDA the command stops after the shape with the reason; with it, the group-size check comes first."""
    from transformers import LlamaConfig

    import torch

    from palu_c.__main__ import main

    LlamaConfig(num_attention_heads=28, num_key_value_heads=4, hidden_size=3584).save_pretrained(tmp_path)
    assert main(["bench", "--model", str(tmp_path), "--group-size", "3"]) == 2
    assert "none of the group sizes [3] divides the 4 KV heads" in capsys.readouterr().err
    if not torch.cuda.is_available():
        assert main(["bench", "--model", str(tmp_path), "--group-size", "1,2,4", "--tokens", "1000"]) == 2
        assert "no CUDA device is visible" in capsys.readouterr().err


def test_cli_demo_rejects_bad_ratio():
    proc = run_cli("demo", "--ratio", "1.5")
    assert proc.returncode == 2
    assert "ratio must be in (0, 1]" in proc.stderr


@pytest.mark.model
@pytest.mark.slow
@pytest.mark.skipif(not have_embedded_model(), reason="embedded model not installed (make install-model)")
def test_palu_demo_on_embedded_model():
    from palu_c.demo import run_palu_demo

    lines = []
    result = run_palu_demo(n_samples=4, seq_len=256, eval_windows=4, max_new_tokens=8, progress=False,
                           out=lines.append)
    assert 1.0 < result["ppl_before"] < result["ppl_after"] < 10 * result["ppl_before"]
    # ratio 0.5, 3-bit latents, 1024 tokens: under a fifth of the float32 DynamicCache (the 128-token fp32
    # window alone is 1/8 of the latent tokens; scales, zeros and positions counted)
    assert result["bytes_after"] < 0.2 * result["bytes_before"]
    assert all(isinstance(s, str) and s.strip() for s in result["samples"].values())
    assert any("KV bytes/token" in line for line in lines)


@pytest.mark.model
@pytest.mark.slow
@pytest.mark.skipif(not have_embedded_model(), reason="embedded model not installed (make install-model)")
def test_cli_compress_then_eval(tmp_path):
    out = tmp_path / "smollm2-palu"
    proc = run_cli("compress", str(out), "--calib", "palu_c/data/calibration_emma.txt", "--samples", "2",
                   "--seq-len", "64", "--ratio", "0.5", "--group-size", "3", "--bits", "4")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "saved to" in proc.stdout and (out / "palu_config.json").is_file()
    proc = run_cli("eval", str(out), "--text", "palu_c/data/eval_persuasion.txt", "--seq-len", "128", "--windows", "1")
    assert proc.returncode == 0, proc.stderr[-2000:]
    value = float(proc.stdout.strip().split("perplexity:")[1])
    assert 1.0 < value < 1000.0
    bad = run_cli("eval", str(tmp_path / "missing"), "--text", "palu_c/data/eval_persuasion.txt")
    assert bad.returncode != 0


@pytest.mark.model
@pytest.mark.slow
@pytest.mark.skipif(not have_embedded_model(), reason="embedded model not installed (make install-model)")
def test_cli_compress_with_weights_then_eval(tmp_path):
    out = tmp_path / "smollm2-palu-flrc"
    proc = run_cli("compress", str(out), "--calib", "palu_c/data/calibration_emma.txt", "--samples", "2",
                   "--seq-len", "64", "--ratio", "0.5", "--group-size", "3", "--weights-ratio", "0.9",
                   "--weights-search", "uniform", "--progressive")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "FLRC: stored" in proc.stdout and "saved to" in proc.stdout
    stored = float(proc.stdout.split("FLRC: stored")[1].split("(")[1].split("%")[0])
    assert 85.0 <= stored <= 90.0  # at or under the 90% budget, within one rank unit of it
    proc = run_cli("eval", str(out), "--text", "palu_c/data/eval_persuasion.txt", "--seq-len", "128", "--windows", "1")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert 1.0 < float(proc.stdout.strip().split("perplexity:")[1]) < 1000.0
    bad = run_cli("compress", str(tmp_path / "x"), "--calib", "palu_c/data/calibration_emma.txt", "--progressive")
    assert bad.returncode == 2 and "--weights-ratio" in bad.stderr


def test_bench_names_the_device_by_uuid_where_torch_has_one():
    """The table's GPU line carries the device UUID's first 8 hex digits (tables from different machines of one GPU
    model differ by up to 5%), and nothing where torch reports none."""
    import uuid
    from types import SimpleNamespace

    from palu_c.bench import _device_id

    u = uuid.uuid4()
    assert _device_id(SimpleNamespace(uuid=u)) == f" (GPU-{u.hex[:8]})"
    assert _device_id(SimpleNamespace()) == "" and _device_id(SimpleNamespace(uuid=None)) == ""
