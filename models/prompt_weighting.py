"""AUTOMATIC1111's prompt syntax: emphasis and prompts longer than 75 tokens, as one rule.

    (word)      attention x 1.1          [word]      attention / 1.1
    (word:1.3)  attention set to x 1.3   nesting     multiplies: ((word)) = 1.21
    \\( \\) \\[ \\]  literal brackets        \\\\          a literal backslash
    BREAK       starts a new 75-token chunk
    an unclosed ( or [ applies to the rest of the prompt; an unmatched ) or ] is text.

The text is parsed into (text, weight) pieces (`parse`); each piece is tokenized on its own
and the tokens are cut into chunks of 75 (`chunk_prompt`). A chunk that fills up within the
last 20 tokens after a comma is split after that comma (the rest moves to the next chunk).
Each chunk is encoded as [start, 75 tokens, end, padding] (77 ids, the tokenizer's own layout,
so a prompt of <= 75 tokens without emphasis has exactly the ids, and so the context, it had
before this module); `apply_weights` multiplies each chunk's encoder output by its per-token
weights and rescales it so its mean equals the unweighted output's mean (unless that mean is
~0, see apply_weights); the chunks are
concatenated along the sequence axis (77 x k tokens). The prompts of a batch, and a prompt and
its negative prompt, are padded to the same number of chunks with empty chunks (the empty
prompt's encoding: `pad_chunks`).

Where it runs: models.pipeline (and so every server mode), edge/client.py (imports this
module), and the browser's edge/web/prompt_weighting.js, a port tested against this file.
Differences from A1111, on purpose: BREAK inside brackets still breaks (A1111 turns it into the
word "BREAK"); the mean is taken per prompt and chunk, not over the whole batch; a weight that
is not a number (`(x:1.2.3)`), a weight beyond +-MAX_WEIGHT and more than MAX_CHUNKS chunks are
InvalidInput errors.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

from .errors import InvalidInput

CHUNK_TOKENS = 75  # tokens per chunk, without the start and end tokens
COMMA_BACKTRACK = 20  # a full chunk is split after a comma among its last this many tokens
MAX_CHUNKS = 32  # 2400 tokens: more than a 4000-character prompt of words holds
MAX_WEIGHT = 100.0  # |weight| after nesting; past it the context is noise
MEAN_FLOOR = 1e-3  # apply_weights: a chunk mean this close to 0 (x its mean |value|) is not rescaled to
ROUND, SQUARE = 1.1, 1 / 1.1
BREAK = None  # the piece that stands for BREAK in parse()'s output: (None, None)

# Spelled out so that edge/web/prompt_weighting.js can use the same classes: Python's str
# whitespace (str.isspace), ASCII digits, and a word character as Python's \w ([\p{L}\p{N}_]).
SPACE = "[ \\t\\n\\r\\f\\v\\x1c-\\x1f\\x85\\xa0\\u1680\\u2000-\\u200a\\u2028\\u2029\\u202f\\u205f\\u3000]"
# one token of the syntax per match: an escape, a bracket, ":number)" , text, or a lone ":"
_SYNTAX = re.compile(rf"\\[()\[\]\\]|\\|\(|\[|:{SPACE}*([+-]?[.0-9]+){SPACE}*\)|\)|\]|[^\\()\[\]:]+|:")
_BREAK = re.compile(rf"{SPACE}*(?<!\w)BREAK(?!\w){SPACE}*")


def _number(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise InvalidInput(f"the emphasis weight {text!r} is not a number (write e.g. (word:1.3))",
                           "bad_prompt_weight") from None


def parse(text: str) -> list:
    """[(text, weight)] pieces of a prompt; BREAK is the piece (None, None). Adjacent pieces of
    equal weight are merged; an empty prompt is [("", 1.0)]."""
    pieces: list = []  # [text, weight] lists (weights change as brackets close)
    rounds: list = []  # where each open "(" started in pieces
    squares: list = []

    def multiply(start, factor):
        for piece in pieces[start:]:
            if piece[0] is not None:
                piece[1] *= factor

    for m in _SYNTAX.finditer(text):
        token, weight = m.group(0), m.group(1)
        if token.startswith("\\"):
            pieces.append([token[1:], 1.0])
        elif token == "(":
            rounds.append(len(pieces))
        elif token == "[":
            squares.append(len(pieces))
        elif weight is not None and rounds:
            multiply(rounds.pop(), _number(weight))
        elif token == ")" and rounds:
            multiply(rounds.pop(), ROUND)
        elif token == "]" and squares:
            multiply(squares.pop(), SQUARE)
        else:
            for k, part in enumerate(_BREAK.split(token)):
                if k:
                    pieces.append([None, None])
                pieces.append([part, 1.0])
    for start in rounds:  # unclosed: to the end
        multiply(start, ROUND)
    for start in squares:
        multiply(start, SQUARE)
    merged: list = []
    for piece in pieces:
        if piece[0] is None:
            merged.append(piece)
        elif not piece[0]:
            continue  # an empty piece (a lone backslash, the sides of a BREAK) adds no token
        elif merged and merged[-1][0] is not None and merged[-1][1] == piece[1]:
            merged[-1][0] += piece[0]
        else:
            merged.append(piece)
    for _, weight in merged:
        if weight is not None and not abs(weight) <= MAX_WEIGHT:
            raise InvalidInput(f"an emphasis weight of {weight:.4g}: the limit is {MAX_WEIGHT:g} (too many "
                               "nested brackets?)", "bad_prompt_weight")
    return [tuple(p) for p in merged] or [("", 1.0)]


@dataclass
class PromptChunks:
    ids: np.ndarray  # int32 [k, 77]: start, tokens, end, padding
    weights: np.ndarray  # float32 [k, 77]: 1.0 at start, end and padding
    token_count: int  # tokens in all chunks, without start/end/padding

    @property
    def chunks(self) -> int:
        return len(self.ids)


def _row(tokenizer, tokens):
    length = tokenizer.max_length
    ids = np.full(length, tokenizer.pad_id, np.int32)
    seq = [tokenizer.start_id, *tokens, tokenizer.end_id]
    ids[:len(seq)] = seq
    return ids


def chunk_prompt(tokenizer, text: str, *, max_chunks: int = MAX_CHUNKS, check=None) -> PromptChunks:
    """The prompt's chunks (ids and per-token weights). `check` as in CLIPTokenizer.encode."""
    size = tokenizer.max_length - 2
    comma = tokenizer.encoder.get(",</w>")
    rows_ids, rows_w = [], []
    tokens, weights = [], []
    count = 0
    last_comma = -1

    def close():
        nonlocal tokens, weights, count, last_comma
        if len(rows_ids) >= max_chunks:
            raise InvalidInput(f"the prompt needs more than {max_chunks} chunks of {size} tokens; the limit is "
                               f"{max_chunks} ({max_chunks * size} tokens)", "prompt_too_long")
        count += len(tokens)
        rows_ids.append(_row(tokenizer, tokens))
        w = np.ones(tokenizer.max_length, np.float32)
        w[1:1 + len(weights)] = weights
        rows_w.append(w)
        tokens, weights, last_comma = [], [], -1

    for piece, weight in parse(text):
        if piece is None:
            close()
            continue
        for token in tokenizer.encode(piece, check):
            if token == comma:
                last_comma = len(tokens)
            elif len(tokens) == size and last_comma != -1 and len(tokens) - last_comma <= COMMA_BACKTRACK:
                cut = last_comma + 1
                moved, moved_w = tokens[cut:], weights[cut:]
                tokens, weights = tokens[:cut], weights[:cut]
                close()
                tokens, weights = moved, moved_w
            if len(tokens) == size:
                close()
            tokens.append(token)
            weights.append(weight)
    if tokens or not rows_ids:
        close()
    return PromptChunks(np.stack(rows_ids), np.stack(rows_w), count)


def empty_chunk(tokenizer):
    """(ids, weights) of the chunk that pads a shorter prompt: the empty prompt's."""
    return _row(tokenizer, []), np.ones(tokenizer.max_length, np.float32)


def tokenize_prompts(tokenizer, prompts, *, max_chunks: int = MAX_CHUNKS, check=None):
    """(ids int32 [B, k, 77], weights float32 [B, k, 77], token counts) for a batch, every prompt
    padded with empty chunks to the longest one's k."""
    parts = [chunk_prompt(tokenizer, p, max_chunks=max_chunks, check=check) for p in prompts]
    k = max(p.chunks for p in parts)
    ids0, w0 = empty_chunk(tokenizer)
    ids = np.stack([np.concatenate([p.ids, np.repeat(ids0[None], k - p.chunks, 0)]) for p in parts])
    weights = np.stack([np.concatenate([p.weights, np.repeat(w0[None], k - p.chunks, 0)]) for p in parts])
    return ids, weights, [p.token_count for p in parts]


def apply_weights(z, weights) -> np.ndarray:
    """One chunk's encoder output z float32 [77, D] times its weights [77], rescaled so its mean
    is z's. All weights 1: z itself (bit for bit). A mean within MEAN_FLOOR of 0 (relative to
    the mean |value|: an encoder whose last layer norm leaves each token's mean at 0, as small
    random or distilled ones do) is rounding noise, and so would be the scale: then no rescale."""
    z = np.asarray(z, np.float32)
    weights = np.asarray(weights, np.float32)
    if np.all(weights == 1.0):
        return z
    before = z.mean(dtype=np.float64)
    weighted = z * weights[:, None]
    after = weighted.mean(dtype=np.float64)
    floor = MEAN_FLOOR * np.abs(z).mean(dtype=np.float64)
    if abs(before) <= floor or abs(after) <= floor:
        return weighted
    return weighted * np.float32(before / after)


def encode_prompts(tokenizer, encode_ids, prompts, *, max_chunks: int = MAX_CHUNKS, check=None):
    """(context float32 [B, 77 k, D], token counts). `encode_ids(ids int32 [N, 77]) -> [N, 77, D]`
    is the text encoder; it is called once with every chunk of the batch."""
    ids, weights, counts = tokenize_prompts(tokenizer, list(prompts), max_chunks=max_chunks, check=check)
    B, k, T = ids.shape
    z = np.asarray(encode_ids(ids.reshape(B * k, T)), np.float32)
    out = np.stack([apply_weights(z[i], w) for i, w in enumerate(weights.reshape(B * k, T))])
    return out.reshape(B, k * T, -1), counts


def pad_chunks(context, chunks: int, empty, chunk_length: int) -> np.ndarray:
    """context [B, 77 j, D] with empty chunks (`empty` [1, 77, D], the empty prompt's context)
    appended up to `chunks` chunks."""
    context = np.asarray(context, np.float32)
    have = context.shape[1] // chunk_length
    if have >= chunks:
        return context
    fill = np.repeat(np.asarray(empty, np.float32).reshape(1, chunk_length, -1), context.shape[0], 0)
    return np.concatenate([context, *[fill] * (chunks - have)], 1)


def check_context_length(tokens: int, chunk_length: int, max_chunks: int = MAX_CHUNKS, what="context"):
    """A context's sequence length must be chunk_length x k, 1 <= k <= max_chunks."""
    if tokens < chunk_length or tokens % chunk_length or tokens // chunk_length > max_chunks:
        raise InvalidInput(f"the {what} has {tokens} tokens: it must be {chunk_length} x k tokens (k chunks, "
                           f"1 to {max_chunks})", "wrong_shape")
    return tokens // chunk_length


def token_label(tokenizer, text: str, max_chunks: int = MAX_CHUNKS) -> str:
    """The token counter's text: "12/75 tokens", "80/150 tokens, 2 chunks"."""
    from .lora.prompt_tags import parse_lora_tags

    size = tokenizer.max_length - 2
    try:
        text = parse_lora_tags(text)[0]  # the tags are removed before encoding
        parts = chunk_prompt(tokenizer, text, max_chunks=max_chunks)
    except InvalidInput as e:
        return str(e)
    k = parts.chunks
    return f"{parts.token_count}/{size * k} tokens" + (f", {k} chunks" if k > 1 else "")
