"""Textual-inversion embeddings per request: `embeddings_model` (an id from the registry).

The embedding's token (the entry's `token`, default its id) becomes a word of the prompt and
negative prompt for that request. diffusers' `load_textual_inversion` reads the file (A1111
.pt/.safetensors, diffusers learned_embeds) the first time, into a copy of the tokenizer and a
scratch embedding table; what it added (the tokenizer copy, the new rows) is cached in the
pipeline's state. Each request using it swaps in the tokenizer copy and a token table with the
new rows appended, and puts the originals back on exit: the pipeline's own tokenizer and table
are never modified, so requests without the embedding run exactly as if it was never loaded.

SDXL embeddings hold one tensor per text encoder: `clip_l` (for text_encoder / tokenizer) and
`clip_g` (for text_encoder_2 / tokenizer_2). Each goes into its own tokenizer copy and table, both
swapped in for the request. A pipeline with two CLIP text encoders takes only such files (a
one-encoder embedding would reach half of its prompt encoding), and the others refuse them.
"""

from __future__ import annotations

import copy
from collections import OrderedDict
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from diffserve.core.errors import InvalidInput
from diffserve.engine.models.asset_entries import EmbeddingEntry
from diffserve.engine.models.asset_files import asset_root, inside
from diffserve.engine.models.loading import _PASS_THROUGH, _reason

if TYPE_CHECKING:
    from diffserve.engine.controls.base import ControlContext
    from diffserve.engine.families.base import RunInputs

FIELD = "embeddings_model"
MAX_CACHED = 16  # embeddings kept per pipeline (a tokenizer copy and a few rows each)
_STATE = "embeddings"


# (tokenizer attribute, text encoder attribute, tensor key in an SDXL embedding file), per text encoder
_ENCODERS = (("tokenizer", "text_encoder", "clip_l"), ("tokenizer_2", "text_encoder_2", "clip_g"))
_SDXL_KEYS = ("clip_l", "clip_g")
_LEARNED_EMBEDS = ("learned_embeds.safetensors", "learned_embeds.bin")  # diffusers' names when no weight_name


@dataclass
class _Vectors:
    tokenizer: Any  # a copy of the pipeline's tokenizer with the embedding's token(s) added
    rows: torch.Tensor  # the token table rows for those tokens, in id order after the original table


@dataclass
class _Embedding:
    entry: EmbeddingEntry
    parts: dict[tuple[str, str], _Vectors]  # by (tokenizer attribute, text encoder attribute)


@contextmanager
def use_embedding(pipe: Any, inputs: RunInputs, ctx: ControlContext) -> Iterator[None]:
    embedding_id = inputs.request.embeddings_model
    if not embedding_id:
        yield
        return
    encoders = _clip_encoders(pipe)
    if not encoders or not hasattr(pipe, "load_textual_inversion"):
        raise InvalidInput(f"{FIELD}: model {ctx.model_id} does not take textual-inversion embeddings", field=FIELD)
    loaded = _loaded(pipe, ctx, embedding_id, encoders)
    originals = [(tok, enc, getattr(pipe, tok), getattr(pipe, enc)) for tok, enc in encoders]
    saved = [(enc_model, enc_model.get_input_embeddings(), enc_model.config.vocab_size)
             for _, _, _, enc_model in originals]
    try:
        for tok, enc, _, enc_model in originals:
            vectors = loaded.parts[(tok, enc)]
            table = enc_model.get_input_embeddings()
            extended = _table(torch.cat([table.weight, vectors.rows.to(table.weight.device, table.weight.dtype)]),
                              table)
            enc_model.set_input_embeddings(extended)
            enc_model.config.vocab_size = extended.num_embeddings
            setattr(pipe, tok, vectors.tokenizer)
        yield
    finally:
        for tok, _, tokenizer, _ in originals:
            setattr(pipe, tok, tokenizer)
        for enc_model, table, vocab_size in saved:
            enc_model.set_input_embeddings(table)
            enc_model.config.vocab_size = vocab_size


def _clip_encoders(pipe: Any) -> list[tuple[str, str]]:
    """The (tokenizer, text encoder) attributes an embedding goes into: the first pair, and the second
    where it is CLIP too (SDXL; Flux's second encoder is T5, which takes no embeddings)."""
    found = []
    for tok, enc, _ in _ENCODERS:
        encoder = getattr(pipe, enc, None)
        if getattr(pipe, tok, None) is None or encoder is None:
            break
        if found and not type(encoder).__name__.startswith("CLIPText"):
            break
        found.append((tok, enc))
    return found


def _loaded(pipe: Any, ctx: ControlContext, embedding_id: str, encoders: list[tuple[str, str]]) -> _Embedding:
    entry = ctx.registry.asset("embeddings", embedding_id)
    cache: OrderedDict[str, _Embedding] = ctx.state.setdefault(_STATE, OrderedDict())
    known = cache.get(embedding_id)
    if known is not None and known.entry == entry:
        cache.move_to_end(embedding_id)
        return known
    cache.pop(embedding_id, None)
    while len(cache) >= MAX_CACHED:
        cache.popitem(last=False)
    loaded = _load(pipe, ctx.model_id, entry, embedding_id, encoders)
    cache[embedding_id] = loaded
    return loaded


def _load(pipe: Any, model_id: str, entry: EmbeddingEntry, embedding_id: str,
          encoders: list[tuple[str, str]]) -> _Embedding:
    weights = inside(entry.subfolder, entry.weight_name) if entry.weight_name else None
    root = asset_root(entry, field=FIELD, name=f"embedding {embedding_id}", needs=[weights] if weights else [],
                      patterns=[weights] if weights else [inside(entry.subfolder, "*")])
    state = _read(_weights_file(entry, root, embedding_id), embedding_id)
    sdxl = isinstance(state, dict) and all(key in state for key in _SDXL_KEYS)
    if sdxl and len(encoders) < 2:
        raise InvalidInput(f"{FIELD}: embedding {embedding_id} is an SDXL embedding (clip_l + clip_g); model "
                           f"{model_id} has one CLIP text encoder", field=FIELD)
    if not sdxl and len(encoders) > 1:
        raise InvalidInput(f"{FIELD}: embedding {embedding_id} holds vectors for one text encoder; model "
                           f"{model_id} has two (an SDXL embedding holds clip_l and clip_g)", field=FIELD)
    token = entry.token or embedding_id
    parts = {}
    for (tok, enc), (_, _, key) in zip(encoders, _ENCODERS):
        parts[(tok, enc)] = _load_into(pipe, getattr(pipe, tok), getattr(pipe, enc),
                                       state[key] if sdxl else state, token, embedding_id)
    return _Embedding(entry, parts)


def _weights_file(entry: EmbeddingEntry, root: Path, embedding_id: str) -> Path:
    if entry.kind == "file":
        return root
    folder = root / entry.subfolder if entry.subfolder else root
    for name in [entry.weight_name] if entry.weight_name else _LEARNED_EMBEDS:
        if (folder / name).is_file():
            return folder / name
    raise InvalidInput(f"{FIELD}: embedding {embedding_id} has no weights file in {folder} "
                       f"(give weight_name, or name it {' or '.join(_LEARNED_EMBEDS)})", field=FIELD)


def _read(path: Path, embedding_id: str) -> Any:
    """The file's tensors (safetensors) or object (torch pickle, read with weights_only)."""
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(path), device="cpu")
        return torch.load(str(path), map_location="cpu", weights_only=True)
    except _PASS_THROUGH:
        raise
    except Exception as exc:  # noqa: BLE001 - an unreadable file is the request's problem
        raise InvalidInput(f"{FIELD}: could not load embedding {embedding_id}: {_reason(exc)}", field=FIELD) from exc


def _load_into(pipe: Any, tokenizer: Any, text_encoder: Any, state: Any, token: str, embedding_id: str) -> _Vectors:
    """Add the embedding (a state dict, or one tensor of vectors) to a copy of `tokenizer`; return it and the rows."""
    table = text_encoder.get_input_embeddings()
    vocab_size = text_encoder.config.vocab_size
    tokenizer_copy = copy.deepcopy(tokenizer)
    try:
        # diffusers resizes the text encoder's table: let it resize a scratch table, not the real one.
        text_encoder.set_input_embeddings(_table(table.weight.detach(), table))
        pipe.load_textual_inversion(state, token=token, tokenizer=tokenizer_copy, text_encoder=text_encoder)
        rows = text_encoder.get_input_embeddings().weight[table.num_embeddings:].detach().clone()
    except _PASS_THROUGH:
        raise
    except Exception as exc:  # noqa: BLE001 - an embedding that does not load is the request's problem
        raise InvalidInput(f"{FIELD}: could not load embedding {embedding_id}: {_reason(exc)}", field=FIELD) from exc
    finally:
        text_encoder.set_input_embeddings(table)
        text_encoder.config.vocab_size = vocab_size
    return _Vectors(tokenizer_copy, rows)


def _table(weight: torch.Tensor, like: torch.nn.Embedding) -> torch.nn.Embedding:
    """A token table holding `weight`, configured like `like`."""
    return torch.nn.Embedding.from_pretrained(weight, freeze=True, padding_idx=like.padding_idx,
                                              max_norm=like.max_norm, norm_type=like.norm_type,
                                              scale_grad_by_freq=like.scale_grad_by_freq, sparse=like.sparse)
