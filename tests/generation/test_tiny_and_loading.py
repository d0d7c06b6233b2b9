"""The offline tokenizer, the ``tiny`` pipeline, scheduler names and every way ``load_pipeline`` can go.

Everything runs the real diffusers/transformers classes with no network and no downloaded weights.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from diffusers import StableDiffusionPipeline
from diffusers.models.attention_processor import AttnProcessor2_0
from transformers import CLIPTokenizer

from generation.loading import (
    LoadedModel,
    ModelLoadError,
    load_pipeline,
    original_state_dict,
    resolve_dtype,
    save_single_file,
)
from generation.schedulers import (
    SAMPLER_LABELS,
    SCHEDULER_NAMES,
    SCHEDULERS,
    UnknownSchedulerError,
    make_scheduler,
    resolve_scheduler_name,
)
from generation.settings import GenerationSettings
from generation.tiny import SD_SCHEDULER_CONFIG, build_tiny_pipeline
from generation.tokenizer import build_offline_clip_tokenizer, is_truncated, prompt_token_count


@pytest.fixture(scope="module")
def tiny() -> StableDiffusionPipeline:
    return build_tiny_pipeline()


@pytest.fixture(scope="module")
def tokenizer() -> CLIPTokenizer:
    return build_offline_clip_tokenizer()


def _image(pipe: StableDiffusionPipeline, seed: int = 3) -> np.ndarray:
    out = pipe("a red cat", negative_prompt="blurry", num_inference_steps=3, width=64, height=64,
               generator=torch.Generator("cpu").manual_seed(seed), output_type="np")
    return out.images[0]


# --------------------------------------------------------------------------- tokenizer


def test_tokenizer_follows_clip_conventions(tokenizer: CLIPTokenizer) -> None:
    assert isinstance(tokenizer, CLIPTokenizer)
    assert tokenizer.model_max_length == 77
    assert tokenizer.bos_token == "<|startoftext|>" and tokenizer.eos_token == "<|endoftext|>"
    assert tokenizer.pad_token_id == tokenizer.eos_token_id
    ids = tokenizer("A Portrait PHOTO of a cat", padding="max_length", max_length=77, truncation=True).input_ids
    assert len(ids) == 77
    assert ids[0] == tokenizer.bos_token_id
    tokens = tokenizer.convert_ids_to_tokens(ids[1:7])
    # lower-cased, learned merges make whole words, word ends carry </w>
    assert tokens == ["a</w>", "portrait</w>", "photo</w>", "of</w>", "a</w>", "cat</w>"]
    assert ids[7:] == [tokenizer.eos_token_id] * 70


def test_tokenizer_encodes_any_text_without_unknowns(tokenizer: CLIPTokenizer) -> None:
    text = "zebra-ish ✨ 日本語 émoji 🐱, x²"
    ids = tokenizer(text).input_ids
    inner = ids[1:-1]
    assert tokenizer.unk_token_id not in inner  # every byte has a symbol
    assert tokenizer.decode(ids, skip_special_tokens=True).replace(" ", "") == text.lower().replace(" ", "")


def test_tokenizer_is_identical_every_time_and_after_save(tokenizer: CLIPTokenizer, tmp_path) -> None:
    again = build_offline_clip_tokenizer()
    assert again.get_vocab() == tokenizer.get_vocab()
    tokenizer.save_pretrained(tmp_path)
    reloaded = CLIPTokenizer.from_pretrained(tmp_path)
    text = "highly detailed landscape painting, golden hour"
    assert reloaded(text).input_ids == tokenizer(text).input_ids
    assert reloaded.model_max_length == 77


def test_truncation_is_detected_at_77_tokens(tokenizer: CLIPTokenizer) -> None:
    assert prompt_token_count(tokenizer, "cat " * 75) == 77
    assert not is_truncated(tokenizer, "cat " * 75)
    assert is_truncated(tokenizer, "cat " * 76)
    assert not is_truncated(tokenizer, "")


# --------------------------------------------------------------------------- tiny


def test_tiny_is_a_real_sd_pipeline_with_8x_latents(tiny: StableDiffusionPipeline) -> None:
    assert isinstance(tiny, StableDiffusionPipeline)
    assert tiny.safety_checker is None and tiny.feature_extractor is None
    assert len(tiny.vae.config.block_out_channels) == 4 and tiny.vae_scale_factor == 8
    assert tiny.vae.config.latent_channels == 4 and tiny.vae.config.scaling_factor == pytest.approx(0.18215)
    assert tiny.unet.config.cross_attention_dim == tiny.text_encoder.config.hidden_size
    assert "CrossAttnDownBlock2D" in tiny.unet.config.down_block_types
    assert tiny.text_encoder.config.max_position_embeddings == 77
    assert tiny.text_encoder.config.vocab_size == len(tiny.tokenizer)
    latents = tiny("x", num_inference_steps=1, width=128, height=64, output_type="latent",
                   generator=torch.Generator().manual_seed(0)).images
    assert tuple(latents.shape) == (1, 4, 8, 16)
    # diffusers' default attention is PyTorch SDPA
    assert all(isinstance(p, AttnProcessor2_0) for p in tiny.unet.attn_processors.values())


def test_tiny_weights_are_deterministic_and_global_rng_is_untouched() -> None:
    torch.manual_seed(1234)
    expected = torch.rand(3)
    torch.manual_seed(1234)
    a = build_tiny_pipeline()
    after = torch.rand(3)
    assert torch.equal(after, expected)
    b = build_tiny_pipeline()
    for name in ("unet", "vae", "text_encoder"):
        sa, sb = getattr(a, name).state_dict(), getattr(b, name).state_dict()
        assert all(torch.equal(sa[k], sb[k]) for k in sa), name


# --------------------------------------------------------------------------- schedulers


@pytest.mark.parametrize("name", SCHEDULER_NAMES)
def test_every_scheduler_keeps_the_model_noise_schedule(name: str) -> None:
    scheduler = make_scheduler(name, SD_SCHEDULER_CONFIG)
    assert isinstance(scheduler, SCHEDULERS[name][0])
    assert scheduler.config.beta_schedule == "scaled_linear"
    assert scheduler.config.beta_end == pytest.approx(0.012)
    scheduler.set_timesteps(5)
    assert len(scheduler.timesteps) >= 5
    assert name in SAMPLER_LABELS


def test_scheduler_names_labels_and_errors() -> None:
    assert SAMPLER_LABELS["euler_a"] == "Euler a" and SAMPLER_LABELS["pndm"] == "PLMS"
    assert SAMPLER_LABELS["dpmpp_2m"] == "DPM++ 2M"
    assert resolve_scheduler_name("Euler a") == "euler_a"
    assert resolve_scheduler_name(" DPM++ 2M ") == "dpmpp_2m"
    assert make_scheduler("dpmpp_2m", SD_SCHEDULER_CONFIG).config.algorithm_type == "dpmsolver++"
    with pytest.raises(UnknownSchedulerError) as info:
        make_scheduler("k_warp", SD_SCHEDULER_CONFIG)
    assert "k_warp" in str(info.value)
    assert all(name in str(info.value) for name in SCHEDULER_NAMES)


def test_make_scheduler_returns_a_fresh_object_each_time() -> None:
    a = make_scheduler("dpmpp_2m", SD_SCHEDULER_CONFIG)
    b = make_scheduler("dpmpp_2m", SD_SCHEDULER_CONFIG)
    a.set_timesteps(7)
    assert a is not b and b.num_inference_steps is None


# --------------------------------------------------------------------------- loading


def _settings(model: str, **kw) -> GenerationSettings:
    return GenerationSettings(model=model, device="cpu", **kw)


def test_load_tiny(tiny: StableDiffusionPipeline) -> None:
    loaded = load_pipeline(_settings("tiny"))
    assert isinstance(loaded, LoadedModel)
    assert loaded.name == "tiny" and not loaded.is_fallback and loaded.banner is None
    assert loaded.device == torch.device("cpu") and loaded.dtype == torch.float32
    assert np.array_equal(_image(loaded.pipeline), _image(tiny))


def test_dtype_defaults() -> None:
    assert resolve_dtype("auto", torch.device("cpu")) == torch.float32
    assert resolve_dtype("auto", torch.device("cuda")) == torch.float16
    assert resolve_dtype("bf16", torch.device("cuda")) == torch.bfloat16


def test_folder_round_trip_gives_the_same_image(tiny: StableDiffusionPipeline, tmp_path) -> None:
    folder = tmp_path / "my-model"
    tiny.save_pretrained(folder)
    loaded = load_pipeline(_settings(str(folder)))
    assert loaded.name == "my-model" and not loaded.is_fallback
    assert np.array_equal(_image(loaded.pipeline), _image(tiny))


def test_memory_switches_are_applied(tiny: StableDiffusionPipeline) -> None:
    from diffusers.models.attention_processor import SlicedAttnProcessor

    loaded = load_pipeline(_settings("tiny", attention_slicing=True, vae_tiling=True, cpu_offload=True))
    assert loaded.pipeline.vae.use_tiling
    assert any(isinstance(p, SlicedAttnProcessor) for p in loaded.pipeline.unet.attn_processors.values())
    # slicing changes the summation order only: same image up to float rounding
    assert np.allclose(_image(loaded.pipeline), _image(tiny), atol=1e-4)


def test_single_file_in_original_layout_round_trip(tiny: StableDiffusionPipeline, tmp_path) -> None:
    state = original_state_dict(tiny)
    # the keys web UIs use
    assert "model.diffusion_model.input_blocks.0.0.weight" in state
    assert "model.diffusion_model.middle_block.1.transformer_blocks.0.attn2.to_k.weight" in state
    assert "first_stage_model.decoder.up.0.block.0.conv1.weight" in state
    assert state["first_stage_model.encoder.mid.attn_1.q.weight"].ndim == 4
    assert "cond_stage_model.transformer.text_model.embeddings.position_embedding.weight" in state
    path = save_single_file(tiny, tmp_path / "tiny.safetensors")
    loaded = load_pipeline(_settings(str(path)))
    assert loaded.name == "tiny.safetensors"
    for name in ("unet", "vae", "text_encoder"):
        want, got = getattr(tiny, name).state_dict(), getattr(loaded.pipeline, name).state_dict()
        assert want.keys() == got.keys(), name
        assert all(torch.equal(want[k], got[k]) for k in want), name
    assert np.array_equal(_image(loaded.pipeline), _image(tiny))


def test_ckpt_file_loads_too(tiny: StableDiffusionPipeline, tmp_path) -> None:
    path = tmp_path / "tiny.ckpt"
    torch.save({"state_dict": original_state_dict(tiny)}, path)
    loaded = load_pipeline(_settings(str(path)))
    assert np.array_equal(_image(loaded.pipeline), _image(tiny))


def test_hub_id_without_network_is_a_clear_error(monkeypatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # fail fast instead of trying the network
    with pytest.raises(ModelLoadError) as info:
        load_pipeline(_settings("someone/not-a-cached-model"))
    message = str(info.value)
    assert "someone/not-a-cached-model" in message and "cache" in message
    assert "local diffusers folder" in message and "'tiny'" in message


@pytest.mark.parametrize("name", ["missing.safetensors", "nowhere/dir/model.ckpt", "./gone"])
def test_missing_path_is_a_clear_error(tmp_path, name: str) -> None:
    with pytest.raises(ModelLoadError, match="no such file or folder"):
        load_pipeline(_settings(str(tmp_path / name)))


def test_garbage_checkpoint_is_a_clear_error(tmp_path) -> None:
    for suffix in (".safetensors", ".ckpt"):
        path = tmp_path / f"broken{suffix}"
        path.write_bytes(b"this is not a checkpoint at all" * 10)
        with pytest.raises(ModelLoadError, match="not a readable"):
            load_pipeline(_settings(str(path)))


def test_wrong_kind_of_file_or_folder_is_a_clear_error(tmp_path) -> None:
    text = tmp_path / "notes.txt"
    text.write_text("hello")
    with pytest.raises(ModelLoadError, match=r"expected a folder or one of"):
        load_pipeline(_settings(str(text)))
    with pytest.raises(ModelLoadError, match="no model_index.json"):
        load_pipeline(_settings(str(tmp_path)))
    from safetensors.torch import save_file

    other = tmp_path / "lora.safetensors"
    save_file({"lora_unet_down.weight": torch.zeros(2)}, str(other))
    with pytest.raises(ModelLoadError, match="not a Stable Diffusion checkpoint"):
        load_pipeline(_settings(str(other)))


def test_broken_folder_is_a_clear_error(tiny: StableDiffusionPipeline, tmp_path) -> None:
    folder = tmp_path / "broken"
    tiny.save_pretrained(folder)
    (folder / "unet" / "config.json").write_text(json.dumps({"oops": True}))
    for weights in (folder / "unet").glob("*.safetensors"):
        weights.write_bytes(b"garbage")
    with pytest.raises(ModelLoadError, match="could not load the diffusers folder"):
        load_pipeline(_settings(str(folder)))


def test_fallback_to_tiny_has_a_banner(monkeypatch, tmp_path) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    loaded = load_pipeline(_settings(str(tmp_path / "absent.safetensors"), fallback_to_tiny=True))
    assert loaded.is_fallback and loaded.name == "tiny"
    assert loaded.banner and "absent.safetensors" in loaded.banner and "generation.model" in loaded.banner
    assert isinstance(loaded.pipeline, StableDiffusionPipeline)


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_asking_for_a_missing_gpu_is_a_clear_error() -> None:
    with pytest.raises(ModelLoadError, match="generation.device"):
        load_pipeline(GenerationSettings(model="tiny", device="cuda"))
