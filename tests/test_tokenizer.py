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
import warnings

import ftfy
import numpy as np
import pytest
import regex

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


PROMPTS = HAND_WRITTEN + generated_prompts()


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
