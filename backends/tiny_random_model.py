"""The embedded default model: a tiny causal LM built on this machine, so a fresh clone trains with no download.

It is a randomly initialised Llama-architecture model over a byte-level tokenizer (256 byte tokens plus
ChatML special tokens). Byte-level means any text round-trips, and one character is one token, which makes the
`toy` env's reward (share of a target character) directly learnable. The directory it writes is an ordinary
Hugging Face model directory, so everything downstream (`AutoTokenizer`, `AutoModelForCausalLM`, ART's
tokenisation, peft) treats it like any hub model.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
# Reserved tokens never occur in text; they sit at the top of the vocabulary, which is where ART's
# tokenisation looks for a sentinel token that must survive decode -> encode unchanged.
# The LoRA targets for this model: every linear layer plus the output head. With a randomly initialised body,
# only an adapted head lets the policy become confident (a LoRA on the body alone plateaued close to where the
# toy target's share started: after the final RMSNorm the small random head bounds how peaked the output can be).
LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj", "lm_head"]
SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"] + [f"<|reserved_{i}|>" for i in range(5)]


@dataclass(frozen=True)
class TinyModelSpec:
    """Shape of the embedded model; part of the directory name so a changed spec never reuses a stale build."""

    hidden_size: int = 64
    num_layers: int = 2
    num_heads: int = 4
    intermediate_size: int = 128
    max_position_embeddings: int = 2048
    initializer_range: float = 0.02
    seed: int = 0

    def dirname(self) -> str:
        return (
            f"tiny-llama-h{self.hidden_size}-l{self.num_layers}-a{self.num_heads}"
            f"-i{self.intermediate_size}-p{self.max_position_embeddings}-r{self.initializer_range}-s{self.seed}"
        )


def build_tokenizer():
    """A byte-level BPE with no merges: every byte is a token, nothing is downloaded."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    alphabet = pre_tokenizers.ByteLevel.alphabet()
    vocab = {ch: i for i, ch in enumerate(sorted(alphabet))}
    for token in SPECIAL_TOKENS:
        vocab[token] = len(vocab)
    core = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    core.decoder = decoders.ByteLevel()
    core.add_special_tokens(SPECIAL_TOKENS)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=core,
        bos_token="<|endoftext|>",
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        unk_token=None,
        additional_special_tokens=SPECIAL_TOKENS[3:],
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def ensure_tiny_model(cache_root: str | os.PathLike[str], spec: TinyModelSpec | None = None) -> str:
    """Build the tiny model under `cache_root` once and return its directory (atomic: a killed build leaves none)."""
    spec = spec or TinyModelSpec()
    target = Path(cache_root) / "base_models" / spec.dirname()
    if (target / "config.json").exists() and (target / "tokenizer.json").exists():
        return str(target)
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    target.parent.mkdir(parents=True, exist_ok=True)
    tokenizer = build_tokenizer()
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=spec.hidden_size,
        intermediate_size=spec.intermediate_size,
        num_hidden_layers=spec.num_layers,
        num_attention_heads=spec.num_heads,
        num_key_value_heads=spec.num_heads,
        max_position_embeddings=spec.max_position_embeddings,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
        initializer_range=spec.initializer_range,
    )
    torch.manual_seed(spec.seed)
    model = LlamaForCausalLM(config)
    tmp = Path(tempfile.mkdtemp(prefix=".build-", dir=target.parent))
    try:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        (tmp / "tiny_model_spec.json").write_text(json.dumps(asdict(spec), indent=2))
        try:
            os.rename(tmp, target)
        except OSError:  # another process finished the same build first
            if not (target / "config.json").exists():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return str(target)
