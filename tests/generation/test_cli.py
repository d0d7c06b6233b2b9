"""``imagine-bot generate``: a real tiny run end to end, and one-line errors with exit status 2."""

from __future__ import annotations

from pathlib import Path

import pytest

from generation.cli import generate_main, output_paths

pytestmark = pytest.mark.timeout(120)


def test_tiny_run_writes_a_png_with_its_parameters(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from generation.png import read_parameters

    out = tmp_path / "x.png"
    code = generate_main(["a tea garden with mist", "--model", "tiny", "--device", "cpu", "-o", str(out),
                          "--seed", "1", "--steps", "4", "--width", "256", "--height", "256"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert out.read_bytes().startswith(b"\x89PNG\r\n\x1a\n")
    text = read_parameters(out.read_bytes())
    assert text is not None and "a tea garden with mist" in text and "Seed: 1" in text and "Steps: 4" in text
    assert str(out) in captured.out and "seed 1" in captured.out
    assert "4/4" in captured.err  # the progress bar reached the end


def test_count_writes_numbered_files(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "many.png"
    code = generate_main(["two of them", "--model", "tiny", "--device", "cpu", "-o", str(out), "--seed", "5",
                          "--steps", "2", "--width", "256", "--height", "256", "--count", "2", "--no-progress"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert (tmp_path / "many-1.png").is_file() and (tmp_path / "many-2.png").is_file()
    assert not out.exists()
    assert "seed 5" in captured.out and "seed 6" in captured.out


def test_output_paths() -> None:
    assert output_paths(Path("o/out.png"), 1) == [Path("o/out.png")]
    assert output_paths(Path("o/out.png"), 3) == [Path("o/out-1.png"), Path("o/out-2.png"), Path("o/out-3.png")]


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["cat", "--width", "300"], "error: width must be a multiple of 8 between 256 and 1024 (got 300)."),
        (["   "], "error: prompt must not be empty."),
        (["cat", "--steps", "0"], "error: steps must be a whole number between 1 and 50 (got 0)."),
        (["cat", "--scheduler", "nope"], "error: scheduler must be one of"),
        (["cat", "--count", "9"], "error: count must be a whole number between 1 and 4 (got 9)."),
    ],
)
def test_invalid_options_print_one_line_and_exit_2(argv: list[str], message: str, tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    code = generate_main([*argv, "-o", str(tmp_path / "x.png"), "--model", "tiny"])
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith(message) and err.count("\n") == 1 and "Traceback" not in err
    assert not (tmp_path / "x.png").exists()


def test_model_that_cannot_load_prints_one_line_and_exits_2(tmp_path: Path,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    missing = tmp_path / "nowhere" / "model.safetensors"
    code = generate_main(["cat", "--model", str(missing), "--device", "cpu", "-o", str(tmp_path / "x.png"),
                          "--width", "256", "--height", "256"])
    err = capsys.readouterr().err
    assert code == 2
    assert "Traceback" not in err
    last = err.strip().splitlines()[-1]
    assert last.startswith("error: ") and str(missing) in last


def test_bad_config_file_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "config.yaml"
    config.write_text("generation:\n  max_steps: -3\n", encoding="utf-8")
    code = generate_main(["cat", "--config", str(config), "-o", str(tmp_path / "x.png")])
    err = capsys.readouterr().err
    assert code == 2 and "generation.max_steps" in err and "Traceback" not in err
    assert generate_main(["cat", "--config", str(tmp_path / "absent.yaml")]) == 2


def test_config_section_bounds_apply(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "config.yaml"
    config.write_text("generation:\n  model: tiny\n  max_steps: 10\n  default_steps: 5\n", encoding="utf-8")
    code = generate_main(["cat", "--config", str(config), "--steps", "11", "-o", str(tmp_path / "x.png")])
    assert code == 2
    assert "steps must be a whole number between 1 and 10 (got 11)." in capsys.readouterr().err


def test_missing_output_folder_and_bad_argument_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert generate_main(["cat", "--model", "tiny", "-o", str(tmp_path / "no" / "x.png")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert generate_main(["cat", "--seed", "abc"]) == 2


def test_img2img_and_upscale_from_a_file(tmp_path: Path, capsys: pytest.CaptureFixture[str], picture) -> None:
    from PIL import Image

    start = tmp_path / "start.jpg"
    start.write_bytes(picture((96, 64), fmt="JPEG"))
    out = tmp_path / "varied.png"
    common = ["--model", "tiny", "--device", "cpu", "--seed", "3", "--steps", "4", "--no-progress"]
    code = generate_main(["a tea garden", "--image", str(start), "--strength", "0.5", "-o", str(out), *common])
    assert code == 0, capsys.readouterr().err
    with Image.open(out) as image:
        assert image.size == (384, 256)  # the start image brought within the size bounds (min_size 256)
        assert "Denoising strength: 0.5" in image.text["parameters"]
    big = tmp_path / "big.png"
    code = generate_main(["a tea garden", "--image", str(out), "--upscale", "2", "-o", str(big), *common,
                          "--config", str(_config(tmp_path, "max_upscale_pixels: 262144"))])
    assert code == 0, capsys.readouterr().err
    with Image.open(big) as image:
        assert image.size == (576, 384)  # 768x512 is over the cap: shrunk to 262144 pixels, multiples of 64
        assert "Hires upscale: 2" in image.text["parameters"]


def _config(tmp_path: Path, line: str) -> Path:
    config = tmp_path / "config.yaml"
    config.write_text(f"generation:\n  {line}\n", encoding="utf-8")
    return config


@pytest.mark.parametrize(("argv", "message"), [
    (["--image", "MISSING"], "error: cannot read the image"),
    (["--image", "TEXT"], "error: the image could not be read; send a PNG, JPEG or WebP file."),
    (["--strength", "0.5"], "error: strength needs an image to start from; attach one."),
    (["--style", "noir"], "error: style must be one of: none are configured (got noir)."),
])
def test_image_options_refused_with_one_line(argv: list[str], message: str, tmp_path: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "notes.txt").write_text("not a picture", encoding="utf-8")
    argv = [str(tmp_path / "absent.png") if a == "MISSING" else str(tmp_path / "notes.txt") if a == "TEXT" else a
            for a in argv]
    code = generate_main(["cat", *argv, "--model", "tiny", "-o", str(tmp_path / "x.png")])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith(message) and err.count("\n") == 1
