"""Loading the output safety checker (a random-weight StableDiffusionSafetyChecker stands in for the real one)."""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image

from generation.safety import OutputChecker, SafetyCheckerLoadError, load_safety_checker

# --- loading ---------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("spec", [None, "", "   "])
def test_no_spec_means_no_checker(spec: str | None) -> None:
    assert load_safety_checker(spec) is None


@pytest.mark.parametrize("spec", ["/nonexistent/safety-checker", "./no/such/folder", "~/no-such-checker-here"])
def test_missing_folder_is_a_clear_error(spec: str) -> None:
    with pytest.raises(SafetyCheckerLoadError, match="no such folder") as info:
        load_safety_checker(spec)
    assert spec in str(info.value) and "generation.safety_checker" in str(info.value)


def test_file_instead_of_folder(tmp_path: Path) -> None:
    weights = tmp_path / "model.safetensors"
    weights.write_bytes(b"not really")
    with pytest.raises(SafetyCheckerLoadError, match="is a file"):
        load_safety_checker(str(weights))


def test_folder_without_config(tmp_path: Path) -> None:
    with pytest.raises(SafetyCheckerLoadError, match="no config.json"):
        load_safety_checker(str(tmp_path))


def test_broken_checker_folder(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(SafetyCheckerLoadError, match="cannot be loaded"):
        load_safety_checker(str(tmp_path))


def test_uncached_hub_id_offline(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path))
    with pytest.raises(SafetyCheckerLoadError, match="Offline mode") as info:
        load_safety_checker("nobody/no-such-safety-checker")
    message = str(info.value)
    assert "local cache" in message and "hub download" not in message and "huggingface-cli download" in message


def _save_tiny_checker(folder: Path, *, with_processor: bool = True) -> None:
    """A random-weight StableDiffusionSafetyChecker with a tiny CLIP vision tower (saves in well under a second)."""
    from diffusers.pipelines.stable_diffusion.safety_checker import StableDiffusionSafetyChecker
    from transformers import CLIPConfig, CLIPImageProcessor

    config = CLIPConfig(
        text_config={"hidden_size": 16, "intermediate_size": 32, "num_attention_heads": 2, "num_hidden_layers": 1,
                     "vocab_size": 64, "bos_token_id": 0, "eos_token_id": 1, "pad_token_id": 1},
        vision_config={"hidden_size": 16, "intermediate_size": 32, "num_attention_heads": 2, "num_hidden_layers": 1,
                       "image_size": 224, "patch_size": 32},
        projection_dim=8,
    )
    StableDiffusionSafetyChecker(config).save_pretrained(folder)
    if with_processor:
        CLIPImageProcessor().save_pretrained(folder)


@pytest.fixture(scope="module")
def tiny_checker_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("safety_checker")
    _save_tiny_checker(folder)
    return folder


def _images() -> list[Image.Image]:
    return [Image.new("RGB", (64, 48), "red"), Image.new("RGBA", (40, 50), (0, 0, 0, 0))]


def test_real_checker_loads_and_checks(tiny_checker_dir: Path) -> None:
    checker = load_safety_checker(str(tiny_checker_dir))
    assert checker is not None and isinstance(checker, OutputChecker)
    # Fresh checkers have every concept threshold at 1.0, which no cosine similarity exceeds.
    assert checker.check(_images()) == [False, False]
    assert checker.check([]) == []
    model = checker.model  # type: ignore[attr-defined]
    model.concept_embeds_weights.data.fill_(-2.0)  # now every image is "unsafe"
    assert checker.check(_images()) == [True, True]


def test_real_checker_from_a_pipeline_layout(tmp_path: Path) -> None:
    _save_tiny_checker(tmp_path / "safety_checker", with_processor=False)
    from transformers import CLIPImageProcessor

    CLIPImageProcessor().save_pretrained(tmp_path / "feature_extractor")
    (tmp_path / "model_index.json").write_text("{}")
    checker = load_safety_checker(str(tmp_path))
    assert checker is not None and checker.check(_images()[:1]) == [False]


def test_real_checker_without_processor_uses_clip_defaults(tmp_path: Path) -> None:
    _save_tiny_checker(tmp_path, with_processor=False)
    checker = load_safety_checker(str(tmp_path))
    assert checker is not None and checker.check(_images()[:1]) == [False]
