"""The latent regularisers — EQ-VAE, scale equivariance, latent denoising (l-DeTok) and VA-VAE's alignment —
against hand computations, their draws' distributions, and training with each."""

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import vaekit
from vaekit.config import load_config
from vaekit.errors import ConfigError
from vaekit.losses import LPIPSGANConfig, LPIPSWithDiscriminator
from vaekit.losses.alignment import IMAGENET_MEAN, IMAGENET_STD, load_backbone, vf_loss
from vaekit.losses.latent_transforms import LatentDenoising, LatentTransform, draw_transform
from vaekit.losses.perceptual import WeightsUnavailable


def test_halving_bilinearly_is_two_by_two_averaging_and_the_rotation_is_applied_to_both():
    z, x = torch.randn(2, 4, 8, 8), torch.randn(2, 3, 32, 32)
    z_t, x_t = LatentTransform(scale=0.5, quarter_turns=1)(z, x)
    # bilinear ×½ with align_corners=False samples the centre of each 2×2 block: their mean
    assert torch.allclose(z_t, torch.rot90(F.avg_pool2d(z, 2), 1, dims=(-2, -1)), atol=1e-6)
    assert torch.allclose(x_t, torch.rot90(F.avg_pool2d(x, 2), 1, dims=(-2, -1)), atol=1e-6)
    z_t, x_t = LatentTransform(scale=5 / 8, quarter_turns=3)(z, x)
    assert z_t.shape[-2:] == (5, 5) and x_t.shape[-2:] == (20, 20)  # the image stays f times the latent
    z_p, x_p = LatentTransform(pool=4)(torch.randn(1, 4, 6, 6), torch.randn(1, 3, 24, 24))
    assert z_p.shape[-2:] == (1, 1) and x_p.shape[-2:] == (4, 4)  # odd blocks cut off, as the metric does


def test_draws_follow_eqvae_s_distribution():
    generator = torch.Generator().manual_seed(0)
    draws = [draw_transform(0.5, 0.0, 32, generator) for _ in range(4000)]
    applied = [d for d in draws if d is not None]
    assert abs(len(applied) / 4000 - 0.5) < 0.03
    assert {round(d.scale * 32) for d in applied} == set(range(8, 32))  # s = k/32, k in 8 … 31 (zelaki/eqvae)
    assert {d.quarter_turns for d in applied} == {1, 2, 3}
    pools = [draw_transform(0.0, 1.0, 8, generator).pool for _ in range(400)]
    assert set(pools) == {2, 4} and abs(pools.count(2) / 400 - 0.5) < 0.1
    assert draw_transform(0.0, 0.0, 8, generator) is None


def _model():
    torch.manual_seed(0)
    return vaekit.create_model("autoencoder-kl", block_out_channels=(16, 16), layers_per_block=1, norm_num_groups=8,
                               latent_channels=3)


def test_the_loss_compares_the_decoded_transformed_latent_with_the_transformed_image():
    model = _model()
    loss_fn = LPIPSWithDiscriminator(LPIPSGANConfig(perceptual_weight=0.0, eqvae_prob=1.0))
    x = torch.rand(2, 3, 16, 16) * 2 - 1
    transform = LatentTransform(scale=0.75, quarter_turns=2)
    output = model(x, generator=torch.Generator().manual_seed(1), transform=transform)
    loss, _ = loss_fn(x, output)
    z = model.encode(x).sample(torch.Generator().manual_seed(1))
    target = torch.rot90(F.interpolate(x, size=(12, 12), mode="bilinear", align_corners=False), 2, dims=(-2, -1))
    decoded = model.decode(torch.rot90(F.interpolate(z, size=(6, 6), mode="bilinear", align_corners=False), 2,
                                       dims=(-2, -1)))
    expected = (decoded - target).abs().sum() / 2 + 1e-6 * model.encode(x).kl().sum() / 2  # the KL: untransformed
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)


@pytest.mark.parametrize("option", ["loss.eqvae_prob=0.5", "loss.scale_equivariance_prob=0.5",
                                    "loss.latent_noise_gamma=3.0", "loss.latent_mask_ratio=0.7"])
def test_training_with_a_latent_regulariser(option, tmp_path):
    config = load_config(None, ["model.name=autoencoder-kl", "model.block_out_channels=[16,16]", "model.layers_per_block=1",
                                "model.norm_num_groups=8", "model.latent_channels=3", "data.name=objects",
                                "data.image_size=16", "data.num_train=64", "data.num_test=16", "loss.perceptual_weight=0",
                                "loss.disc_weight=0.5", "loss.disc_start=2", option, "train.epochs=1", "train.batch_size=8",
                                "train.snapshot_examples=0", "train.progress_bar=false", f"output_dir={tmp_path}",
                                "run_name=r"])
    run = vaekit.train(config, evaluate_at_end=False, explore=False, device="cpu")
    assert (run / "model" / "config.json").is_file()
    with pytest.raises(ConfigError, match="VQ model quantises"):
        vaekit.train(load_config(None, ["model.name=vq", "model.block_out_channels=[16,16]", "model.norm_num_groups=8",
                                        "model.layers_per_block=1", "data.name=objects", "data.image_size=16",
                                        "data.num_train=16", "data.num_test=8", option, "train.epochs=1",
                                        f"output_dir={tmp_path}", "run_name=vq"]), device="cpu")


# ------------------------------------------------------------------------------------ latent denoising


def test_interpolative_noise_is_the_published_mixture_with_one_level_per_image():
    z = torch.randn(64, 4, 16, 16)
    corrupted, level, mask = LatentDenoising(3.0, 0.0, torch.Generator().manual_seed(0)).corrupt(z)
    assert not mask.any() and level.shape == (64,) and 0 <= level.min() and level.max() < 1
    t = level.view(-1, 1, 1, 1)
    epsilon = (corrupted - (1 - t) * z) / (3.0 * t)  # what was mixed in must be a standard normal draw
    # 65,536 draws: the mean's standard error is 1/256, the std's about 1/362; 0.03 is over 7 of them
    assert abs(epsilon.mean().item()) < 0.03 and abs(epsilon.std().item() - 1) < 0.03
    # the same generator state gives the same noise whatever the latent: the noise does not depend on z
    again, _, _ = LatentDenoising(3.0, 0.0, torch.Generator().manual_seed(0)).corrupt(z + 5)
    assert torch.allclose(again - corrupted, 5 * (1 - t).expand_as(z), atol=1e-5)


def test_masking_follows_detok_s_ratio_draw_and_replaces_whole_positions_by_noise():
    z = torch.full((4000, 2, 4, 8), 7.0)  # 32 positions per image
    corrupted, _, mask = LatentDenoising(0.0, 0.7, torch.Generator().manual_seed(0)).corrupt(z)
    masked = mask.flatten(1).sum(1)
    # r = max(0, u), u ~ U(-0.1, 0.7); ceil(32 (1 − r)) positions kept, so floor(32 r) masked: none when
    # u < 1/32, P = (0.1 + 1/32) / 0.8; E[r] = 0.7² / 2 / 0.8, less about half a position for the floor
    assert abs((masked == 0).float().mean().item() - (0.1 + 1 / 32) / 0.8) < 0.025  # sd of the share: 0.006
    assert abs(masked.mean().item() / 32 - (0.30625 - 0.875 * 0.5 / 32)) < 0.01  # sd: 0.2 / 32 / 63 = 1e-4
    assert masked.max() <= 32 - int(torch.ceil(torch.tensor(32 * 0.3)))
    replaced = mask.bool().expand_as(z)
    assert (corrupted[replaced] == 0).all() and (corrupted[~replaced] == 7).all()  # γ = 0: the noise is zero
    noisy, _, noisy_mask = LatentDenoising(2.0, 0.7, torch.Generator().manual_seed(0)).corrupt(z)
    # pure γ·ε where masked: 4000 images × ~9 positions × 2 channels, the std's relative sd is below 0.01
    assert noisy[noisy_mask.bool().expand_as(z)].std().item() == pytest.approx(2.0, rel=0.05)


def test_the_decoder_is_asked_for_the_clean_image_from_the_corrupted_latent():
    model = _model()
    x = torch.rand(2, 3, 16, 16) * 2 - 1
    denoising = LatentDenoising(3.0, 0.5, torch.Generator().manual_seed(2))
    output = model(x, generator=torch.Generator().manual_seed(1), transform=denoising)
    z = model.encode(x).sample(torch.Generator().manual_seed(1))
    corrupted, _, _ = LatentDenoising(3.0, 0.5, torch.Generator().manual_seed(2)).corrupt(z)
    assert torch.equal(output.target, x) and torch.allclose(output.reconstruction, model.decode(corrupted), atol=1e-6)


# ------------------------------------------------------------------------------------ VA-VAE alignment


def test_the_vf_loss_on_a_hand_computed_case():
    # two latent positions: z' = (1, 0), (0, 1); features f = (1, 0), (1, 0)
    projected = torch.tensor([[1.0, 0.0], [0.0, 1.0]]).view(1, 2, 1, 2)
    features = torch.tensor([[1.0, 1.0], [0.0, 0.0]]).view(1, 2, 1, 2)
    loss, logs = vf_loss(projected, features, cos_margin=0.5, distmat_margin=0.25)
    # mcos: cosines 1 and 0 → relu(1 − 0.5 − 1) = 0, relu(1 − 0.5 − 0) = 0.5 → mean 0.25
    # mdms: |[[1, 0], [0, 1]] − [[1, 1], [1, 1]]| − 0.25 → [[0, 0.75], [0.75, 0]] → mean 0.375
    assert logs["vf_mcos"] == pytest.approx(0.25) and logs["vf_mdms"] == pytest.approx(0.375)
    assert loss.item() == pytest.approx(0.625)
    # cosines only: positive scalings of either side change nothing; aligned features cost nothing
    again, _ = vf_loss(3 * projected, 0.1 * features, 0.5, 0.25)
    assert again.item() == pytest.approx(0.625)
    assert vf_loss(features, features, 0.5, 0.25)[0].item() == 0


def _tiny_dinov2(folder):
    from transformers import Dinov2Config, Dinov2Model

    torch.manual_seed(0)
    Dinov2Model(Dinov2Config(image_size=32, patch_size=8, hidden_size=24, num_hidden_layers=1, num_attention_heads=2,
                             intermediate_size=32)).save_pretrained(folder)
    return str(folder)


def test_backbones_give_their_patch_tokens_as_a_grid_in_row_major_order(tmp_path):
    from transformers import Dinov2Model

    images = torch.rand(2, 3, 32, 32) * 2 - 1
    backbone = load_backbone(_tiny_dinov2(tmp_path / "dino"), image_size=32)
    normalised = ((images + 1) / 2 - torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)) / torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    tokens = Dinov2Model.from_pretrained(tmp_path / "dino")(pixel_values=normalised).last_hidden_state
    features = backbone(images)
    assert features.shape == (2, 24, 4, 4) and backbone.width == 24
    assert torch.allclose(features[:, :, 1, 2], tokens[:, 1 + 1 * 4 + 2], atol=1e-5)  # the class token skipped
    timm_backbone = load_backbone("timm:vit_tiny_patch16_224", pretrained=False, image_size=32)
    grid = timm_backbone(images)
    reference = timm_backbone.model.forward_features(
        ((images + 1) / 2 - timm_backbone.mean) / timm_backbone.std)[:, timm_backbone.model.num_prefix_tokens:]
    assert grid.shape == (2, 192, 2, 2) and torch.allclose(grid[:, :, 1, 0], reference[:, 2], atol=1e-5)
    (tmp_path / "empty").mkdir()  # a folder with no model in it: a one-line error naming it and what to do
    with pytest.raises(ConfigError, match="empty' is not a model folder.*save_pretrained"):
        load_backbone(str(tmp_path / "empty"))


def test_a_backbone_that_cannot_be_downloaded_is_a_one_line_error_saying_what_to_do(monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)  # no network, whatever the machine has
    with pytest.raises(WeightsUnavailable, match="timm:vit_tiny_patch16_224.*Hugging Face cache.*copy the cache"):
        load_backbone("timm:vit_tiny_patch16_224")


def test_training_with_vision_alignment_trains_its_projection_and_keeps_the_backbone_out(tmp_path):
    folder = _tiny_dinov2(tmp_path / "dino")
    options = ["model.name=autoencoder-kl", "model.block_out_channels=[16,16]", "model.layers_per_block=1",
               "model.norm_num_groups=8", "model.latent_channels=3", "data.name=objects", "data.image_size=16",
               "data.num_train=48", "data.num_test=16", "loss.perceptual_weight=0", "loss.disc_weight=0",
               f"loss.vf_model={folder}", "loss.vf_image_size=32", "train.epochs=1", "train.batch_size=8",
               "train.snapshot_examples=0", "train.progress_bar=false", "train.checkpoint_every=6",
               f"output_dir={tmp_path}"]
    run = vaekit.train(load_config(None, options + ["run_name=vf"]), evaluate_at_end=False, explore=False, device="cpu")
    records = [json.loads(line) for line in (run / "train_log.jsonl").read_text().splitlines()]
    steps = [r for r in records if "vf_loss" in r]
    assert steps and all(0 < r["vf_weight"] < float("inf") and r["vf_loss"] > 0 for r in steps)
    from safetensors.torch import load_file

    state = {k for path in (run / "checkpoints").glob("*/*.safetensors") for k in load_file(path)}
    assert any("alignment.projection.weight" in k for k in state)  # the projection is resumed with the run
    assert not any("alignment._backbone" in k or "embeddings" in k for k in state)  # the backbone is not saved
    with pytest.raises(ConfigError, match="decoder_only"):
        vaekit.train(load_config(None, options + ["run_name=frozen", "train.decoder_only=true"]), device="cpu")


# ------------------------------------------------------------------------------------ the EQ-VAE fine-tune preset


@pytest.mark.slow
def test_the_eqvae_preset_fine_tunes_a_whole_diffusers_autoencoder(tmp_path):
    from diffusers import AutoencoderKL as DiffusersKL

    from vaekit.config import merge, parse_overrides, read_yaml
    from vaekit.diffusion.diffusability import write_photo_crops

    torch.manual_seed(0)
    DiffusersKL(block_out_channels=(32, 32), down_block_types=("DownEncoderBlock2D",) * 2,
                up_block_types=("UpDecoderBlock2D",) * 2, layers_per_block=1, latent_channels=4,
                norm_num_groups=32, sample_size=64).save_pretrained(tmp_path / "sd-vae")
    write_photo_crops(tmp_path / "photos", 96, 8)
    raw = read_yaml(Path(__file__).resolve().parents[1] / "configs" / "finetune-eqvae.yaml")
    assert raw["loss"]["eqvae_prob"] == 0.5 and not raw["train"].get("decoder_only")
    tiny = [f"model.init_from={tmp_path / 'sd-vae'}", f"data.path={tmp_path / 'photos'}", "data.crop_size=64",
            "data.short_side=null", "loss.lpips_pretrained=false", "train.grad_accumulation=1", "train.max_steps=4",
            "train.batch_size=2", "train.validation_examples=2", "train.calibration_images=2", "train.progress_bar=false",
            f"output_dir={tmp_path}", "run_name=eqvae"]
    from vaekit.config import build_run_config

    run = vaekit.train(build_run_config(merge(raw, parse_overrides(tiny))), evaluate_at_end=False, explore=False,
                       device="cpu")
    source = vaekit.load_model(tmp_path / "sd-vae")
    tuned = vaekit.load_model(run / "model")
    for part in ("encoder", "decoder"):  # the whole autoencoder trains (EQ-VAE changes the encoder's latents)
        before, after = getattr(source, part).state_dict(), getattr(tuned, part).state_dict()
        assert any(not torch.equal(before[k], after[k]) for k in before), part
    records = [json.loads(line) for line in (run / "train_log.jsonl").read_text().splitlines()]
    assert any("g_loss" in r for r in records)  # the PatchGAN runs from the first step (disc_start 0)
