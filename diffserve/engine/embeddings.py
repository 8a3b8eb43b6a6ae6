"""Textual-inversion embeddings per request: `embeddings_model` (an id from the registry).

The embedding's token (the entry's `token`, default its id) becomes a word of the prompt and
negative prompt for that request. diffusers' `load_textual_inversion` reads the file (A1111
.pt/.safetensors, diffusers learned_embeds) the first time, into a copy of the tokenizer and a
scratch embedding table; what it added (the tokenizer copy, the new rows) is cached in the
pipeline's state. Each request using it swaps in the tokenizer copy and a token table with the
new rows appended, and puts the originals back on exit: the pipeline's own tokenizer and table
are never modified, so requests without the embedding run exactly as if it was never loaded.
"""

from __future__ import annotations

import copy
from collections import OrderedDict
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from ..core.errors import InvalidInput
from .asset_entries import EmbeddingEntry
from .asset_files import asset_root, inside
from .loading import _PASS_THROUGH, _reason

if TYPE_CHECKING:
    from .controls import ControlContext
    from .families.base import RunInputs

FIELD = "embeddings_model"
MAX_CACHED = 16  # embeddings kept per pipeline (a tokenizer copy and a few rows each)
_STATE = "embeddings"


@dataclass
class _Embedding:
    entry: EmbeddingEntry
    tokenizer: Any  # a copy of the pipeline's tokenizer with the embedding's token(s) added
    rows: torch.Tensor  # the token table rows for those tokens, in id order after the original table


@contextmanager
def use_embedding(pipe: Any, inputs: RunInputs, ctx: ControlContext) -> Iterator[None]:
    embedding_id = inputs.request.embeddings_model
    if not embedding_id:
        yield
        return
    tokenizer = getattr(pipe, "tokenizer", None)
    text_encoder = getattr(pipe, "text_encoder", None)
    if tokenizer is None or text_encoder is None or not hasattr(pipe, "load_textual_inversion"):
        raise InvalidInput(f"{FIELD}: model {ctx.model_id} does not take textual-inversion embeddings", field=FIELD)
    loaded = _loaded(pipe, ctx, embedding_id, tokenizer, text_encoder)
    table = text_encoder.get_input_embeddings()
    vocab_size = text_encoder.config.vocab_size
    extended = _table(torch.cat([table.weight, loaded.rows.to(table.weight.device, table.weight.dtype)]), table)
    try:
        text_encoder.set_input_embeddings(extended)
        text_encoder.config.vocab_size = extended.num_embeddings
        pipe.tokenizer = loaded.tokenizer
        yield
    finally:
        pipe.tokenizer = tokenizer
        text_encoder.set_input_embeddings(table)
        text_encoder.config.vocab_size = vocab_size


def _loaded(pipe: Any, ctx: ControlContext, embedding_id: str, tokenizer: Any, text_encoder: Any) -> _Embedding:
    entry = ctx.registry.asset("embeddings", embedding_id)
    cache: OrderedDict[str, _Embedding] = ctx.state.setdefault(_STATE, OrderedDict())
    known = cache.get(embedding_id)
    if known is not None and known.entry == entry:
        cache.move_to_end(embedding_id)
        return known
    cache.pop(embedding_id, None)
    while len(cache) >= MAX_CACHED:
        cache.popitem(last=False)
    loaded = _load(pipe, entry, embedding_id, tokenizer, text_encoder)
    cache[embedding_id] = loaded
    return loaded


def _load(pipe: Any, entry: EmbeddingEntry, embedding_id: str, tokenizer: Any, text_encoder: Any) -> _Embedding:
    weights = inside(entry.subfolder, entry.weight_name) if entry.weight_name else None
    root = asset_root(entry, field=FIELD, name=f"embedding {embedding_id}", needs=[weights] if weights else [],
                      patterns=[weights] if weights else [inside(entry.subfolder, "*")])
    table = text_encoder.get_input_embeddings()
    vocab_size = text_encoder.config.vocab_size
    tokenizer_copy = copy.deepcopy(tokenizer)
    try:
        # diffusers resizes the text encoder's table: let it resize a scratch table, not the real one.
        text_encoder.set_input_embeddings(_table(table.weight.detach(), table))
        kwargs: dict[str, Any] = {"token": entry.token or embedding_id, "tokenizer": tokenizer_copy,
                                  "text_encoder": text_encoder}
        if entry.kind == "file":
            pipe.load_textual_inversion(str(root), **kwargs)
        else:
            folder = root / entry.subfolder if entry.subfolder else root
            pipe.load_textual_inversion(str(folder), weight_name=entry.weight_name, local_files_only=True, **kwargs)
        rows = text_encoder.get_input_embeddings().weight[table.num_embeddings:].detach().clone()
    except _PASS_THROUGH:
        raise
    except Exception as exc:  # noqa: BLE001 - an embedding that does not load is the request's problem
        raise InvalidInput(f"{FIELD}: could not load embedding {embedding_id}: {_reason(exc)}", field=FIELD) from exc
    finally:
        text_encoder.set_input_embeddings(table)
        text_encoder.config.vocab_size = vocab_size
    return _Embedding(entry, tokenizer_copy, rows)


def _table(weight: torch.Tensor, like: torch.nn.Embedding) -> torch.nn.Embedding:
    """A token table holding `weight`, configured like `like`."""
    return torch.nn.Embedding.from_pretrained(weight, freeze=True, padding_idx=like.padding_idx,
                                              max_norm=like.max_norm, norm_type=like.norm_type,
                                              scale_grad_by_freq=like.scale_grad_by_freq, sparse=like.sparse)
