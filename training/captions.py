"""The many ways people type one synthetic scene, for training and measuring the default model.

``training.synthetic`` writes every caption in one grammar ("a red circle on a blue
background") so that the evaluator can invert it. People do not type that way: they drop
articles ("red circle on blue background"), use commas ("red circle, blue background"), put
the background first ("a blue background with a red circle"), name the colour after the shape
("a circle, red, on blue"), get "a"/"an" wrong, capitalise, end with a full stop and add tags
("..., high quality, 4k"). A model trained on one grammar reads those badly, so the default
model is trained on phrasings drawn from the forms below and measured on them.

Two sets of forms, never mixed: ``TRAIN_FORMS`` are what training draws from (the forms users
were seen to type, ``ISSUE_FAMILIES``, among them); ``HELD_OUT_FORMS`` never appear in
training, with connectors ("against", "behind", "is", "and", ":"), fillers and word orders of
their own, so they measure whether the model reads word order rather than memorising
templates. Every phrasing is built from a ``Scene``, which the evaluator scores against, so no
caption has to be parsed back.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np

from .synthetic import POSITIONS, SIZES, make_caption


@dataclass(frozen=True)
class Scene:
    colour: str
    shape: str
    background: str
    size: str | None = None
    position: str | None = None


def _pick(rng: np.random.Generator, options: Sequence):
    return options[int(rng.integers(len(options)))]


def _article(word: str, rng: np.random.Generator) -> str:
    """Right most of the time, the other one a sixth of the time, as people type it."""
    right, wrong = ("an", "a") if word[0] in "aeiou" else ("a", "an")
    return wrong if rng.random() < 1 / 6 else right


def _right_article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def _wrong_article(word: str) -> str:
    return "a" if word[0] in "aeiou" else "an"


def _with_article(phrase: str, rng) -> str:
    return f"{_article(phrase, rng)} {phrase}"


def _sized(scene: Scene, word: str) -> str:
    return f"{scene.size} {word}" if scene.size else word


def _position(scene: Scene) -> str:
    return f" {scene.position}" if scene.position else ""


# -- training forms: subject phrases, background phrases, and how they are joined ----------------
def _subject(scene: Scene, rng) -> str:
    c, s = scene.colour, scene.shape
    kind = int(rng.integers(5))
    if kind == 0:
        return _with_article(_sized(scene, f"{c} {s}"), rng)
    if kind == 1:
        return _sized(scene, f"{c} {s}")
    if kind == 2:
        return f"{_with_article(_sized(scene, s), rng)}, {c}"
    if kind == 3:
        return _with_article(_sized(scene, f"{c} {_pick(rng, ('coloured', 'colored'))} {s}"), rng)
    return f"{_with_article(_sized(scene, s), rng)} in {c}"


def _background(scene: Scene, rng, bare_colour_ok: bool) -> str:
    b = scene.background
    kinds = 5 if bare_colour_ok else 4
    kind = int(rng.integers(kinds))
    if kind == 0:
        return _with_article(f"{b} background", rng)
    if kind == 1:
        return f"{b} background"
    if kind == 2:
        return f"{_with_article('background', rng)} of {b}" if rng.random() < 0.5 else f"{b} coloured background"
    if kind == 3:
        return _with_article(f"plain {b} background", rng)
    return b  # "on blue"


def _form_on(scene, rng, words):
    comma = "," if rng.random() < 0.2 else ""
    return f"{_subject(scene, rng)}{_position(scene)}{comma} on {_background(scene, rng, True)}"


def _form_comma(scene, rng, words):
    return f"{_subject(scene, rng)}{_position(scene)}, {_background(scene, rng, False)}"


def _form_with(scene, rng, words):
    return f"{_background(scene, rng, False)} with {_subject(scene, rng)}{_position(scene)}"


def _form_background_first(scene, rng, words):
    return f"{_background(scene, rng, False)}, {_subject(scene, rng)}{_position(scene)}"


def _form_connected(scene, rng, words):
    """Either part first, nouns before or after their colours, and words the model never learns
    (noise words) joining them, sometimes in the background noun's place: which colour belongs
    to which noun must come from the order, whatever the connecting words are."""
    def link():
        return " ".join(_pick(rng, words) for _ in range(int(rng.integers(1, 3)))) if words else ","

    c, s, b = scene.colour, scene.shape, scene.background
    subject = _pick(rng, (f"{_with_article(_sized(scene, s), rng)} {link()} {c}", f"{_sized(scene, s)} {link()} {c}",
                          _subject(scene, rng))) + _position(scene)
    noun = "background" if rng.random() < 0.85 or not words else _pick(rng, words)
    backgrounds = [f"{noun} {link()} {b}", f"{_with_article(noun, rng)} {link()} {b}",
                   _with_article(f"{b} {noun}", rng)]
    if rng.random() < 0.5:
        return f"{subject} {link()} {_pick(rng, backgrounds + [b])}"
    return f"{_pick(rng, backgrounds)} {link()} {subject}"


def _form_grammar(scene, rng, words):
    return make_caption(scene.colour, scene.shape, scene.background, scene.size, scene.position)


# Tags people append or prepend; no colour, shape, size or place words among them.
TRAIN_PREFIXES = ("a photo of", "an image of", "a picture of", "a drawing of", "digital art of", "a painting of",
                  "clip art of", "a flat drawing of", "simple")
TRAIN_SUFFIXES = ("high quality", "4k", "simple", "minimalist", "flat colors", "detailed", "trending on artstation",
                  "clean", "sharp focus", "centered composition", "highly detailed", "digital art", "hd")

TRAIN_FORMS: dict[str, Callable] = {
    "grammar": _form_grammar,
    "on": _form_on,
    "comma": _form_comma,
    "with": _form_with,
    "background_first": _form_background_first,
}
TRAIN_FORM_WEIGHTS = (0.25, 0.3, 0.15, 0.15, 0.15)

# The third stage's mix: the forms above plus the connected form, which trained alone from the
# grammar stage read the held-out forms better but lost some of the above; started from the
# phrasings stage, the mix keeps what that stage learnt.
CONNECTED_FORMS: dict[str, Callable] = {**TRAIN_FORMS, "connected": _form_connected}
CONNECTED_FORM_WEIGHTS = (0.15, 0.2, 0.12, 0.12, 0.11, 0.3)
MIXES = {"phrasings": (TRAIN_FORMS, TRAIN_FORM_WEIGHTS), "connected": (CONNECTED_FORMS, CONNECTED_FORM_WEIGHTS)}


def _decorate(core: str, rng, prefixes, suffixes, filler_words=()) -> str:
    """Tags before/after, a random capital and full stop: what does not change the scene."""
    text = core
    if rng.random() < 0.15:
        text = f"{_pick(rng, prefixes)} {text}"
    if rng.random() < 0.25:
        tags = [_pick(rng, suffixes) for _ in range(int(rng.integers(1, 4)))]
        text += ", " + ", ".join(tags)
    if filler_words and rng.random() < 0.15:  # unknown words anywhere at the ends: noise to ignore
        words = [_pick(rng, filler_words) for _ in range(int(rng.integers(1, 3)))]
        text = f"{' '.join(words)} {text}" if rng.random() < 0.5 else f"{text}, {' '.join(words)}"
    if rng.random() < 0.3:
        text = text[0].upper() + text[1:]
    if rng.random() < 0.3:
        text += "."
    return text


def training_phrasing(scene: Scene, rng: np.random.Generator, filler_words: Sequence[str] = (),
                      mix: str = "phrasings") -> str:
    """One caption for ``scene`` drawn from a training stage's forms (``MIXES``)."""
    forms, weights = MIXES[mix]
    form = list(forms.values())[int(rng.choice(len(forms), p=weights))]
    core = form(scene, rng, filler_words)
    if form is _form_grammar:  # the grammar stays as it is most of the time
        return core if rng.random() < 0.7 else _decorate(core, rng, TRAIN_PREFIXES, TRAIN_SUFFIXES)
    return _decorate(core, rng, TRAIN_PREFIXES, TRAIN_SUFFIXES, filler_words)


# -- the phrasings the issue measured, each a fixed form -----------------------------------------
def _issue_sentence(s: Scene, rng):
    return make_caption(s.colour, s.shape, s.background).capitalize() + "."


ISSUE_FAMILIES: dict[str, Callable] = {
    "A red circle on a blue background.": _issue_sentence,
    "red circle on blue background": lambda s, rng: f"{s.colour} {s.shape} on {s.background} background",
    "red circle, blue background": lambda s, rng: f"{s.colour} {s.shape}, {s.background} background",
    "a blue background with a red circle":
        lambda s, rng: f"{_right_article(s.background)} {s.background} background with {_right_article(s.colour)} "
                       f"{s.colour} {s.shape}",
    "a circle, red, on blue": lambda s, rng: f"a {s.shape}, {s.colour}, on {s.background}",
    "a orange square on an yellow background":  # both articles wrong
        lambda s, rng: f"{_wrong_article(s.colour)} {s.colour} {s.shape} on {_wrong_article(s.background)} "
                       f"{s.background} background",
}


# -- held-out forms: never drawn in training ---------------------------------------------------
def _template(text: str) -> Callable:
    """A form from a template: {colour} {shape} {background}, and {a_subject} ("a red circle"),
    {a_background} ("a blue background"), {a_wall} ("a blue wall") with articles as people type them."""
    def form(s: Scene, rng) -> str:
        return text.format(colour=s.colour, shape=s.shape, background=s.background,
                           a_subject=_with_article(f"{s.colour} {s.shape}", rng),
                           a_background=_with_article(f"{s.background} background", rng),
                           a_wall=_with_article(f"{s.background} wall", rng))
    return form


HELD_OUT_FORMS: dict[str, Callable] = {name: _template(text) for name, text in {
    "a red circle against a blue background": "{a_subject} against {a_background}",
    "a blue background behind a red circle": "{a_background} behind {a_subject}",
    "on a blue background, a red circle": "on {a_background}, {a_subject}",
    "the background is blue and the circle is red": "the background is {background} and the {shape} is {colour}",
    "circle: red, background: blue": "{shape}: {colour}, background: {background}",
    "an illustration showing a red circle over blue, masterpiece":
        "an illustration showing {a_subject} over {background}, masterpiece",
    "blue background and a red circle": "{background} background and {a_subject}",
    "there is a red circle in front of a blue wall": "there is {a_subject} in front of {a_wall}",
}.items()}


def random_scene(combo: tuple[str, str, str], rng: np.random.Generator, p_size=0.3, p_position=0.3) -> Scene:
    size = SIZES[int(rng.integers(len(SIZES)))] if rng.random() < p_size else None
    position = POSITIONS[int(rng.integers(len(POSITIONS)))] if rng.random() < p_position else None
    return Scene(*combo, size=size, position=position)


_RESERVED = {
    # what a scene is made of, and words near enough to it to mislead when used as noise
    "background", "backdrop", "wall", "left", "right", "top", "bottom", "center", "centre", "middle", "small",
    "large", "big", "tiny", "huge", "round", "ball", "box", "rectangle", "oval", "dot", "disc", "disk", "star",
    "heart", "ring", "cube", "sphere", "pyramid", "crimson", "scarlet", "navy", "azure", "violet", "lavender",
    "gold", "golden", "amber", "lime", "olive", "teal", "cyan", "magenta", "pink", "brown", "grey", "gray",
    "silver", "ivory", "beige", "ebony", "dark", "light", "pale", "bright", "red", "green", "blue", "yellow",
    "purple", "orange", "white", "black", "circle", "square", "triangle", "hexagon", "ellipse", "colour", "color",
    "coloured", "colored", "against", "behind", "over", "front", "and", "is", "there", "showing", "illustration",
    "masterpiece", "on", "with", "in", "of",
}


def filler_vocabulary(tokenizer, n: int = 3000, seed: int = 0) -> list[str]:
    """``n`` whole words from the tokenizer's vocabulary (letters only, 3-10 long), none of them
    a scene word: noise words the model learns to ignore wherever they sit."""
    words = sorted(w[:-4] for w in tokenizer.encoder if w.endswith("</w>") and w[:-4].isalpha()
                   and w[:-4].isascii() and 3 <= len(w) - 4 <= 10 and w[:-4] not in _RESERVED)
    rng = np.random.default_rng(seed)
    return [words[i] for i in rng.choice(len(words), min(n, len(words)), replace=False)]
