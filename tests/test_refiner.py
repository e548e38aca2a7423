"""TSD-SR refiner end to end on a tiny random SD3 (4-layer MMDiT + SD3-structured VAE) saved in diffusers layout,
with LoRA files written by peft in TSD-SR's key layout, all loaded through the real loader."""

from __future__ import annotations

import copy
import dataclasses
import shutil
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from tiny_refiner import (
    TSDSR_VAE_TARGET_MODULES,
    TinySetup,
    inject_tsdsr_lora,
    tiny_vae,
    tsdsr_lora_state,
    write_tiny_setup,
)

from pipeline.core.config import load_config
from pipeline.refiner import (
    LoRAFormatError,
    RefinerConfig,
    RefinerError,
    RefinerFileNotFoundError,
    RefinerWeightsError,
)
from pipeline.refiner.files import load_embedding
from pipeline.refiner.loading import load_transformer, load_vae
from pipeline.refiner.lora import transformer_lora_targets, vae_lora_targets
from pipeline.refiner.tsdsr import TIMESTEP, TSDSRRefiner

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    # The tiny models are dominated by per-op overhead; a second thread only adds synchronisation (and is very slow
    # when other processes share the two cores).
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def setup(tmp_path_factory) -> TinySetup:
    return write_tiny_setup(tmp_path_factory.mktemp("tsdsr"))


@pytest.fixture(scope="module")
def refiner(setup) -> TSDSRRefiner:
    return TSDSRRefiner.from_config(setup.config)


def _variant(refiner: TSDSRRefiner, cfg: RefinerConfig, *, transformer=None, vae=None) -> TSDSRRefiner:
    """Same loaded components (or the given ones), another config."""
    return TSDSRRefiner(
        transformer=refiner.transformer if transformer is None else transformer,
        vae=refiner.vae if vae is None else vae,
        prompt_embeds=refiner.prompt_embeds,
        pooled_embeds=refiner.pooled_embeds,
        config=cfg,
    )


def _image(batch: int = 1, size: tuple[int, int] = (32, 32), seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    base = torch.rand(batch, 3, 6, 6, generator=gen)
    return F.interpolate(base, size=size, mode="bicubic", align_corners=False).clamp(0, 1)


# ---------------------------------------------------------------------------------------------------------------------
# the refiner changes its input, and the LoRA changes the refiner
# ---------------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("colour_fix", ["wavelet", "adain", "none"])
def test_output_is_a_valid_image_that_differs_from_the_input(refiner, colour_fix):
    sr = _image(batch=2)
    out = _variant(refiner, dataclasses.replace(refiner.config, colour_fix=colour_fix))(sr)
    assert out.shape == sr.shape and out.dtype == torch.float32
    assert torch.isfinite(out).all() and out.min() >= 0 and out.max() <= 1
    assert (out - sr).abs().mean() > 0.01, "the refiner returned (almost) its input"
    assert not torch.equal(out[0], out[1])


def test_lora_changes_the_output_and_only_the_target_layers(setup, refiner):
    cfg = dataclasses.replace(setup.config, deterministic=True)
    base_transformer = load_transformer(cfg.base_path, dtype=torch.float32)
    base_vae = load_vae(cfg.base_path, dtype=torch.float32)
    without = _variant(refiner, cfg, transformer=base_transformer, vae=base_vae)
    with_lora = _variant(refiner, cfg)
    sr = _image()
    assert (with_lora(sr) - without(sr)).abs().mean() > 0.01
    # merged layers changed; layers that TSD-SR does not adapt are untouched
    merged_t, base_t = refiner.transformer.state_dict(), base_transformer.state_dict()
    merged_v, base_v = refiner.vae.state_dict(), base_vae.state_dict()
    for name in transformer_lora_targets(base_transformer):
        assert not torch.equal(merged_t[f"{name}.weight"], base_t[f"{name}.weight"]), name
    for name in vae_lora_targets(base_vae):
        assert not torch.equal(merged_v[f"{name}.weight"], base_v[f"{name}.weight"]), name
    assert torch.equal(
        merged_t["time_text_embed.timestep_embedder.linear_1.weight"],
        base_t["time_text_embed.timestep_embedder.linear_1.weight"],
    )
    assert all(torch.equal(merged_v[k], base_v[k]) for k in base_v if k.startswith("decoder."))


def test_merged_lora_equals_peft_unmerged_reference(setup, refiner):
    """The files were written by peft from models whose forward is base + unmerged LoRA: same output."""
    cfg = dataclasses.replace(setup.config, deterministic=True)
    reference = TSDSRRefiner(
        transformer=setup.reference_transformer,
        vae=setup.reference_vae,
        prompt_embeds=setup.prompt_embeds.unsqueeze(0),
        pooled_embeds=setup.pooled_embeds.unsqueeze(0),
        config=cfg,
    )
    sr = _image(size=(32, 48))
    torch.testing.assert_close(_variant(refiner, cfg)(sr), reference(sr), rtol=1e-4, atol=1e-4)


def test_vae_targets_match_peft_with_tsdsr_list_including_quant_conv():
    vae = tiny_vae(quant_conv=True)
    ours = set(vae_lora_targets(vae))
    assert "quant_conv" in ours and "post_quant_conv" not in ours
    peft_vae = inject_tsdsr_lora(
        tiny_vae(quant_conv=True), target_modules=TSDSR_VAE_TARGET_MODULES, rank=2, seed=0, std=0.1
    )
    peft_targets = {
        k[len("transformer.") : -len(".lora_A.weight")] for k in tsdsr_lora_state(peft_vae) if "lora_A" in k
    }
    assert ours == peft_targets


# ---------------------------------------------------------------------------------------------------------------------
# the one step, the whole pipeline, tiling
# ---------------------------------------------------------------------------------------------------------------------
@torch.no_grad()
def test_one_step_update_is_z_minus_v(refiner):
    gen = torch.Generator().manual_seed(3)
    z = torch.randn(1, 16, 4, 4, generator=gen)  # fits in one latent tile
    v = refiner.transformer(
        hidden_states=z,
        timestep=torch.tensor([1000.0]),
        encoder_hidden_states=refiner.prompt_embeds,
        pooled_projections=refiner.pooled_embeds,
    ).sample
    assert TIMESTEP == 1000.0
    torch.testing.assert_close(refiner.refine_latent(z), z - v, rtol=1e-6, atol=1e-6)
    # an analytic v through the tiled path (8x12 latent, tiles of 4): z - (0.25 z + 1) exactly
    tiled = _variant(refiner, refiner.config)
    tiled._velocity = lambda t: 0.25 * t + 1.0  # type: ignore[method-assign]
    z = torch.randn(1, 16, 8, 12, generator=gen)
    torch.testing.assert_close(tiled.refine_latent(z), 0.75 * z - 1.0, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("deterministic", [True, False])
@torch.no_grad()
def test_pipeline_equals_hand_composition(refiner, deterministic):
    cfg = dataclasses.replace(refiner.config, deterministic=deterministic, colour_fix="none", latent_tile=64, seed=7)
    sr = _image(size=(32, 48))
    x = sr * 2 - 1
    dist = refiner.vae.encode(x).latent_dist
    latent = dist.mean
    if not deterministic:
        latent = dist.mean + dist.std * torch.randn(dist.mean.shape, generator=torch.Generator().manual_seed(7))
    z = latent * refiner.vae.config.scaling_factor
    v = refiner.transformer(
        hidden_states=z,
        timestep=torch.tensor([1000.0]),
        encoder_hidden_states=refiner.prompt_embeds,
        pooled_projections=refiner.pooled_embeds,
    ).sample
    y = refiner.vae.decode((z - v) / refiner.vae.config.scaling_factor).sample
    want = ((y.clamp(-1, 1) + 1) / 2).clamp(0, 1)
    torch.testing.assert_close(_variant(refiner, cfg)(sr), want, rtol=1e-5, atol=1e-5)


@torch.no_grad()
def test_tiled_latents_equal_untiled_for_a_token_local_transformer(refiner):
    """With attention outputs and positional embeddings zeroed the MMDiT acts token by token, so tiling (tiles of
    4, overlap 2, on the patch lattice, Gaussian blending) must reproduce the untiled prediction exactly."""
    local = copy.deepcopy(refiner.transformer)
    for block in local.transformer_blocks:
        for layer in (block.attn.to_out[0], block.attn.to_add_out):
            if layer is not None:
                layer.weight.zero_()
                layer.bias.zero_()
    local.pos_embed.pos_embed.zero_()
    z = torch.randn(1, 16, 8, 12, generator=torch.Generator().manual_seed(5))
    tiled = _variant(refiner, dataclasses.replace(refiner.config, latent_tile=4, latent_overlap=2), transformer=local)
    untiled = _variant(refiner, dataclasses.replace(refiner.config, latent_tile=64), transformer=local)
    torch.testing.assert_close(tiled.velocity(z), untiled.velocity(z), rtol=1e-5, atol=1e-5)


@torch.no_grad()
def test_tiled_latents_stay_close_to_untiled_for_the_full_transformer(refiner):
    """With global attention tiles cannot be exact (each tile attends only to itself, and SD3 centre-crops its
    positional embedding per input); on the tiny random model the blend stays within 30 % (measured ~14 %)."""
    z = torch.randn(1, 16, 8, 12, generator=torch.Generator().manual_seed(5))
    tiled = _variant(refiner, dataclasses.replace(refiner.config, latent_tile=4, latent_overlap=2)).velocity(z)
    untiled = _variant(refiner, dataclasses.replace(refiner.config, latent_tile=64)).velocity(z)
    assert ((tiled - untiled).norm() / untiled.norm()) < 0.3


def test_tiled_vae_runs_and_keeps_sizes(refiner):
    cfg = dataclasses.replace(refiner.config, vae_tile=4, vae_overlap=2, deterministic=True)
    sr = _image(size=(48, 64))
    out = _variant(refiner, cfg)(sr)
    assert out.shape == sr.shape and torch.isfinite(out).all()


# ---------------------------------------------------------------------------------------------------------------------
# sampling, sizes, precision, guards
# ---------------------------------------------------------------------------------------------------------------------
def test_seed_and_determinism(refiner):
    sr = _image()
    cfg = refiner.config
    a, b = _variant(refiner, cfg)(sr), _variant(refiner, cfg)(sr)
    assert torch.equal(a, b)  # a fresh generator per call: reproducible
    c = _variant(refiner, dataclasses.replace(cfg, seed=1))(sr)
    assert not torch.equal(a, c)
    d1 = _variant(refiner, dataclasses.replace(cfg, deterministic=True, seed=0))(sr)
    d2 = _variant(refiner, dataclasses.replace(cfg, deterministic=True, seed=1))(sr)
    assert torch.equal(d1, d2)


def test_sizes_that_are_not_multiples_of_16_are_padded_and_cropped(refiner):
    sr = _image(size=(36, 20))
    out = refiner(sr)
    assert out.shape == sr.shape and torch.isfinite(out).all()


def test_bf16_on_cpu(setup):
    out = TSDSRRefiner.from_config(dataclasses.replace(setup.config, precision="bf16"))(_image())
    assert out.dtype == torch.float32 and torch.isfinite(out).all()


def test_refiner_refuses_to_return_its_input_or_nan(refiner, monkeypatch):
    sr = _image()
    identity = _variant(refiner, refiner.config)
    monkeypatch.setattr(identity, "_refine_one", lambda img, generator: img)
    with pytest.raises(RefinerError, match="unchanged"):
        identity(sr)
    broken = _variant(refiner, refiner.config)
    monkeypatch.setattr(broken, "decode", lambda z: torch.full((1, 3, 32, 32), float("nan")))
    with pytest.raises(RefinerError, match="NaN"):
        broken(sr)


def test_input_is_checked(refiner):
    with pytest.raises(ValueError, match="B, 3, H, W"):
        refiner(torch.rand(3, 32, 32))
    with pytest.raises(TypeError):
        refiner(torch.zeros(1, 3, 32, 32, dtype=torch.uint8))
    with pytest.raises(ValueError, match="NaN"):
        refiner(torch.full((1, 3, 32, 32), float("nan")))


# ---------------------------------------------------------------------------------------------------------------------
# strict loading: LoRA keys, base weights, embeddings, missing files
# ---------------------------------------------------------------------------------------------------------------------
def _lora_variant(setup: TinySetup, tmp_path: Path, *, file: str, edit) -> RefinerConfig:
    lora_dir = tmp_path / "lora"
    shutil.copytree(setup.config.lora_dir, lora_dir)
    state = load_file(str(lora_dir / file))
    edit(state)
    save_file(state, str(lora_dir / file))
    return dataclasses.replace(setup.config, lora_dir=str(lora_dir))


def test_lora_with_unexpected_key_is_rejected(setup, tmp_path):
    def add_non_target(state):
        state["transformer.transformer_blocks.0.ff.net.2.lora_A.weight"] = torch.zeros(4, 64)
        state["transformer.transformer_blocks.0.ff.net.2.lora_B.weight"] = torch.zeros(16, 4)

    cfg = _lora_variant(setup, tmp_path, file="transformer.safetensors", edit=add_non_target)
    with pytest.raises(
        LoRAFormatError, match=r"transformer\.safetensors.*unexpected.*transformer_blocks\.0\.ff\.net\.2"
    ):
        TSDSRRefiner.from_config(cfg)


def test_lora_with_missing_key_is_rejected(setup, tmp_path):
    def drop_proj_out(state):
        del state["transformer.proj_out.lora_A.weight"], state["transformer.proj_out.lora_B.weight"]

    cfg = _lora_variant(setup, tmp_path, file="transformer.safetensors", edit=drop_proj_out)
    with pytest.raises(LoRAFormatError, match=r"transformer\.safetensors.*missing LoRA for 1 layer.*proj_out"):
        TSDSRRefiner.from_config(cfg)


def test_vae_lora_for_the_decoder_is_rejected(setup, tmp_path):
    def add_decoder(state):
        state["transformer.decoder.conv_in.lora_A.weight"] = torch.zeros(4, 16, 3, 3)
        state["transformer.decoder.conv_in.lora_B.weight"] = torch.zeros(32, 4, 1, 1)

    cfg = _lora_variant(setup, tmp_path, file="vae.safetensors", edit=add_decoder)
    with pytest.raises(LoRAFormatError, match=r"vae\.safetensors.*unexpected.*decoder\.conv_in"):
        TSDSRRefiner.from_config(cfg)


def test_lora_rank_must_match_the_config(setup):
    with pytest.raises(LoRAFormatError, match="rank 64"):
        TSDSRRefiner.from_config(dataclasses.replace(setup.config, transformer_lora_rank=64))


def test_missing_files_are_named(setup, tmp_path):
    cfg = setup.config
    with pytest.raises(RefinerFileNotFoundError, match="nowhere"):
        TSDSRRefiner.from_config(dataclasses.replace(cfg, base_dir=str(tmp_path / "nowhere")))
    with pytest.raises(RefinerFileNotFoundError, match=r"transformer\.safetensors[\s\S]*vae\.safetensors"):
        TSDSRRefiner.from_config(dataclasses.replace(cfg, lora_dir=str(tmp_path)))
    emb = tmp_path / "emb"
    emb.mkdir()
    shutil.copy(Path(cfg.embedding_dir) / "prompt_embeds.pt", emb)
    with pytest.raises(RefinerFileNotFoundError, match="pool_embeds.pt") as info:
        TSDSRRefiner.from_config(dataclasses.replace(cfg, embedding_dir=str(emb)))
    assert "prompt_embeds.pt" not in str(info.value)
    base = tmp_path / "base"
    shutil.copytree(cfg.base_dir, base)
    (base / "vae" / "diffusion_pytorch_model.safetensors").unlink()
    with pytest.raises(RefinerFileNotFoundError, match=r"vae/diffusion_pytorch_model\.safetensors"):
        TSDSRRefiner.from_config(dataclasses.replace(cfg, base_dir=str(base)))


def test_base_weights_must_match_the_config(setup, tmp_path):
    base = tmp_path / "base"
    shutil.copytree(setup.config.base_dir, base)
    weights = base / "transformer" / "diffusion_pytorch_model.safetensors"
    state = load_file(str(weights))
    del state["proj_out.weight"]
    save_file(state, str(weights))
    with pytest.raises(RefinerWeightsError, match=r"proj_out\.weight"):
        load_transformer(base, dtype=torch.float32)


def test_embeddings_are_checked(setup, tmp_path):
    wrong = tmp_path / "prompt_embeds.pt"
    torch.save(torch.zeros(6, 31), wrong)
    with pytest.raises(RefinerWeightsError, match="prompt_embeds.pt.*31"):
        load_embedding(wrong, width=32, sequence=True)
    not_tensor = tmp_path / "pool_embeds.pt"
    torch.save({"pool": torch.zeros(16)}, not_tensor)
    with pytest.raises(RefinerWeightsError, match="pool_embeds.pt.*expected a tensor"):
        load_embedding(not_tensor, width=16, sequence=False)
    assert load_embedding(Path(setup.config.embedding_dir) / "pool_embeds.pt", width=16, sequence=False).shape == (
        1,
        16,
    )


def test_real_config_without_weights_names_every_missing_file():
    cfg = load_config(RefinerConfig, REPO / "configs/refiner/tsdsr.yaml", ["device=cpu", "precision=fp32"])
    if cfg.base_path.exists():
        pytest.skip(f"real TSD-SR weights present at {cfg.base_path}; not loading 2B parameters in a unit test")
    with pytest.raises(RefinerFileNotFoundError) as info:
        TSDSRRefiner.from_config(cfg)
    text = str(info.value)
    for name in (
        "stable-diffusion-3-medium-diffusers",
        "transformer.safetensors",
        "vae.safetensors",
        "prompt_embeds.pt",
        "pool_embeds.pt",
        "README",
    ):
        assert name in text
