"""CLIP byte-level BPE tokenizer, as used by Stable Diffusion v1.x.

The ids must match what the text encoder was trained with, so this follows OpenAI's CLIP
tokenizer (and transformers' ftfy-based slow ``CLIPTokenizer``) exactly: same cleaning, same
pre-tokenizer regex, same merges. It is pure Python + numpy so it runs without TensorFlow.
"""

import functools
import gzip
import heapq
import html
import json
import os
import warnings

import ftfy
import numpy as np
import regex

DEFAULT_BPE_PATH = os.path.join(os.path.dirname(__file__), "assets", "bpe_simple_vocab_16e6.txt.gz")
START_TOKEN, END_TOKEN, EOW = "<|startoftext|>", "<|endoftext|>", "</w>"
# OpenAI keeps only the first 49152 - 256 - 2 merges so the vocabulary is exactly 49408 entries.
NUM_MERGES = 49152 - 256 - 2
# Special tokens come first so a literal "<|endoftext|>" in a prompt is kept whole, as CLIP does.
_SPLIT = regex.compile(
    r"<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+",
    regex.IGNORECASE,
)
_SPACES = regex.compile(r"\s+")
# The word cache is bounded in entries and in word length, so prompts cannot grow it without limit.
_CACHE_WORDS, _CACHED_WORD_CHARS = 20_000, 64


class TruncationWarning(UserWarning):
    """Raised (as a warning) when a prompt is cut to fit the text encoder's context."""


@functools.lru_cache(maxsize=1)  # no arguments: one entry
def bytes_to_unicode():
    """Map every byte to a printable character, so BPE never has to handle raw whitespace or
    control bytes yet any UTF-8 input stays representable (no unknown tokens)."""
    # Order matters: it fixes the ids of the 512 single-byte tokens (printable bytes first).
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1),
                 *range(ord("®"), ord("ÿ") + 1)]
    mapping = {b: chr(b) for b in printable}
    for b in range(256):
        if b not in mapping:
            mapping[b] = chr(256 + len(mapping) - len(printable))
    return mapping


def clean_text(text):
    """CLIP was trained on ftfy-fixed, HTML-unescaped, whitespace-collapsed, lowercased text;
    anything else gives ids the encoder has never seen."""
    text = html.unescape(html.unescape(ftfy.fix_text(text)))
    return _SPACES.sub(" ", text).strip().lower()


def _token_text(token):
    return token.get("content") if isinstance(token, dict) else token


class CLIPTokenizer:
    def __init__(self, bpe_path=None, *, vocab=None, merges=None, max_length=77, pad_id=None):
        if (vocab is None) != (merges is None):
            raise ValueError("pass both `vocab` and `merges`, or neither")
        if vocab is None:
            with gzip.open(bpe_path or DEFAULT_BPE_PATH, "rt", encoding="utf-8") as f:
                merges = f.read().split("\n")[1 : NUM_MERGES + 1]
            symbols = list(bytes_to_unicode().values())
            symbols += [s + EOW for s in symbols]
            symbols += ["".join(m.split()) for m in merges] + [START_TOKEN, END_TOKEN]
            vocab = {s: i for i, s in enumerate(symbols)}
        self.encoder = dict(vocab)
        self.decoder = {i: s for s, i in self.encoder.items()}
        self.merges = [m for m in merges if m and not m.startswith("#version")]
        self.ranks = {tuple(m.split()): i for i, m in enumerate(self.merges)}
        self.byte_encoder = bytes_to_unicode()
        self.byte_decoder = {c: b for b, c in self.byte_encoder.items()}
        self.vocab_size = len(self.encoder)
        self.start_id, self.end_id = self.encoder[START_TOKEN], self.encoder[END_TOKEN]
        self.pad_id = self.end_id if pad_id is None else int(pad_id)
        self.max_length = int(max_length)
        self._cache = {}

    @classmethod
    def from_pretrained_folder(cls, folder):
        """Load a HF/diffusers ``tokenizer/`` folder, honouring its pad token: SD1 pads with
        <|endoftext|> but some SD2 exports pad with "!" (id 0), which changes the embeddings."""
        with open(os.path.join(folder, "vocab.json"), encoding="utf-8") as f:
            vocab = json.load(f)
        with open(os.path.join(folder, "merges.txt"), encoding="utf-8") as f:
            merges = f.read().split("\n")
        config = {}
        for name in ("tokenizer_config.json", "special_tokens_map.json"):  # later file wins
            path = os.path.join(folder, name)
            if os.path.exists(path):
                with open(path, encoding="utf-8") as f:
                    config.update(json.load(f))
        pad_token = _token_text(config.get("pad_token")) or END_TOKEN
        if pad_token not in vocab:
            raise ValueError(f"pad token {pad_token!r} of {folder} is not in its vocab.json")
        max_length = config.get("model_max_length", 77)
        if not isinstance(max_length, int) or max_length > 4096:  # HF writes 1e30 for "unset"
            max_length = 77
        return cls(vocab=vocab, merges=merges, max_length=max_length, pad_id=vocab[pad_token])

    def _bpe(self, word, check=None):
        """Merge adjacent symbols in merge-rank order; the last symbol carries the end-of-word
        marker because CLIP's vocabulary distinguishes word-final pieces.

        Prompts are user input, so this must stay cheap on a hostile 24 000-character "word":
        instead of rescanning the whole word for the best pair after every merge (quadratic),
        the candidate pairs sit in a heap keyed by (rank, position) over a linked list of
        symbols, which is O(n log n). Popping in that order merges every occurrence of the best
        pair left to right, as the rescan did; pairs a merge creates wait until that rank is
        done, so the ids are the same even for a merges file whose ranks are out of order.
        """
        syms = list(word[:-1]) + [word[-1] + EOW]
        nxt = list(range(1, len(syms) + 1))  # len(syms) = no next symbol
        prv = list(range(-1, len(syms) - 1))
        ranks = self.ranks
        heap = [(ranks[p], i) for i, p in enumerate(zip(syms, syms[1:])) if p in ranks]
        heapq.heapify(heap)
        pending, current, pops = [], None, 0
        while heap or pending:
            if not heap or heap[0][0] != current:  # this rank is done: queue the pairs it made
                for entry in pending:
                    heapq.heappush(heap, entry)
                pending, current = [], heap[0][0]
            rank, i = heapq.heappop(heap)
            pops += 1
            if check is not None and pops % 4096 == 0:
                check()
            j = nxt[i]
            if syms[i] is None or j >= len(syms) or ranks.get((syms[i], syms[j])) != rank:
                continue  # stale: one side was merged since this pair was queued
            syms[i], syms[j] = syms[i] + syms[j], None
            nxt[i] = nxt[j]
            if nxt[i] < len(syms):
                prv[nxt[i]] = i
                pair = (syms[i], syms[nxt[i]])
                if pair in ranks:
                    pending.append((ranks[pair], i))
            if prv[i] >= 0:
                pair = (syms[prv[i]], syms[i])
                if pair in ranks:
                    pending.append((ranks[pair], prv[i]))
        return [s for s in syms if s is not None]

    def _word_ids(self, word, check=None):
        """Prompts repeat words, so their ids are cached; as ids, not strings, since single-byte
        ids are shared small ints, which keeps the worst case (random bytes) near 15 MB."""
        ids = self._cache.get(word)
        if ids is None:
            ids = tuple(self.encoder[p] for p in self._bpe(word, check))
            if len(word) <= _CACHED_WORD_CHARS:  # long words are rare and cheap to redo now
                if len(self._cache) >= _CACHE_WORDS:
                    self._cache.clear()
                self._cache[word] = ids
        return ids

    def encode(self, text, check=None):
        """Token ids without start/end. ``check``, if given, is called every few hundred words
        and merges and may raise (the web app passes its job's check, so Stop and the time
        limit interrupt a long prompt)."""
        if check is not None:
            check()
        ids = []
        for n, piece in enumerate(_SPLIT.findall(clean_text(text))):
            if check is not None and n % 256 == 0:
                check()
            if piece in (START_TOKEN, END_TOKEN):
                ids.append(self.encoder[piece])
                continue
            word = "".join(self.byte_encoder[b] for b in piece.encode("utf-8"))
            ids.extend(self._word_ids(word, check))
        return ids

    def decode(self, ids):
        """Inverse of encode up to cleaning. Everything after the first end token is padding
        (possibly "!" ids), so it is dropped rather than decoded."""
        ids = [int(i) for i in np.asarray(ids).reshape(-1)]
        if self.end_id in ids:
            ids = ids[: ids.index(self.end_id)]
        text = "".join(self.decoder[i] for i in ids if i != self.start_id)
        data = bytes(self.byte_decoder[c] for c in text)
        return data.decode("utf-8", errors="replace").replace(EOW, " ").strip()

    def count_tokens(self, text, check=None):
        return len(self.encode(text, check))

    def tokenize(self, texts, *, warn=True, check=None):
        if isinstance(texts, str):
            texts = [texts]
        limit = self.max_length - 2
        out = np.full((len(texts), self.max_length), self.pad_id, dtype=np.int32)
        for row, text in enumerate(texts):
            ids = self.encode(text, check)
            if len(ids) > limit:
                if warn:
                    dropped = len(ids) - limit
                    warnings.warn(
                        f"prompt {text[:40]!r}... has {len(ids)} tokens, the limit is {limit}: "
                        f"{dropped} tokens dropped ({self.decode(ids[limit:])[:80]!r})",
                        TruncationWarning,
                        stacklevel=2,
                    )
                ids = ids[:limit]
            seq = [self.start_id, *ids, self.end_id]
            out[row, : len(seq)] = seq
        return out

    def save_vocab(self, folder):
        """Write the HF file layout so transformers, tokenizers or a browser client can
        reproduce these exact ids without the gzip merges file."""
        os.makedirs(folder, exist_ok=True)
        with open(os.path.join(folder, "vocab.json"), "w", encoding="utf-8") as f:
            json.dump(self.encoder, f, ensure_ascii=False)
        with open(os.path.join(folder, "merges.txt"), "w", encoding="utf-8") as f:
            f.write("#version: 0.2\n" + "\n".join(self.merges) + "\n")
        config = {
            "tokenizer_class": "CLIPTokenizer",
            "model_max_length": self.max_length,
            "bos_token": START_TOKEN,
            "eos_token": END_TOKEN,
            "unk_token": END_TOKEN,
            "pad_token": self.decoder[self.pad_id],
        }
        with open(os.path.join(folder, "tokenizer_config.json"), "w", encoding="utf-8") as f:
            json.dump(config, f, ensure_ascii=False, indent=2)


@functools.lru_cache(maxsize=1)  # no arguments: one entry
def default_tokenizer():
    """Building the rank table takes ~0.1 s and ~20 MB; share one instance per process."""
    return CLIPTokenizer()
