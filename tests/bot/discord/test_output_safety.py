"""Output safety: the policy decisions (with a fake checker) and the real diffusers loading path (tiny weights)."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from PIL import Image

from bot.config import ContentFilterSettings
from bot.discord.formatting import SPOILER_PREFIX
from bot.discord.output_safety import (
    OutputChecker,
    PolicyOutcome,
    SafetyCheckerLoadError,
    apply_policy,
    load_safety_checker,
    policy_for,
)


class RedChecker:
    """Fake checker at the edge: flags images whose top-left pixel is red."""

    def check(self, images: list[Image.Image]) -> list[bool]:
        return [image.convert("RGB").getpixel((0, 0)) == (255, 0, 0) for image in images]


def _png(colour: str) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), colour).save(buffer, format="PNG")
    return buffer.getvalue()


PNGS = [_png("blue"), _png("red"), _png("green")]


def test_fake_checker_satisfies_the_protocol() -> None:
    assert isinstance(RedChecker(), OutputChecker)


@pytest.mark.parametrize(("policy", "actions"), [
    ("block", ["send", "withheld", "send"]),
    ("spoiler", ["send", "spoiler", "send"]),
    ("allow", ["send", "send", "send"]),
])
def test_apply_policy_with_fake_checker(policy: str, actions: list[str]) -> None:
    flags = RedChecker().check([Image.open(io.BytesIO(png)) for png in PNGS])
    assert flags == [False, True, False]
    outcomes = apply_policy(PNGS, flags, policy)  # type: ignore[arg-type]
    assert [o.action for o in outcomes] == actions
    assert [o.index for o in outcomes] == [0, 1, 2]
    assert [o.flagged for o in outcomes] == flags
    for outcome, png in zip(outcomes, PNGS, strict=True):
        assert outcome.png == (None if outcome.withheld else png)


@pytest.mark.parametrize(("action", "name", "expected"), [
    ("spoiler", "42_0.png", "SPOILER_42_0.png"),
    ("spoiler", "SPOILER_42_0.png", "SPOILER_42_0.png"),
    ("send", "42_0.png", "42_0.png"),
])
def test_outcome_filename(action: str, name: str, expected: str) -> None:
    outcome = PolicyOutcome(0, action, b"png", action != "send")  # type: ignore[arg-type]
    assert outcome.filename(name) == expected
    assert expected.startswith(SPOILER_PREFIX) == outcome.is_spoiler


def test_apply_policy_rejects_mismatch_and_unknown_policy() -> None:
    with pytest.raises(ValueError, match="2 images but 1 safety flags"):
        apply_policy(PNGS[:2], [False], "block")
    with pytest.raises(ValueError, match="unknown safety policy"):
        apply_policy(PNGS, [False] * 3, "hide")  # type: ignore[arg-type]
    assert apply_policy([], [], "block") == []


SETTINGS = ContentFilterSettings(nsfw_policy="block", nsfw_channel_policy="spoiler")
LOOSE = ContentFilterSettings(nsfw_policy="spoiler", nsfw_channel_policy="allow")


@pytest.mark.parametrize(("settings", "nsfw_channel", "override", "expected"), [
    (SETTINGS, False, None, "block"),
    (SETTINGS, True, None, "spoiler"),
    (SETTINGS, True, "block", "block"),  # a guild may tighten
    (SETTINGS, True, "allow", "spoiler"),  # but never loosen the host's setting
    (SETTINGS, False, "allow", "block"),
    (LOOSE, False, None, "spoiler"),
    (LOOSE, True, None, "allow"),
    (LOOSE, True, "spoiler", "spoiler"),
    (LOOSE, False, "block", "block"),
])
def test_policy_for(settings: ContentFilterSettings, nsfw_channel: bool, override: str | None, expected: str) -> None:
    assert policy_for(nsfw_channel, settings, override) == expected  # type: ignore[arg-type]


def test_policy_for_rejects_unknown_override() -> None:
    with pytest.raises(ValueError, match="unknown safety policy"):
        policy_for(True, SETTINGS, "maybe")  # type: ignore[arg-type]


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
