"""A tiny Llama that vLLM serves: random weights, a locally trained byte-level BPE tokenizer.

No model can be downloaded on an offline machine, yet vLLM needs a real checkpoint to give real
timings and real metrics. This builds one in a few seconds (under 1 MB), deterministic for a seed,
and caches it: a directory that holds a complete build is reused as is.
"""

from __future__ import annotations

import json
import random
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path


# Head size (hidden / heads) must be 32 or 64: vLLM's CPU attention has no kernels for 16.
@dataclass(frozen=True)
class TinyModelSpec:
    hidden_size: int = 128
    num_layers: int = 2
    num_heads: int = 4
    num_kv_heads: int = 2
    intermediate_size: int = 256
    vocab_size: int = 512
    max_position_embeddings: int = 4096
    seed: int = 0


CHAT_TEMPLATE = (
    "{% for message in messages %}<|{{ message['role'] }}|>{{ message['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)
_STAMP = "slotune-tiny-model.json"


def _corpus(seed: int, lines: int = 2000) -> list[str]:
    """English-like text so the tokenizer learns sensible merges; seeded for reproducibility."""
    rng = random.Random(seed)
    words = (
        "the a model server token latency queue cache batch request prompt output first time "
        "throughput memory speculative decode prefill chunk prefix user system assistant answer "
        "question why how what when which fast slow long short high low p95 p99 goodput slo"
    ).split()
    return [" ".join(rng.choice(words) for _ in range(rng.randint(5, 30))) for _ in range(lines)]


def build_tiny_model(out_dir: str | Path, spec: TinyModelSpec = TinyModelSpec(), *, force: bool = False) -> Path:
    """Write the model to `out_dir` (or reuse a complete build with the same spec). Returns the path."""
    out = Path(out_dir)
    stamp = out / _STAMP
    if not force and stamp.exists() and json.loads(stamp.read_text()) == asdict(spec):
        return out

    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    if out.exists():
        shutil.rmtree(out)
    tmp = out.with_name(out.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)

    special = ["<s>", "</s>", "<unk>", "<pad>", "<|system|>", "<|user|>", "<|assistant|>"]
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=spec.vocab_size,
        special_tokens=special,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_corpus(spec.seed), trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>", pad_token="<pad>"
    )
    fast.chat_template = CHAT_TEMPLATE
    fast.model_max_length = spec.max_position_embeddings
    fast.save_pretrained(tmp)

    torch.manual_seed(spec.seed)
    config = LlamaConfig(
        vocab_size=len(fast),
        hidden_size=spec.hidden_size,
        intermediate_size=spec.intermediate_size,
        num_hidden_layers=spec.num_layers,
        num_attention_heads=spec.num_heads,
        num_key_value_heads=spec.num_kv_heads,
        max_position_embeddings=spec.max_position_embeddings,
        bos_token_id=fast.bos_token_id,
        eos_token_id=fast.eos_token_id,
        pad_token_id=fast.pad_token_id,
        tie_word_embeddings=True,
        torch_dtype="bfloat16",
    )
    model = LlamaForCausalLM(config).to(torch.bfloat16)
    model.save_pretrained(tmp, safe_serialization=True)
    (tmp / _STAMP).write_text(json.dumps(asdict(spec)))
    tmp.rename(out)
    return out
