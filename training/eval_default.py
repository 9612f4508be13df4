"""Measures how well a model follows synthetic-grammar prompts, with plain image analysis.

    python -m training.eval_default [--model tiny] [--unet DIR] [--n 240] [--out outputs/eval]

Reports, at 20 steps with the default sampler: background colour, shape colour and shape
kind accuracy on training combinations and on the held-out combinations; the same for prompts
typed other ways (training/captions.py): each phrasing family users were seen to type, and
each held-out phrasing that training never drew from, reported apart; and for inpainting (a box
over the shape of a generated image, a prompt naming a new shape and colour) how often the new
colour appears and whether the pixels outside the box survive.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from .evaluate import judge_region, outside_difference, score
from .synthetic import held_out_combinations, make_caption, training_combinations


def prompts_for(combos, n, seed):
    rng = np.random.default_rng(seed)
    picks = [combos[i % len(combos)] for i in rng.permutation(max(n, len(combos)))[:n]] if n >= len(combos) else [
        combos[i] for i in rng.choice(len(combos), n, replace=False)]
    return [make_caption(c, s, b) for c, s, b in picks]


def phrasing_suites(n, seed):
    """{group: {family: (prompts, scenes)}}: n prompts per phrasing family, on training
    combinations (the grammar's held-out combinations are measured by their own suite)."""
    from .captions import HELD_OUT_FORMS, ISSUE_FAMILIES, Scene

    rng = np.random.default_rng([seed, 3])
    combos = training_combinations()
    out = {}
    for group, forms in (("phrasings", ISSUE_FAMILIES), ("held_out_phrasings", HELD_OUT_FORMS)):
        out[group] = {}
        for family, form in forms.items():
            scenes = [Scene(*combos[i]) for i in rng.choice(len(combos), n, replace=n > len(combos))]
            out[group][family] = ([form(scene, rng) for scene in scenes], scenes)
    return out


def generate(pipe, prompts, steps, guidance, seed, batch=24, scheduler="ddim"):
    out = []
    for i in range(0, len(prompts), batch):
        chunk = prompts[i:i + batch]
        out.extend(pipe.generate(chunk, num_steps=steps, guidance_scale=guidance, seed=seed + i,
                                 batch_size=len(chunk), scheduler=scheduler).images)
    return out


def inpaint_eval(pipe, n, steps, guidance, seed):
    """Box mask over the centre; the prompt names a different colour and shape there."""
    from .synthetic import COLOURS, SHAPES

    rng = np.random.default_rng(seed)
    combos = training_combinations()
    colour_ok, diffs, cases = 0, [], []
    size = pipe.default_size
    mask = np.zeros((size, size), np.uint8)
    lo, hi = size // 8, size - size // 8
    mask[lo:hi, lo:hi] = 255
    for k in range(n):
        c, s, b = combos[rng.integers(len(combos))]
        base = pipe.generate(make_caption(c, s, b), num_steps=steps, guidance_scale=guidance, seed=seed + k).images[0]
        new_c = [x for x in COLOURS if x not in (c, b)][rng.integers(len(COLOURS) - 2)]
        new_s = [x for x in SHAPES if x != s][rng.integers(len(SHAPES) - 1)]
        prompt = make_caption(new_c, new_s, b)
        out = pipe.generate(prompt, image=base, mask=mask, num_steps=steps, guidance_scale=guidance,
                            seed=seed + 1000 + k).images[0]
        region = judge_region(out, mask)
        fractions = {name: f for name, f in region.fractions.items() if name != b}
        got = max(fractions, key=fractions.get)
        colour_ok += got == new_c
        diffs.append(outside_difference(base, out, mask))
        cases.append((base, out, prompt, got))
    return {"n": n, "new_colour": colour_ok / n, "max_outside_difference": float(np.max(diffs)),
            "mean_outside_difference": float(np.mean(diffs))}, cases


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m training.eval_default", description=__doc__.split("\n")[0])
    p.add_argument("--model", default="tiny")
    p.add_argument("--unet", default=None)
    p.add_argument("--n", type=int, default=240, help="prompts from the training combinations")
    p.add_argument("--n-inpaint", type=int, default=50)
    p.add_argument("--n-phrasing", type=int, default=48, help="prompts per phrasing family (0 skips them)")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--guidance", type=float, default=7.5)
    p.add_argument("--scheduler", default="ddim")
    p.add_argument("--seed", type=int, default=100)
    p.add_argument("--out", default="outputs/eval")
    p.add_argument("--shapes", default=None, help="comma-separated shapes for a fine-tuning check, e.g. ellipse")
    p.add_argument("--dtype", default="float32", help='e.g. "bfloat16" to measure its quality cost')
    args = p.parse_args(argv)

    from models import load_pipeline
    from training.plots import save_grid

    pipe = load_pipeline(args.model, unet=args.unet, dtype=args.dtype)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    report = {"model": args.model, "unet": args.unet, "steps": args.steps, "guidance": args.guidance,
              "scheduler": args.scheduler, "dtype": args.dtype}
    if args.shapes:
        from .synthetic import all_combinations

        shapes = tuple(args.shapes.split(","))
        suites = {"custom": [c for c in all_combinations(shapes + ("circle",)) if c[1] in shapes]}
    else:
        suites = {"train": training_combinations(), "held_out": held_out_combinations()}
    for name, combos in suites.items():
        n = args.n if name != "held_out" else max(len(combos) * 10, 60)
        prompts = prompts_for(combos, n, args.seed)
        images = generate(pipe, prompts, args.steps, args.guidance, args.seed, scheduler=args.scheduler)
        result = score(images, prompts)
        report[name] = {k: result[k] for k in ("background", "colour", "shape", "all", "n")}
        save_grid(images[:8], out / f"{name}_samples.png", captions=prompts[:8])
        print(f"{name}: n={result['n']} background {result['background']:.1%} colour {result['colour']:.1%} "
              f"shape {result['shape']:.1%}")
    if not args.shapes and args.n_phrasing:
        for group, families in phrasing_suites(args.n_phrasing, args.seed).items():
            report[group], firsts = {}, []
            for family, (prompts, scenes) in families.items():
                images = generate(pipe, prompts, args.steps, args.guidance, args.seed, scheduler=args.scheduler)
                result = score(images, scenes)
                report[group][family] = {key: result[key] for key in ("background", "colour", "shape", "all", "n")}
                report[group][family]["example"] = prompts[0]
                firsts.append((images[0], prompts[0]))
                print(f"{group} {family!r}: background {result['background']:.1%} colour {result['colour']:.1%} "
                      f"shape {result['shape']:.1%}")
            save_grid([im for im, _ in firsts], out / f"{group}_samples.png", captions=[t for _, t in firsts])
    if not args.shapes and args.n_inpaint:
        inp, cases = inpaint_eval(pipe, args.n_inpaint, args.steps, args.guidance, args.seed)
        report["inpaint"] = inp
        grid = [im for base, after, _, _ in cases[:4] for im in (base, after)]
        save_grid(grid, out / "inpaint_samples.png",
                  captions=[t for _, _, prompt, _ in cases[:4] for t in ("before", prompt)])
        print(f"inpaint: n={inp['n']} new colour {inp['new_colour']:.1%}, outside max diff "
              f"{inp['max_outside_difference']:.2f}")
    report["seconds"] = round(time.perf_counter() - t0, 1)
    (out / "report.json").write_text(json.dumps(report, indent=1))
    print(f"wrote {out / 'report.json'}")
    return report


if __name__ == "__main__":
    main()
