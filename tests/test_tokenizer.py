"""Parity of models.tokenizer with transformers' CLIPTokenizer (and KerasCV's), offline.

transformers >= 5 only ships the `tokenizers`-backed CLIPTokenizer, which dropped the slow
tokenizer's ftfy / html.unescape cleaning and lowercases per character (no final sigma). Stable
Diffusion's ids come from the slow tokenizer (OpenAI CLIP), so the reference here is
`hf(slow_clean(prompt))`; whenever the two cleanings agree the raw `hf(prompt)` is compared too.
"""

import html
import json
import os
import random
import time
import warnings

import ftfy
import numpy as np
import pytest
import regex

from models import tokenizer as tokenizer_module
from models.tokenizer import CLIPTokenizer, TruncationWarning, default_tokenizer

os.environ.setdefault("HF_HUB_OFFLINE", "1")

START, END = 49406, 49407

HAND_WRITTEN = [
    "",
    " ",
    "a photo of a cat",
    "A Photo Of A CAT",
    "a photograph of an astronaut riding a horse on mars, 4k, trending on artstation",
    "portrait of a woman, highly detailed, digital painting, concept art, sharp focus, 8k",
    "  leading and trailing spaces   ",
    "tabs\tand\nnewlines\r\nand\x0bvertical\x0cfeeds",
    "multiple     spaces   between\t\t\twords",
    "it's a dog's life, isn't it? they're here, we've been, i'm ok, you'll see, he'd go",
    "IT'S LOUD, DON'T SHOUT",
    "rock'n'roll 'quoted' ''double'' o'clock",
    "cats &amp; dogs",
    "cats &amp;amp; dogs &lt;3 &gt; &quot;quoted&quot; &#39;single&#39; &#x263A; &nbsp;x",
    "<b>bold</b> <i>html</i> tags & ampersand",
    "café crème brûlée, naïve façade, résumé, Über München, señor piñata",
    "Ångström Øresund Łódź Şişli ĞÜŞİÖÇ ǅ ǈ",
    "東京の夜景、ネオン、雨",
    "一只猫坐在窗台上，阳光明媚",
    "서울의 밤거리 풍경",
    "Москва зимой, снег, ночь",
    "Αθήνα ΟΔΟΣ ΟΔΥΣΣΕΥΣ σοφία",
    "عربي مرحبا بالعالم",
    "हिन्दी नमस्ते",
    "ภาษาไทย สวัสดี",
    "emoji 🐱🚀🔥 a cat in space 👩‍🚀 ❤️ 🇫🇷 👍🏽",
    "(masterpiece:1.2), [[best quality]], {ultra detailed}, <lora:foo:0.8>",
    "!!!??? ... --- *** ### @@@ $$$ %%% ^^^ ~~~ ``` |||",
    "a+b=c; x/y\\z #hashtag @mention https://example.com/path?q=1&r=2",
    "numbers 1234567890 3.14159 1,000,000 -42 1e10 0x1F 2024-01-01 12:30",
    "version v1.5 sd-1.5 1920x1080 16:9 f/2.8 50mm iso100",
    "ＡＢＣ ｆｕｌｌｗｉｄｔｈ １２３ ﬁne ﬂower",
    "“curly quotes” and ‘single’ — em dash – en dash … ellipsis",
    "mojibake cafÃ© and â€œquotedâ€\x9d",
    "zero\u200bwidth\u200cjoiner\u200d and soft\xadhyphen and nbsp\xa0here",
    "line\u2028separator\u2029paragraph\x85nel",
    "combining e\u0301 vs precomposed é, n\u0303 ñ, Å vs A\u030a",
    "İstanbul ﬃ ß ẞ ǰ",
    "<|endoftext|> inside a prompt <|startoftext|>",
    "a" * 200,
    "supercalifragilisticexpialidocious antidisestablishmentarianism",
    "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa bbbbbbbbbbbbbbbbbbbbbbb",
    "lololololololololololo hahahahahahahaha abababababababab",
    "a, " * 80,
    " ".join(["a beautiful painting of a mountain landscape at sunset"] * 12),
    "red, green, blue, " * 30,
]

# Hostile or odd input: long words and runs (the merge order matters most there), every script.
ADVERSARIAL = [
    "a" * 1000,
    "a" * 1001 + " " + "aa" * 333,
    "ab" * 700,
    "lol" * 500 + "l",
    "xyzzy" * 300,
    "abcdefghijklmnopqrstuvwxyz" * 40,
    "supercalifragilistic" * 60,
    "!" * 900,
    "!?" * 400 + ".,;:" * 100,
    "-_=+*&^%$#@~`|\\/<>[]{}()" * 30,
    "'s't're've'm'll'd" * 40,
    "..." * 300 + "a" + "…" * 200,
    "🐱" * 300,
    "👩‍🚀👍🏽🇫🇷❤️" * 60,
    "東京" * 400,
    "ab東京cd🐱ef" * 80,
    "ΟΔΥΣΣΕΥΣ" * 80 + "σοφία" * 50,
    "Москваabc" * 100,
    "e\u0301" * 300 + "ñ" * 200,
    "ﬁﬂﬃ" * 150,
    "x\u200by" * 300,
    "1234567890" * 50 + "a1b2c3" * 50,
    "aaab" * 300 + "baaa" * 300,
]

WORDS = (
    "a an the of in on with and photo painting portrait cat dog astronaut horse mars castle "
    "forest sunset neon cyberpunk city rain highly detailed digital art concept 4k 8k hdr "
    "masterpiece trending artstation octane render unreal engine volumetric lighting bokeh "
    "Greg Rutkowski Alphonse Mucha Studio Ghibli HDR RAW DSLR it's don't they're we've I'm "
    "you'll she'd café naïve jalapeño über Straße Ørsted Łódź São Paulo Zürich "
    "東京 京都 猫 龙 서울 Москва Ελλάδα ΟΔΟΣ 🐱 🚀 🔥 ✨ 👩‍🚀 🇯🇵 "
    "&amp; &lt; &gt; &quot; &#39; 1 2 3 42 1024 3.5 1:1 16:9 f/1.4 "
    ", . ! ? ; : - -- ... ( ) [ ] { } < > / \\ | * # @ $ % ^ ~ ` + = _ ' \""
).split(" ")
SEPARATORS = [" ", " ", " ", "  ", ", ", "\t", "\n", "", " \n\t "]


def generated_prompts(count=220, seed=1234):
    rng = random.Random(seed)
    prompts = []
    for _ in range(count):
        n = rng.choice([1, 2, 5, 10, 20, 40, 70, 110])
        parts = []
        for _ in range(n):
            word = rng.choice(WORDS)
            case = rng.random()
            word = word.upper() if case < 0.1 else word.capitalize() if case < 0.25 else word
            parts += [word, rng.choice(SEPARATORS)]
        prompts.append("".join(parts))
    return prompts


PROMPTS = HAND_WRITTEN + generated_prompts()  # ADVERSARIAL is tested on its own


def slow_clean(text):
    """transformers 4.x slow CLIPTokenizer (ftfy installed): basic_clean, whitespace_clean, lower."""
    text = html.unescape(html.unescape(ftfy.fix_text(text))).strip()
    return regex.sub(r"\s+", " ", text).strip().lower()


@pytest.fixture(scope="module")
def tok():
    return default_tokenizer()


@pytest.fixture(scope="module")
def vocab_dir(tmp_path_factory, tok):
    folder = tmp_path_factory.mktemp("clip_tokenizer")
    tok.save_vocab(folder)
    return folder


@pytest.fixture(scope="module")
def hf_tok(vocab_dir):
    transformers = pytest.importorskip("transformers")
    return transformers.CLIPTokenizer.from_pretrained(str(vocab_dir), pad_token="<|endoftext|>")


def hf_ids(hf_tok, text):
    return hf_tok(text, padding="max_length", max_length=77, truncation=True).input_ids


def test_saved_vocab_has_openai_ids(vocab_dir, tok):
    with open(vocab_dir / "vocab.json", encoding="utf-8") as f:
        vocab = json.load(f)
    assert len(vocab) == 49408 == tok.vocab_size
    assert len(set(vocab.values())) == 49408 and set(vocab.values()) == set(range(49408))
    known = {"!": 0, "a</w>": 320, "photo</w>": 1125, "of</w>": 539, "cat</w>": 2368,
             "<|startoftext|>": START, "<|endoftext|>": END}
    assert {k: vocab[k] for k in known} == known
    assert (tok.start_id, tok.end_id, tok.pad_id, tok.max_length) == (START, END, END, 77)
    with open(vocab_dir / "merges.txt", encoding="utf-8") as f:
        lines = f.read().splitlines()
    assert lines[0] == "#version: 0.2" and lines[1] == "i n" and len(lines) == 1 + 48894


def test_known_prompt(tok):
    row = tok.tokenize("a photo of a cat")
    assert row.shape == (1, 77) and row.dtype == np.int32
    assert row[0, :7].tolist() == [START, 320, 1125, 539, 320, 2368, END]
    assert (row[0, 7:] == END).all()


def test_matches_transformers(tok, hf_tok):
    assert hf_tok.pad_token_id == tok.pad_id == END
    assert len(PROMPTS) >= 250
    ours = tok.tokenize(PROMPTS, warn=False)
    raw_compared = 0
    for prompt, row in zip(PROMPTS, ours):
        assert row.tolist() == hf_ids(hf_tok, slow_clean(prompt)), repr(prompt)
        if hf_tok.backend_tokenizer.normalizer.normalize_str(prompt).strip() == slow_clean(prompt):
            assert row.tolist() == hf_ids(hf_tok, prompt), repr(prompt)
            raw_compared += 1
    assert raw_compared >= 120  # prompts that need no ftfy/html/sigma fix: compared verbatim too
    assert sum(tok.count_tokens(p) > 75 for p in PROMPTS) >= 20  # truncation is exercised


def test_matches_keras_cv(tok):
    """KerasCV's port of OpenAI's tokenizer: html.unescape but no ftfy, and no truncation."""
    kcv = pytest.importorskip("keras_cv.src.models.stable_diffusion.clip_tokenizer")
    ref = kcv.SimpleTokenizer(os.path.join(os.path.dirname(__file__), "..", "models", "assets",
                                           "bpe_simple_vocab_16e6.txt.gz"))
    compared = 0
    for prompt in PROMPTS:
        if ftfy.fix_text(prompt) == prompt:
            assert ref.encode(prompt)[1:-1] == tok.encode(prompt), repr(prompt)
            compared += 1
    assert compared >= 150


def test_cleaning_rules(tok):
    assert tok.encode("Cats &amp;amp; Dogs") == tok.encode("cats & dogs")
    assert tok.encode("“quoted”") == tok.encode('"quoted"')
    assert tok.encode("  a\t\tphoto\n of ") == tok.encode("a photo of")
    assert tok.encode("ΟΔΟΣ") == tok.encode("οδος")  # Python's lower() keeps the final sigma
    assert tok.encode("") == [] and tok.count_tokens("a photo of a cat") == 5


def test_truncation_warning(tok):
    prompt = " ".join(f"word{i}" for i in range(60))  # 'word' + digit => 2 tokens per word + more
    n = tok.count_tokens(prompt)
    assert n > 75
    with pytest.warns(TruncationWarning) as record:
        out = tok.tokenize(["short prompt", prompt])
    assert len(record) == 1
    message = str(record[0].message)
    assert f"{n - 75} tokens dropped" in message and str(n) in message and "word0" in message
    assert out.shape == (2, 77) and out.dtype == np.int32
    assert out[1, 0] == START and out[1, 76] == END
    assert out[1, 1:76].tolist() == tok.encode(prompt)[:75]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        tok.tokenize(prompt, warn=False)
        exact = tok.tokenize(", " * 75)  # exactly 75 tokens: fits, no warning
    assert exact[0, 75] != END and exact[0, 76] == END
    assert issubclass(TruncationWarning, UserWarning)


def test_decode_round_trip(tok):
    # Only simple text round-trips: CLIP drops whitespace, so "mars, 4k" decodes as "mars , 4 k".
    for text in ["a photo of a cat", "an astronaut riding a horse on mars", "café 東京 🐱"]:
        assert tok.decode(tok.encode(text)) == text
        assert tok.decode(tok.tokenize(text)[0]) == text
    assert tok.decode(CLIPTokenizer(pad_id=0).tokenize("a cat")[0]) == "a cat"  # "!" pads dropped


def test_from_pretrained_folder_round_trip(tmp_path, tok):
    sd2 = CLIPTokenizer(pad_id=0, max_length=64)
    sd2.save_vocab(tmp_path)
    loaded = CLIPTokenizer.from_pretrained_folder(tmp_path)
    assert (loaded.pad_id, loaded.max_length, loaded.vocab_size) == (0, 64, 49408)
    for prompt in PROMPTS[:60]:
        assert loaded.encode(prompt) == tok.encode(prompt)
    row = loaded.tokenize("a photo of a cat")[0]
    assert row.shape == (64,) and row[:7].tolist() == [START, 320, 1125, 539, 320, 2368, END]
    assert (row[7:] == 0).all()
    # special_tokens_map.json (dict form, as diffusers writes it) overrides tokenizer_config.json
    with open(tmp_path / "special_tokens_map.json", "w", encoding="utf-8") as f:
        json.dump({"pad_token": {"content": "<|endoftext|>", "lstrip": False}}, f)
    with open(tmp_path / "tokenizer_config.json", "w", encoding="utf-8") as f:
        json.dump({"model_max_length": 1000000000000000019884624838656, "pad_token": "!"}, f)
    sd1 = CLIPTokenizer.from_pretrained_folder(tmp_path)
    assert (sd1.pad_id, sd1.max_length) == (END, 77)


def test_transformers_reads_sd2_padding(tmp_path):
    transformers = pytest.importorskip("transformers")
    ours = CLIPTokenizer(pad_id=0)
    ours.save_vocab(tmp_path)
    hf = transformers.CLIPTokenizer.from_pretrained(str(tmp_path))
    assert hf.pad_token_id == 0 and hf.model_max_length == 77
    # No "!" here: transformers registers the pad token "!" as a special token and splits it out
    # of "!!" (id 0, 0) where OpenCLIP, which SD2 was trained with, gives the BPE id 748.
    for prompt in ["a photo of a cat", "ΟΔΟΣ émigré, 東京??", ""]:
        assert ours.tokenize(prompt)[0].tolist() == hf_ids(hf, slow_clean(prompt))


def test_default_tokenizer_is_shared():
    assert default_tokenizer() is default_tokenizer()


def test_adversarial_matches_transformers(tok, hf_tok):
    for prompt in ADVERSARIAL:
        ids = tok.encode(prompt)
        assert ids == hf_tok(slow_clean(prompt), add_special_tokens=False).input_ids, repr(prompt[:40])
        assert tok.count_tokens(prompt) == len(ids)


def rescan_bpe(ranks, word):
    """The old quadratic BPE (rescan every pair after each merge), kept as an independent oracle."""
    parts = list(word[:-1]) + [word[-1] + "</w>"]
    while len(parts) > 1:
        best = min(zip(parts, parts[1:]), key=lambda p: ranks.get(p, float("inf")))
        if best not in ranks:
            break
        merged, i = [], 0
        while i < len(parts):
            if parts[i : i + 2] == list(best):
                merged.append(best[0] + best[1])
                i += 2
            else:
                merged.append(parts[i])
                i += 1
        parts = merged
    return parts


def test_heap_bpe_matches_rescan(tok):
    rng = random.Random(7)
    alphabet = "aabbeellnorst"
    for _ in range(400):
        word = "".join(rng.choice(alphabet) for _ in range(rng.randint(1, 120)))
        assert tok._bpe(word) == rescan_bpe(tok.ranks, word), word
    # Ranks out of merge order (a later merge ranked before the one that makes its symbol): the
    # heap must still finish each rank before the pairs it creates, as the rescan does.
    merges = ["aa a", "a a", "b a", "aa b", "aaa a"]
    toy = CLIPTokenizer(vocab=dict(tok.encoder), merges=merges)
    for _ in range(300):
        word = "".join(rng.choice("aab") for _ in range(rng.randint(1, 40)))
        assert toy._bpe(word) == rescan_bpe(toy.ranks, word), word


def test_long_word_is_fast(tok):
    """A single 24 000-character word took 26 s with the rescan BPE (held the model slot)."""
    rng = random.Random(0)
    word = "".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(24_000))
    for text in (word, "a" * 24_000, "!?" * 12_000):
        start = time.perf_counter()
        n = tok.count_tokens(text)
        assert time.perf_counter() - start < 2.0 and n > 1000
    assert len(tok._cache) <= tokenizer_module._CACHE_WORDS
    assert all(len(w) <= tokenizer_module._CACHED_WORD_CHARS for w in tok._cache)


def test_check_is_called_and_its_exception_propagates(tok):
    class Stop(Exception):
        pass

    calls = []
    tok.encode("a photo of a cat", check=lambda: calls.append(1))
    assert calls  # called even for a short prompt (before any work)

    def stop_after(n):
        def check():
            calls.append(1)
            if len(calls) > n:
                raise Stop
        return check

    rng = random.Random(1)
    word = "".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(24_000))
    for text in (word, "a cat, " * 2000):  # one long word (merges), many words
        calls.clear()
        with pytest.raises(Stop):
            tok.tokenize([text], check=stop_after(2), warn=False)
        assert len(calls) == 3
    calls.clear()
    with pytest.raises(Stop):
        tok.count_tokens(word, check=stop_after(1))
    assert tok.tokenize("a cat", check=lambda: None).tolist() == tok.tokenize("a cat").tolist()


def test_the_encode_stage_passes_the_check_to_the_tokenizer(tok):
    """The text-encoder stage (pipeline.encode_prompts, which every server and the chain call)
    tokenizes with the job's check, so Stop / the time limit reach a long prompt."""
    from types import SimpleNamespace

    from models.pipeline import StableDiffusionPipeline

    class Stop(Exception):
        pass

    def stopped():
        raise Stop

    import contextlib

    encoded = []
    def encode_ids(ids, check=None):  # the text encoder's stand-in (pipeline._encode_ids)
        encoded.append(check)
        return np.zeros((len(ids), 77, 4), np.float32)

    pipe = SimpleNamespace(tokenizer=tok, _encode_ids=encode_ids, _lora_block=lambda loras: contextlib.nullcontext())
    pipe._encode_prompts = lambda prompts, check=None: StableDiffusionPipeline._encode_prompts(pipe, prompts, check)
    with pytest.raises(Stop):
        StableDiffusionPipeline.encode_prompts(pipe, ["x" * 24_000], check=stopped)
    assert encoded == []  # stopped before the text encoder ran

    def fine():
        return None

    StableDiffusionPipeline.encode_prompts(pipe, ["a cat"], check=fine)
    assert encoded == [fine]
