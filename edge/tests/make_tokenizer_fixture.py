"""Writes edge/tests/fixtures/tokenizer_cases.json: prompts and the ids models/tokenizer.py gives
them (padded to 77), which the JavaScript tokenizer must reproduce (tokenizer.test.mjs).

    python -m edge.tests.make_tokenizer_fixture
"""

from __future__ import annotations

import json
import os
import random
import warnings

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures", "tokenizer_cases.json")

HANDWRITTEN = [
    "", " ", "a", "A", "a cat", "A Cat", "A CAT", "a red circle on a blue background",
    "a green square on a yellow background", "a purple triangle on an orange background",
    "photo of an astronaut riding a horse on mars, 4k, highly detailed",
    "Portrait of a woman, oil painting by Rembrandt, dramatic lighting",
    "don't", "it's a dog's life", "we're here, they've gone, I'm fine, you'll see, he'd go",
    "DON'T STOP", "rock'n'roll", "'quoted'", "\"double quoted\"", "ol' man", "o'clock",
    "1", "42", "3.14159", "1,000,000 stars", "2024-01-31", "16:9 aspect ratio", "x1000", "v2.1", "H2O",
    "8k uhd", "100%", "#hashtag", "@user", "email@example.com", "https://example.com/path?q=1&x=2",
    "hello, world!", "what?!", "wait... what", "(masterpiece), [best quality], {detailed}",
    "((((extra emphasis))))", "a::b", "1girl, solo, smile", "C++ & C#", "50$ or 30€ or ¥100",
    "tab\tseparated\twords", "new\nline", "multi   space    prompt", "  leading and trailing  ",
    "crlf\r\nline", "café", "naïve façade", "Ångström", "São Paulo", "Zürich über straße",
    "ÉCOLE", "ﬁne ﬂowers", "ĳsselmeer", "ＦＵＬＬＷＩＤＴＨ　ｔｅｘｔ", "ｈａｌｆ ﾃｽﾄ",
    "“curly” ‘quotes’", "it’s curly", "em—dash – en dash", "ellipsis…", "bullet • point",
    "日本の桜", "一只猫", "고양이", "кошка на крыше", "γάτα ΟΔΟΣ", "قطة", "חתול", "बिल्ली", "แมว",
    "emoji 🐱🚀✨", "👩‍🚀 astronaut", "🇫🇷 flag", "❤️ heart", "a😀b", "☃ snowman", "♪♫",
    "&amp; ampersand", "&lt;tag&gt;", "&quot;quoted&quot;", "&#39;apos&#39;", "&#x1F600; face",
    "caf&eacute;", "&EACUTE;COLE", "&nbsp;space", "&amp;amp; double", "AT&T", "this&not that",
    "&copy 2020", "<b>bold</b> &amp; more", "&#128; euro charref", "&#0; null", "&bogus;",
    "control\x07bell", "zero\u200bwidth", "\ufeffbom start", "nbsp\u00a0space", "thin\u2009space",
    "combining e\u0301 accent", "decomposed A\u030a", "İstanbul", "ǅemal", "x\u0085y",
    "\x1b[31mred\x1b[0m text", "<|startoftext|>", "a <|endoftext|> b", "<|endoftext|>",
    "under_score snake_case", "kebab-case-words", "CamelCaseWords", "ALLCAPS", "MiXeD CaSe",
    "ordinals 1st 2nd 3rd 4th", "½ ¼ ¾", "²³ superscripts", "①②③", "٣ arabic digit", "Ⅻ roman",
    "math ∑∫√∞ ≈ ≠", "arrows ← → ↑ ↓", "degree 90°", "fractions 3/4", "back\\slash", "pipe|bar",
    "semi;colon", "question?", "excl!", "a-b_c.d,e", "....", "!!!", "???", "~~~", "a" * 100,
    "supercalifragilisticexpialidocious", "pneumonoultramicroscopicsilicovolcanoconiosis",
    "antidisestablishmentarianism", "hippopotomonstrosesquippedaliophobia",
]

WORDS = ("a an the red green blue yellow purple orange white black cat dog circle square triangle "
         "background on of in with under above photo painting portrait landscape mountain river city "
         "night sunset cinematic lighting detailed highly beautiful ugly old young small large tiny "
         "huge shiny matte trending artstation octane render unreal engine 4k 8k hdr bokeh").split()
EXTRAS = ["café", "naïve", "日本", "🐱", "don't", "it's", "3.5", "42", "x2", "(best)", "[bad]", "A/B", "—",
          "über", "Ω", "ﬁ", "ＡＢＣ", "“hi”", "&amp;", "#1", "1920s", "o'neil", "we'll", "U.S.A."]


def prompts():
    rng = random.Random(1234)
    out = list(HANDWRITTEN)
    for i in range(140):
        n = rng.choice([3, 6, 10, 20, 40, 90])  # 40 and 90 words pass the 75-token limit
        words = [rng.choice(WORDS if rng.random() > 0.2 else EXTRAS) for _ in range(n)]
        if rng.random() < 0.3:
            words = [w.upper() if rng.random() < 0.5 else w.capitalize() for w in words]
        sep = rng.choice([" ", " ", ", ", " | ", "  "])
        out.append(sep.join(words))
    return out


def main():
    from models.tokenizer import TruncationWarning, default_tokenizer

    tok = default_tokenizer()
    cases = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", TruncationWarning)
        for p in prompts():
            cases.append({"prompt": p, "ids": tok.tokenize([p])[0].tolist(), "count": tok.count_tokens(p)})
    os.makedirs(os.path.dirname(OUT), exist_ok=True)
    with open(OUT, "w", encoding="utf-8") as f:
        f.write('{"max_length": %d, "cases": [\n' % tok.max_length)
        f.write(",\n".join(json.dumps(c, ensure_ascii=True, separators=(",", ":")) for c in cases))
        f.write("\n]}\n")
    long = sum(c["count"] > tok.max_length - 2 for c in cases)
    print(f"wrote {len(cases)} cases ({long} longer than {tok.max_length - 2} tokens) to {OUT}")


if __name__ == "__main__":
    main()
