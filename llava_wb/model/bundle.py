"""One self-describing folder per model: weights (safetensors), ``config.json`` and the tokenizer.

``save_bundle(model, tokenizer, dir)`` writes all three; ``load_bundle(dir)`` reads them back and
checks that the tokenizer's image token is the one the model was built with, so a model can never
silently run with a tokenizer whose placeholder ids differ. Only local folders are read.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from llava_wb.data.conversation import special_token_id
from llava_wb.model.llava import LlavaWBForCausalLM

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase


def save_bundle(model: LlavaWBForCausalLM, tokenizer: PreTrainedTokenizerBase, directory: str | Path) -> Path:
    """Save model and tokenizer into ``directory`` (created); returns its path."""
    path = Path(directory)
    path.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def load_bundle(
    directory: str | Path, image_token: str = "<image>", **model_kwargs: Any
) -> tuple[LlavaWBForCausalLM, PreTrainedTokenizerBase]:
    """Load ``(model, tokenizer)`` saved by ``save_bundle``; ``model_kwargs`` go to
    ``from_pretrained`` (e.g. ``dtype``, ``attn_implementation``)."""
    from transformers import AutoTokenizer

    path = Path(directory)
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"{path} holds no config.json: not a saved model bundle")
    tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
    model = LlavaWBForCausalLM.from_pretrained(path, local_files_only=True, **model_kwargs)
    token_id = special_token_id(tokenizer, image_token)
    if token_id != model.config.image_token_id:
        raise ValueError(
            f"tokenizer maps {image_token!r} to id {token_id} but the model was built with image_token_id "
            f"{model.config.image_token_id}"
        )
    return model, tokenizer
