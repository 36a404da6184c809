"""Calibration tokens (palu_c/calibration.py) and K/V statistics (palu_c/statistics.py).

Independent references, written here without calling the code under test:
- windows: every returned row must be a contiguous slice of the tokenizer's own output for the whole text;
- Gram: the k_proj input rebuilt from ``output_hidden_states`` (input_layernorm of the residual stream that
  enters layer i), X^T X in NumPy float64;
- Fisher: a deep copy of the model, one ``loss.backward()`` per sample on a hand-written mean next-token
  cross-entropy, (weight.grad**2).sum(1) per row accumulated in NumPy float64.
Tolerances: a float64 model differs from the reference only by summation order over <= a few hundred terms,
so rtol 1e-10 (~5e5 eps64, generous) relative to the largest entry; a float32 model also differs by the float32
rounding of the two forward/backward passes (batched vs one sample), so rtol 1e-4 (~800 eps32).
"""

from __future__ import annotations

import copy
import os
import sys
import types
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("tqdm")

sys.path.insert(0, str(Path(__file__).parent))
from tiny_models import TINY_VOCAB, tiny_calib, tiny_model  # noqa: E402

from palu_c.calibration import calibration_tokens  # noqa: E402
from palu_c.statistics import KVStatistics, StatisticsCacheWarning, collect_kv_statistics  # noqa: E402

EMMA = Path(__file__).parent / "data" / "emma_excerpt.txt"
RTOL = {torch.float64: 1e-10, torch.float32: 1e-4}


# ----------------------------------------------------------------------------------------------- references

class ByteTokenizer:
    """A fast stand-in tokenizer: one token per UTF-8 byte (ids 0..255)."""

    def __init__(self):
        self.calls = 0

    def __call__(self, text, return_tensors=None, add_special_tokens=True):
        self.calls += 1
        ids = list(text.encode("utf-8"))
        return {"input_ids": torch.tensor([ids]) if return_tensors == "pt" else [ids]}


class FakeDataset:
    """What calibration_tokens uses of a datasets.Dataset: column_names and column access."""

    def __init__(self, columns):
        self.columns = columns
        self.column_names = list(columns)

    def __getitem__(self, name):
        return list(self.columns[name])


def window_offsets(stream: np.ndarray, row: np.ndarray) -> np.ndarray:
    """All offsets o with stream[o:o+len(row)] == row."""
    views = np.lib.stride_tricks.sliding_window_view(stream, row.size)
    return np.flatnonzero((views == row).all(axis=1))


def assert_windows_of(stream, out, n_samples, seq_len):
    stream = np.asarray(stream)
    assert out.dtype == torch.long and tuple(out.shape) == (n_samples, seq_len) and out.is_contiguous()
    offsets = []
    for row in out.numpy():
        hits = window_offsets(stream, row)
        assert hits.size > 0, "a row is not a window of the tokenized text"
        offsets.append(hits[0])
    return np.array(offsets)


def ref_grams(model, calib):
    """Per layer X^T X (float64) with X = input_layernorm(residual stream entering the layer)."""
    layers = model.model.layers
    grams = [np.zeros((model.config.hidden_size,) * 2) for _ in layers]
    with torch.no_grad():
        for ids in calib:
            hidden = model(ids[None], output_hidden_states=True, use_cache=False).hidden_states
            for i, layer in enumerate(layers):
                x = layer.input_layernorm(hidden[i])[0].double().numpy()
                grams[i] += x.T @ x
    return grams


def ref_per_sample_grads(model, calib):
    """Per layer and per sample the k_proj / v_proj weight gradients, each (N, O, C) float64."""
    work = copy.deepcopy(model).eval()
    for p in work.parameters():
        p.requires_grad_(True)
    per_k = [[] for _ in work.model.layers]
    per_v = [[] for _ in work.model.layers]
    for ids in calib:
        work.zero_grad(set_to_none=True)
        logits = work(ids[None], use_cache=False).logits[0]
        loss = torch.nn.functional.cross_entropy(logits[:-1], ids[1:])  # mean over the T-1 targets
        loss.backward()
        for i, layer in enumerate(work.model.layers):
            per_k[i].append(layer.self_attn.k_proj.weight.grad.double().numpy().copy())
            per_v[i].append(layer.self_attn.v_proj.weight.grad.double().numpy().copy())
    return [np.stack(g) for g in per_k], [np.stack(g) for g in per_v]


def assert_close(got, ref, dtype):
    got = got.numpy() if isinstance(got, torch.Tensor) else got
    scale = np.abs(ref).max()
    np.testing.assert_allclose(got, ref, rtol=RTOL[dtype], atol=RTOL[dtype] * scale)


# ------------------------------------------------------------------------------------- calibration_tokens

def test_windows_are_seeded_slices_of_the_text(rng):
    text = EMMA.read_text(encoding="utf-8")
    stream = list(text.encode("utf-8"))
    n, t = int(rng.integers(1, 40)), int(rng.choice([1, 7, 19, 127, 4097]))
    seed = int(rng.integers(0, 2**63))
    out = calibration_tokens(ByteTokenizer(), text, n, t, seed=seed)
    assert_windows_of(stream, out, n, t)
    assert torch.equal(out, calibration_tokens(ByteTokenizer(), text, n, t, seed=seed))
    # 64 windows of 7 bytes from ~20 KB: two seeds agreeing on all of them is a ~1e-200 event.
    a = calibration_tokens(ByteTokenizer(), text, 64, 7, seed=seed)
    b = calibration_tokens(ByteTokenizer(), text, 64, 7, seed=seed ^ 1)
    assert not torch.equal(a, b)
    offsets = assert_windows_of(stream, a, 64, 7)
    assert offsets.max() - offsets.min() > len(stream) // 4  # offsets spread over the text


def test_window_as_long_as_the_text(rng):
    text = "".join(chr(c) for c in rng.integers(97, 123, size=19))
    out = calibration_tokens(ByteTokenizer(), text, 3, 19, seed=int(rng.integers(0, 1000)))
    assert torch.equal(out, torch.tensor([list(text.encode())] * 3))


def test_all_sources_give_the_same_windows(rng, tmp_path, monkeypatch):
    parts = ["Emma Woodhouse, handsome, clever, and rich.", "Ünïcödé — text, read as UTF-8.", "Third part."]
    joined = "\n\n".join(parts)
    path = tmp_path / "calib.txt"
    path.write_text(joined, encoding="utf-8")
    seed = int(rng.integers(0, 2**32))
    expected = calibration_tokens(ByteTokenizer(), joined, 5, 11, seed=seed)
    assert_windows_of(list(joined.encode("utf-8")), expected, 5, 11)
    monkeypatch.chdir(tmp_path)
    dataset = FakeDataset({"text": parts, "id": [1, 2, 3]})
    for source in (parts, tuple(parts), path, str(path), "calib.txt", dataset):
        assert torch.equal(calibration_tokens(ByteTokenizer(), source, 5, 11, seed=seed), expected), source


def test_tokenizes_the_whole_text_once(rng):
    tok = ByteTokenizer()
    calibration_tokens(tok, ["a" * 50, "b" * 50], int(rng.integers(1, 9)), 10)
    assert tok.calls == 1


def fake_datasets_module(monkeypatch, load):
    module = types.ModuleType("datasets")
    module.load_dataset = load
    monkeypatch.setitem(sys.modules, "datasets", module)


@pytest.mark.parametrize("name", ["wikitext2", "wikitext", "WikiText2"])
def test_wikitext_through_datasets(monkeypatch, rng, name):
    calls = []
    rows = ["", " = Valkyria Chronicles III = ", "", " Senjō no Valkyria 3 : Unrecorded Chronicles ..."]

    def load(*args, **kwargs):
        calls.append((args, kwargs))
        return FakeDataset({"text": rows})

    fake_datasets_module(monkeypatch, load)
    seed = int(rng.integers(0, 1000))
    out = calibration_tokens(ByteTokenizer(), name, 4, 9, seed=seed)
    assert calls == [(("wikitext", "wikitext-2-raw-v1"), {"split": "train"})]
    assert torch.equal(out, calibration_tokens(ByteTokenizer(), "\n\n".join(rows), 4, 9, seed=seed))


def test_wikitext_without_datasets_or_network(monkeypatch):
    monkeypatch.setitem(sys.modules, "datasets", None)  # import datasets -> ImportError
    with pytest.raises(ImportError, match="pass local text"):
        calibration_tokens(ByteTokenizer(), "wikitext2", 1, 8)

    def offline(*args, **kwargs):
        raise ConnectionError("no network")

    fake_datasets_module(monkeypatch, offline)
    with pytest.raises(RuntimeError, match="no network.*pass local text"):
        calibration_tokens(ByteTokenizer(), "wikitext", 1, 8)


@pytest.mark.parametrize(
    "source, n, t, exc, match",
    [
        ("short text", 1, 11, ValueError, "has 10 tokens but one window needs seq_len=11"),
        ("some text", 0, 2, ValueError, "n_samples must be >= 1"),
        ("some text", 1, 0, ValueError, "seq_len must be >= 1"),
        ("some text", 1.0, 2, TypeError, "n_samples must be an int"),
        ("some text", 1, True, TypeError, "seq_len must be an int"),
        ("  \n\n ", 1, 1, ValueError, "empty"),
        ([], 1, 1, ValueError, "empty"),
        (["a", 3], 1, 1, TypeError, r"texts_or_dataset\[1\]"),
        (b"bytes", 1, 1, TypeError, "texts_or_dataset must be"),
        (5, 1, 1, TypeError, "texts_or_dataset must be"),
        ("no_such_file.txt", 1, 1, FileNotFoundError, "no_such_file.txt"),
        (Path("/nonexistent/corpus.md"), 1, 1, FileNotFoundError, "corpus.md"),
        (FakeDataset({"content": ["x"]}), 1, 1, ValueError, "no 'text' column"),
        (FakeDataset({"text": ["x", None]}), 1, 1, TypeError, "row 1"),
    ],
)
def test_calibration_tokens_errors(source, n, t, exc, match):
    with pytest.raises(exc, match=match):
        calibration_tokens(ByteTokenizer(), source, n, t)


def test_calibration_tokens_rejects_bad_seed_tokenizer_and_dataset_dict():
    with pytest.raises(ValueError, match="seed must be in"):
        calibration_tokens(ByteTokenizer(), "some text", 1, 2, seed=-1)
    with pytest.raises(TypeError, match="seed must be an int"):
        calibration_tokens(ByteTokenizer(), "some text", 1, 2, seed="0")
    with pytest.raises(TypeError, match="tokenizer must be callable"):
        calibration_tokens(None, "some text", 1, 2)
    with pytest.raises(TypeError, match="input_ids"):
        calibration_tokens(lambda text, **kw: {"ids": [1, 2]}, "some text", 1, 2)
    dataset_dict = FakeDataset({})
    dataset_dict.column_names = {"train": ["text"], "test": ["text"]}
    with pytest.raises(TypeError, match=r"pass one split"):
        calibration_tokens(ByteTokenizer(), dataset_dict, 1, 2)


@pytest.fixture(scope="module")
def smollm2_tokenizer():
    from transformers import AutoTokenizer

    from palu_c.models import embedded_model_path

    pytest.importorskip("gguf")
    try:
        path = embedded_model_path()
    except FileNotFoundError as exc:
        pytest.skip(str(exc))
    return AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)


@pytest.mark.model
def test_emma_with_the_smollm2_tokenizer(smollm2_tokenizer, rng):
    text = EMMA.read_text(encoding="utf-8")
    stream = smollm2_tokenizer(text, add_special_tokens=False)["input_ids"]
    n, t = int(rng.integers(1, 17)), int(rng.choice([7, 19, 127, 1024]))
    seed = int(rng.integers(0, 2**31))
    out = calibration_tokens(smollm2_tokenizer, EMMA, n, t, seed=seed)
    assert_windows_of(stream, out, n, t)
    assert int(out.max()) < len(smollm2_tokenizer)
    assert torch.equal(out, calibration_tokens(smollm2_tokenizer, str(EMMA), n, t, seed=seed))
    assert calibration_tokens(smollm2_tokenizer, text, 2, len(stream)).shape == (2, len(stream))
    with pytest.raises(ValueError, match=f"has {len(stream)} tokens"):
        calibration_tokens(smollm2_tokenizer, text, 1, len(stream) + 1)


# ---------------------------------------------------------------------------------- collect_kv_statistics

MODEL_CASES = [  # (family, kv_heads, head_dim, layers)
    ("llama", 2, 16, 2),
    ("mistral", 4, 32, 3),
    ("qwen2", 2, 32, 2),
    ("qwen2", 4, 16, 3),
]


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("family, kv_heads, head_dim, layers", MODEL_CASES)
def test_statistics_match_the_references(rng, family, kv_heads, head_dim, layers, dtype):
    model = tiny_model(family, kv_heads=kv_heads, head_dim=head_dim, layers=layers,
                       seed=int(rng.integers(0, 2**31)), dtype=dtype)
    n, t = int(rng.choice([1, 3, 5])), int(rng.choice([2, 7, 19]))
    calib = tiny_calib(rng, n, t)
    batch_size = int(rng.integers(1, n + 2))  # includes a last, partial batch and batch > n
    stats = collect_kv_statistics(model, calib, batch_size=batch_size, progress=False)
    assert stats.num_layers == layers and stats.n_tokens == n * t and stats.n_fisher_samples == n
    assert stats.in_features == model.config.hidden_size
    for got, ref in zip(stats.gram, ref_grams(model, calib)):
        assert got.dtype == torch.float64 and got.device.type == "cpu"
        assert_close(got, ref, dtype)
    per_k, per_v = ref_per_sample_grads(model, calib)
    for i in range(layers):
        assert stats.fisher_k_rows[i].shape == (kv_heads * head_dim,)
        assert_close(stats.fisher_k_rows[i], (per_k[i] ** 2).sum(axis=(0, 2)), dtype)
        assert_close(stats.fisher_v_rows[i], (per_v[i] ** 2).sum(axis=(0, 2)), dtype)


def test_fisher_blocks_is_palu_importance(rng):
    kv_heads, head_dim = 4, 16
    model = tiny_model("llama", kv_heads=kv_heads, head_dim=head_dim, layers=2,
                       seed=int(rng.integers(0, 2**31)), dtype=torch.float64)
    calib = tiny_calib(rng, 3, 7)
    stats = collect_kv_statistics(model, calib, grams=False, batch_size=2, progress=False)
    assert stats.gram is None and stats.n_tokens == 0
    per_k, per_v = ref_per_sample_grads(model, calib)
    for layer in range(2):
        for group_rows in (1, head_dim, 2 * head_dim, kv_heads * head_dim):
            k_blocks, v_blocks = stats.fisher_blocks(layer, group_rows)
            for got, grads in ((k_blocks, per_k[layer]), (v_blocks, per_v[layer])):
                n_blocks = kv_heads * head_dim // group_rows
                ref = [np.sqrt(np.mean(grads[:, j * group_rows:(j + 1) * group_rows, :] ** 2))
                       for j in range(n_blocks)]
                assert got.shape == (n_blocks,) and got.dtype == torch.float64
                assert_close(got, np.array(ref), torch.float64)
    for layer, group_rows, exc, match in [(2, 16, ValueError, "layer must be in"), (-1, 16, ValueError, "layer"),
                                          (0, 0, ValueError, "group_rows=0"), (0, 24, ValueError, "divide"),
                                          (0, True, TypeError, "group_rows must be an int"),
                                          (0.0, 16, TypeError, "layer must be an int")]:
        with pytest.raises(exc, match=match):
            stats.fisher_blocks(layer, group_rows)
    grams_only = collect_kv_statistics(model, calib, fisher=False, progress=False)
    assert grams_only.fisher_k_rows is None and grams_only.n_fisher_samples == 0
    with pytest.raises(ValueError, match="fisher=False"):
        grams_only.fisher_blocks(0, 16)


def count_forwards(model):
    counter = {"calls": 0}

    def hook(_module, _args):
        counter["calls"] += 1

    model.model.layers[0].self_attn.k_proj.register_forward_pre_hook(hook)
    return counter


def test_grams_only_runs_no_backward_and_matches(rng):
    model = tiny_model("qwen2", layers=2, seed=int(rng.integers(0, 2**31)), dtype=torch.float64)
    calib = tiny_calib(rng, 4, 19)
    counter = count_forwards(model)
    stats = collect_kv_statistics(model, calib, fisher=False, batch_size=3, progress=False)
    assert counter["calls"] == 2  # two batches, one forward each
    for got, ref in zip(stats.gram, ref_grams(model, calib)):
        assert_close(got, ref, torch.float64)
    with pytest.raises(ValueError, match="nothing to collect"):
        collect_kv_statistics(model, calib, grams=False, fisher=False)


def test_progress_bar_silenced(rng, capsys):
    model = tiny_model("llama", layers=2, seed=int(rng.integers(0, 2**31)))
    calib = tiny_calib(rng, 2, 7)
    capsys.readouterr()
    collect_kv_statistics(model, calib, progress=False)
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err == ""
    collect_kv_statistics(model, calib, progress=True)
    assert "KV statistics" in capsys.readouterr().err


def model_state(model):
    return ([p.requires_grad for p in model.parameters()], [m.training for m in model.modules()],
            [p.grad is None for p in model.parameters()])


def no_hooks_left(model):
    return all(not m._forward_pre_hooks and not m._forward_hooks for m in model.modules())


def test_model_state_restored_also_on_error(rng):
    model = tiny_model("mistral", layers=3, seed=int(rng.integers(0, 2**31)))
    calib = tiny_calib(rng, 3, 7)
    # An unusual starting state: mixed train/eval modules and requires_grad flags.
    model.train()
    model.model.layers[1].eval()
    for i, p in enumerate(model.parameters()):
        p.requires_grad_(bool(i % 3))
    before = model_state(model)
    with torch.no_grad():  # the Fisher pass must enable gradients itself
        stats = collect_kv_statistics(model, calib, progress=False)
    assert stats.fisher_k_rows[0].abs().sum() > 0
    assert model_state(model) == before and no_hooks_left(model)
    with torch.inference_mode():  # also under inference mode, with calib an inference tensor
        again = collect_kv_statistics(model, calib.clone(), progress=False)
    for a, b in zip(stats.gram + stats.fisher_k_rows, again.gram + again.fisher_k_rows):
        assert torch.equal(a, b)  # same computation on the same data: bit-identical
    assert model_state(model) == before and no_hooks_left(model)

    def boom(*args, **kwargs):
        raise RuntimeError("boom in layer 2")

    model.model.layers[2].mlp.forward = boom
    for kwargs in ({}, {"fisher": False}):
        with pytest.raises(RuntimeError, match="boom in layer 2"):
            collect_kv_statistics(model, calib, progress=False, **kwargs)
        assert model_state(model) == before and no_hooks_left(model)


def test_train_mode_model_is_measured_in_eval_mode(rng):
    """A model left in train mode is measured in eval mode (dropout off), so results equal the eval reference."""
    model = tiny_model("llama", layers=2, seed=int(rng.integers(0, 2**31)), dtype=torch.float64)
    model.config.attention_dropout = 0.5
    for layer in model.model.layers:
        layer.self_attn.attention_dropout = 0.5
    calib = tiny_calib(rng, 2, 7)
    model.train()
    stats = collect_kv_statistics(model, calib, grams=False, progress=False, device="cpu")
    assert model.training
    model.eval()
    per_k, _ = ref_per_sample_grads(model, calib)
    assert_close(stats.fisher_k_rows[1], (per_k[1] ** 2).sum(axis=(0, 2)), torch.float64)


def cache_files(path):
    return sorted(os.listdir(path))


def test_cache_hit_miss_and_keys(rng, tmp_path):
    model = tiny_model("qwen2", layers=2, seed=int(rng.integers(0, 2**31)))
    calib = tiny_calib(rng, 3, 7)
    counter = count_forwards(model)
    first = collect_kv_statistics(model, calib, progress=False, cache_dir=tmp_path)
    runs = counter["calls"]
    assert runs == 3 and len(cache_files(tmp_path)) == 1
    assert cache_files(tmp_path)[0] == f"kv_stats-{first.cache_key}.pt"
    second = collect_kv_statistics(model, calib, progress=False, cache_dir=tmp_path)
    assert counter["calls"] == runs  # loaded, the model did not run
    for a, b in zip(first.gram + first.fisher_k_rows + first.fisher_v_rows,
                    second.gram + second.fisher_k_rows + second.fisher_v_rows):
        assert torch.equal(a, b)
    assert (second.n_tokens, second.n_fisher_samples, second.cache_key) == \
        (first.n_tokens, first.n_fisher_samples, first.cache_key)

    changed_calib = calib.clone()
    changed_calib[2, 6] = (changed_calib[2, 6] + 1) % TINY_VOCAB
    other = collect_kv_statistics(model, changed_calib, progress=False, cache_dir=tmp_path)
    assert other.cache_key != first.cache_key and counter["calls"] > runs
    grams_only = collect_kv_statistics(model, calib, fisher=False, progress=False, cache_dir=tmp_path)
    assert grams_only.cache_key not in (first.cache_key, other.cache_key)
    with torch.no_grad():
        model.lm_head.weight[5, 3] += 1e-3  # a weight no K/V statistic reads directly still changes the key
    changed = collect_kv_statistics(model, calib, progress=False, cache_dir=tmp_path)
    assert changed.cache_key not in (first.cache_key, other.cache_key, grams_only.cache_key)
    assert len(cache_files(tmp_path)) == 4  # no temporary files left behind


def test_cache_dir_from_environment(rng, tmp_path, monkeypatch):
    model = tiny_model("llama", layers=2, seed=int(rng.integers(0, 2**31)))
    calib = tiny_calib(rng, 2, 7)
    monkeypatch.setenv("PALU_C_CACHE_DIR", str(tmp_path / "env_cache"))
    stats = collect_kv_statistics(model, calib, progress=False)
    assert cache_files(tmp_path / "env_cache") == [f"kv_stats-{stats.cache_key}.pt"]
    monkeypatch.setenv("PALU_C_CACHE_DIR", "")
    assert collect_kv_statistics(model, calib, progress=False).cache_key is None


@pytest.mark.parametrize("damage", ["garbage", "truncated", "foreign", "wrong_shape"])
def test_corrupt_cache_warns_and_recomputes(rng, tmp_path, damage):
    model = tiny_model("llama", layers=2, seed=int(rng.integers(0, 2**31)))
    calib = tiny_calib(rng, 2, 7)
    fresh = collect_kv_statistics(model, calib, progress=False, cache_dir=tmp_path)
    path = tmp_path / f"kv_stats-{fresh.cache_key}.pt"
    if damage == "garbage":
        path.write_bytes(rng.bytes(300))
    elif damage == "truncated":
        path.write_bytes(path.read_bytes()[:200])
    elif damage == "foreign":
        torch.save({"format": "something else"}, path)
    else:
        data = torch.load(path, weights_only=True)
        data["gram"][1] = torch.zeros(3, 3, dtype=torch.float64)
        torch.save(data, path)
    counter = count_forwards(model)
    with pytest.warns(StatisticsCacheWarning, match="recomputing"):
        again = collect_kv_statistics(model, calib, progress=False, cache_dir=tmp_path)
    assert counter["calls"] == 2
    for a, b in zip(fresh.gram + fresh.fisher_v_rows, again.gram + again.fisher_v_rows):
        assert torch.equal(a, b)
    collect_kv_statistics(model, calib, progress=False, cache_dir=tmp_path)
    assert counter["calls"] == 2  # the rewritten file is good


def test_unwritable_cache_dir_warns_but_returns(rng, tmp_path):
    model = tiny_model("llama", layers=2, seed=int(rng.integers(0, 2**31)))
    blocker = tmp_path / "a_file"
    blocker.write_text("not a directory")
    with pytest.warns(StatisticsCacheWarning, match="could not write"):
        stats = collect_kv_statistics(model, tiny_calib(rng, 1, 5), progress=False, cache_dir=blocker / "sub")
    assert isinstance(stats, KVStatistics) and stats.gram[0].shape == (64, 64)


def test_collect_kv_statistics_errors(rng):
    model = tiny_model("llama", layers=2, seed=int(rng.integers(0, 2**31)))
    good = tiny_calib(rng, 2, 7)
    cases = [
        (dict(calib=good.numpy()), TypeError, "calib must be a torch.LongTensor"),
        (dict(calib=good.int()), TypeError, r"calib\.long\(\)"),
        (dict(calib=good.float()), TypeError, "int64"),
        (dict(calib=good[0]), ValueError, "2-D"),
        (dict(calib=good[:, :1]), ValueError, "seq_len >= 2"),
        (dict(calib=good[:0]), ValueError, "n_samples >= 1"),
        (dict(calib=good + TINY_VOCAB), ValueError, r"\[0, 128\)"),
        (dict(calib=good - TINY_VOCAB), ValueError, r"\[0, 128\)"),
        (dict(batch_size=0), ValueError, "batch_size must be >= 1"),
        (dict(batch_size=2.0), TypeError, "batch_size must be an int"),
        (dict(grams=1), TypeError, "grams must be a bool"),
        (dict(progress=None), TypeError, "progress must be a bool"),
        (dict(cache_dir=5), TypeError, "cache_dir"),
        (dict(device="no_such_device"), ValueError, "not a torch device"),
    ]
    for overrides, exc, match in cases:
        kwargs = dict(calib=good, progress=False)
        kwargs.update(overrides)
        with pytest.raises(exc, match=match):
            collect_kv_statistics(model, **kwargs)

    class NoKV(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.model = torch.nn.Module()
            self.model.layers = torch.nn.ModuleList([torch.nn.Linear(4, 4)])

    for bad in (torch.nn.Linear(4, 4), NoKV(), "llama"):
        with pytest.raises(TypeError, match="llama, mistral, qwen2"):
            collect_kv_statistics(bad, good, progress=False)
