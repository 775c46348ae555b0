"""``hf:PATH``: a Hugging Face causal language model with LoRA adapters, fine-tuned federatedly.

The base model and its tokenizer are read with ``transformers`` from a local
directory in the Hugging Face format (``save_pretrained``), never downloaded:
compute nodes usually have no internet. ``peft`` adds LoRA adapters and
freezes the rest, so the federated flat vector (:class:`~fedhpc.models.Layout`,
which takes only trainable parameters) is exactly the adapters: that is what
is broadcast, trained, compressed, averaged and checkpointed, while the frozen
base is identified by its digest (:attr:`fedhpc.models.Layout.base`).
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

import torch
from torch import nn

from fedhpc.errors import ConfigError


def _prepare_libraries() -> None:
    """Check that transformers and peft are there, and keep them from reporting on stderr from
    every rank (progress bars, deprecations)."""
    try:
        import peft  # noqa: F401
        import transformers
    except ImportError as exc:
        raise ConfigError(f"language models (model.name = 'hf:...', data.name = 'text') need transformers and peft "
                          f"({exc}): pip install 'fedhpc[llm]'") from None

    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    logging.getLogger("peft").setLevel(logging.ERROR)


def load_tokenizer(path: str):
    """The tokenizer saved in ``path`` (``tokenizer.json`` or the files of a slow tokenizer)."""
    _prepare_libraries()
    from transformers import AutoTokenizer

    root = Path(path).expanduser()
    if not root.is_dir():
        raise ConfigError(f"tokenizer directory '{root}' does not exist; it is the model's directory unless "
                          f"data.tokenizer says otherwise")
    try:
        return AutoTokenizer.from_pretrained(str(root), local_files_only=True)
    except (OSError, ValueError, TypeError) as exc:
        raise ConfigError(f"no tokenizer in '{root}' ({type(exc).__name__}: {str(exc).splitlines()[0]}); save one "
                          f"there with tokenizer.save_pretrained('{root}')") from None


class CausalLM(nn.Module):
    """A causal language model as fedhpc trains it: (batch, T) token ids in, (batch, vocab, T)
    next-token logits out, the layout ``CrossEntropyLoss`` takes for a sequence, so the local
    trainer and the evaluation need nothing of their own for it."""

    def __init__(self, lm: nn.Module):
        super().__init__()
        self.lm = lm

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lm(input_ids=x.long()).logits.transpose(1, 2)


def load_causal_lm(path: str, lora, vocab: int) -> CausalLM:
    """The model in ``path`` with LoRA adapters of ``lora`` (a :class:`~fedhpc.config.LoraConfig`);
    everything but the adapters is frozen. ``vocab``: the data's tokenizer size, which the model
    must cover. Raises ConfigError naming the path or the key."""
    _prepare_libraries()
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    root = Path(path).expanduser()
    if not (root / "config.json").is_file():
        raise ConfigError(f"model.name 'hf:{path}': '{root}' is not a Hugging Face model directory (no config.json); "
                          f"save one there with model.save_pretrained (see the README: language models)")
    try:
        base = AutoModelForCausalLM.from_pretrained(str(root), local_files_only=True, dtype=torch.float32)
    except (OSError, ValueError, KeyError) as exc:
        raise ConfigError(f"model.name 'hf:{path}': transformers cannot load a causal language model from '{root}' "
                          f"({type(exc).__name__}: {str(exc).splitlines()[0]})") from None
    if vocab > base.config.vocab_size:
        raise ConfigError(f"model.name 'hf:{path}' predicts {base.config.vocab_size} tokens, but the data's tokenizer "
                          f"has {vocab}: use the model's own tokenizer (data.tokenizer)")
    config = LoraConfig(r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
                        target_modules=list(lora.target_modules) or None, bias="none")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            model = get_peft_model(base, config)
    except ValueError as exc:  # target modules not found, or no default for this model type
        raise ConfigError(f"config key 'lora.target_modules' ({list(lora.target_modules) or 'the default'}) does not "
                          f"fit the model in '{root}' ({base.config.model_type}): {str(exc).splitlines()[0]}; name "
                          f"modules it has, e.g. {sorted(_linear_names(base))[:6]}") from None
    return CausalLM(model)


def _linear_names(module: nn.Module) -> set[str]:
    """The last name part of every linear layer: what ``target_modules`` may name."""
    return {name.rsplit(".", 1)[-1] for name, m in module.named_modules() if isinstance(m, nn.Linear)}


def train_tokenizer(texts, vocab_size: int):
    """A byte-level BPE tokenizer trained on ``texts`` (an iterable of strings), with ``<unk>``,
    ``<s>`` and ``</s>``: what a base model built offline needs (``save_pretrained`` it next to the
    model). Byte-level, so it encodes any text without unknown tokens."""
    _prepare_libraries()
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(texts, trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<unk>", "<s>", "</s>"],
                                                       initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                                       show_progress=False))
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", bos_token="<s>", eos_token="</s>")
