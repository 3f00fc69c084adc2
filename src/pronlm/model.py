"""Loading Phi-4-multimodal (real or tiny), control tokens, adapters, quantisation, parameter checks."""

from __future__ import annotations

import logging

from pronlm.prompts import CONTROL_TOKENS

log = logging.getLogger(__name__)


def add_control_tokens(tokenizer, model=None) -> dict[str, int]:
    """Add `<|APA|>` / `<|MDD|>` as special tokens and return {task: id}.

    Phi-4's embedding has spare rows above the tokenizer's last id (200,064 rows), so the new ids
    normally fit; when they do not, the embedding is resized to a multiple of 64.
    """
    missing = [t for t in CONTROL_TOKENS.values() if t not in tokenizer.get_vocab()]
    if missing:
        tokenizer.add_special_tokens({"additional_special_tokens": missing}, replace_extra_special_tokens=False)
    ids = {task: tokenizer.convert_tokens_to_ids(tok) for task, tok in CONTROL_TOKENS.items()}
    if model is not None:
        rows = model.get_input_embeddings().weight.shape[0]
        if max(ids.values()) >= rows:
            log.warning("control token ids %s exceed the %d embedding rows: resizing", ids, rows)
            model.resize_token_embeddings(len(tokenizer), pad_to_multiple_of=64)
        assert max(ids.values()) < model.get_input_embeddings().weight.shape[0]
    return ids
