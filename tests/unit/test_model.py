import hashlib
import json

from slotune.model import TinyModelSpec, build_tiny_model


def _digest(path):
    return hashlib.sha256((path / "model.safetensors").read_bytes()).hexdigest()


def test_same_seed_same_model_and_cached(tmp_path):
    a = build_tiny_model(tmp_path / "a")
    b = build_tiny_model(tmp_path / "b")
    assert _digest(a) == _digest(b)
    assert (a / "tokenizer.json").read_text() == (b / "tokenizer.json").read_text()
    mtime = (a / "model.safetensors").stat().st_mtime_ns
    assert build_tiny_model(tmp_path / "a") == a
    assert (a / "model.safetensors").stat().st_mtime_ns == mtime  # reused, not rebuilt
    assert sum(f.stat().st_size for f in a.iterdir()) < 1_000_000
    cfg = json.loads((a / "config.json").read_text())
    assert cfg["hidden_size"] // cfg["num_attention_heads"] in (32, 64)  # vLLM CPU attention needs it


def test_other_seed_other_weights(tmp_path):
    a = build_tiny_model(tmp_path / "a")
    c = build_tiny_model(tmp_path / "c", TinyModelSpec(seed=1))
    assert _digest(a) != _digest(c)
