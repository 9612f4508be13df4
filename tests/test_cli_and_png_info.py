"""The generate/inpaint command line and the PNG parameters chunk."""

import numpy as np
from PIL import Image

from models.png_info import format_parameters, parse_parameters, png_bytes, read_parameters


def test_parameters_round_trip():
    params = dict(prompt="a red circle, on blue", negative_prompt="green\nblurry", steps=20, guidance=7.5,
                  seed=42, scheduler="dpmpp_2m", width=64, height=64, model="tiny")
    text = format_parameters(params)
    assert "Steps: 20, Sampler: dpmpp_2m, CFG scale: 7.5, Seed: 42, Size: 64x64, Model: tiny" in text
    back = parse_parameters(text)
    for key in ("prompt", "negative_prompt", "steps", "guidance", "seed", "scheduler", "width", "height", "model"):
        assert back[key] == params[key], key
    image = np.zeros((8, 8, 3), np.uint8)
    assert read_parameters(png_bytes(image, params))["seed"] == 42
    assert read_parameters(png_bytes(image)) is None


def test_generate_and_inpaint_commands(tmp_path, capsys):
    from models.__main__ import main

    out = tmp_path / "a.png"
    assert main(["generate", "--model", "tiny", "--prompt", "a red circle on a blue background", "--steps", "2",
                 "--seed", "5", "--out", str(out)]) == 0
    params = read_parameters(str(out))
    assert params["seed"] == 5 and params["steps"] == 2 and params["prompt"] == "a red circle on a blue background"
    image = np.asarray(Image.open(out))
    mask = np.zeros(image.shape[:2], np.uint8)
    mask[16:48, 16:48] = 255
    Image.fromarray(mask).save(tmp_path / "mask.png")
    out2 = tmp_path / "b.png"
    assert main(["inpaint", "--model", "tiny", "--image", str(out), "--mask", str(tmp_path / "mask.png"),
                 "--prompt", "a green square", "--steps", "2", "--seed", "1", "--out", str(out2)]) == 0
    after = np.asarray(Image.open(out2))
    np.testing.assert_array_equal(after[mask == 0], image[mask == 0])
    assert main(["generate", "--model", "tiny", "--prompt", "x", "--steps", "0", "--out", str(tmp_path / "c.png")]) == 2
    assert "num_steps" in capsys.readouterr().err
