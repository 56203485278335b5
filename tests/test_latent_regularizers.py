"""The latent regularisers — EQ-VAE, scale equivariance, latent denoising (l-DeTok) and VA-VAE's alignment —
against hand computations, their draws' distributions, and training with each."""

import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import vaekit
from vaekit.config import load_config
from vaekit.errors import ConfigError
from vaekit.losses import LPIPSGANConfig, LPIPSWithDiscriminator
from vaekit.losses.alignment import IMAGENET_MEAN, IMAGENET_STD, load_backbone, vf_loss
from vaekit.losses.latent_transforms import (BatchRegularisers, LatentDenoising, LatentTransform, downsample_pair,
                                             draw_downsampling, draw_eqvae, draw_mask)
from vaekit.losses.perceptual import LPIPS_MIN_SIDE, WeightsUnavailable


def test_halving_bilinearly_is_two_by_two_averaging_and_the_rotation_is_applied_to_both():
    z, x = torch.randn(2, 4, 8, 8), torch.randn(2, 3, 32, 32)
    z_t, x_t = LatentTransform(scale=0.5, quarter_turns=1)(z, x)
    # bilinear ×½ with align_corners=False samples the centre of each 2×2 block: their mean
    assert torch.allclose(z_t, torch.rot90(F.avg_pool2d(z, 2), 1, dims=(-2, -1)), atol=1e-6)
    assert torch.allclose(x_t, torch.rot90(F.avg_pool2d(x, 2), 1, dims=(-2, -1)), atol=1e-6)
    z_t, x_t = LatentTransform(scale=5 / 8, quarter_turns=3)(z, x)
    assert z_t.shape[-2:] == (5, 5) and x_t.shape[-2:] == (20, 20)  # the image stays f times the latent


def _central_means(t, factor):
    """Bilinear ×1/factor by hand: output pixel i samples input coordinate (i + ½)·factor − ½, for factor 4
    the midpoint of pixels 4i + 1 and 4i + 2, so the mean of each 4×4 block's central 2×2 (factor 2: the
    whole 2×2 block)."""
    lo, hi = factor // 2 - 1, factor // 2
    return (t[..., lo::factor, lo::factor] + t[..., lo::factor, hi::factor] + t[..., hi::factor, lo::factor]
            + t[..., hi::factor, hi::factor]) / 4


def test_scale_equivariance_downsamples_latent_and_image_bilinearly_by_the_same_factor():
    z, x = torch.randn(2, 4, 8, 8), torch.randn(2, 3, 32, 32)
    for factor in (2, 4):
        small_z, small_x = downsample_pair(z, x, factor)
        assert small_z.shape[-2:] == (8 // factor,) * 2 and small_x.shape[-2:] == (32 // factor,) * 2
        assert torch.allclose(small_z, _central_means(z, factor), atol=1e-6)
        assert torch.allclose(small_x, _central_means(x, factor), atol=1e-6)


def test_draws_follow_eqvae_s_distribution_and_scale_equivariance_s_factors():
    generator = torch.Generator().manual_seed(0)
    draws = [draw_eqvae(0.5, 32, generator) for _ in range(4000)]
    applied = [d for d in draws if d is not None]
    assert abs(len(applied) / 4000 - 0.5) < 0.03  # sd of the share: 0.008
    assert {round(d.scale * 32) for d in applied} == set(range(8, 32))  # s = k/32, k in 8 … 31 (zelaki/eqvae)
    assert {d.quarter_turns for d in applied} == {1, 2, 3}
    factors = [draw_downsampling(8, generator) for _ in range(400)]
    assert set(factors) == {2, 4} and abs(factors.count(2) / 400 - 0.5) < 0.1  # sd: 0.025
    assert {draw_downsampling(3, generator) for _ in range(20)} == {2} and draw_downsampling(1, generator) is None
    assert draw_eqvae(0.0, 8, generator) is None


def test_with_eqvae_and_scale_equivariance_on_every_batch_gets_the_added_term_and_half_get_eqvae():
    loss_fn = LPIPSWithDiscriminator(LPIPSGANConfig(perceptual_weight=0.0, eqvae_prob=0.5, scale_equivariance_weight=1.0))
    generator, x = torch.Generator().manual_seed(0), torch.zeros(2, 3, 32, 32)
    draws = [loss_fn.draw_transform(x, generator, 4) for _ in range(2000)]
    assert all(d.downsample in (2, 4) for d in draws)  # the added term's share is 1, whatever EQ-VAE drew
    eqvae = sum(isinstance(d.transform, LatentTransform) for d in draws) / 2000
    assert abs(eqvae - 0.5) < 0.04  # EQ-VAE's share is its own probability (sd 0.011)


def _model():
    torch.manual_seed(0)
    return vaekit.create_model("autoencoder-kl", block_out_channels=(16, 16), layers_per_block=1, norm_num_groups=8,
                               latent_channels=3)


def test_the_loss_compares_the_decoded_transformed_latent_with_the_transformed_image():
    model = _model()
    loss_fn = LPIPSWithDiscriminator(LPIPSGANConfig(perceptual_weight=0.0, eqvae_prob=1.0))
    x = torch.rand(2, 3, 16, 16) * 2 - 1
    transform = BatchRegularisers(LatentTransform(scale=0.75, quarter_turns=2))
    output = model(x, generator=torch.Generator().manual_seed(1), transform=transform)
    loss, _ = loss_fn(x, output)
    z = model.encode(x).sample(torch.Generator().manual_seed(1))
    target = torch.rot90(F.interpolate(x, size=(12, 12), mode="bilinear", align_corners=False), 2, dims=(-2, -1))
    decoded = model.decode(torch.rot90(F.interpolate(z, size=(6, 6), mode="bilinear", align_corners=False), 2,
                                       dims=(-2, -1)))
    expected = (decoded - target).abs().sum() / 2 + 1e-6 * model.encode(x).kl().sum() / 2  # the KL: untransformed
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)
    assert torch.equal(output.z, z)  # the sampled latent, not the one the decoder got


def test_scale_equivariance_adds_the_downsampled_reconstruction_to_the_usual_loss():
    model = _model()  # f = 2: 16² images, 8² latents
    loss_fn = LPIPSWithDiscriminator(LPIPSGANConfig(perceptual_weight=0.0, scale_equivariance_weight=0.25))
    x = torch.rand(2, 3, 16, 16) * 2 - 1
    output = model(x, generator=torch.Generator().manual_seed(1), transform=BatchRegularisers(downsample=4))
    loss, logs = loss_fn(x, output)
    z = model.encode(x).sample(torch.Generator().manual_seed(1))
    usual = (model.decode(z) - x).abs().sum() / 2 + 1e-6 * model.encode(x).kl().sum() / 2
    added = (model.decode(_central_means(z, 4)) - _central_means(x, 4)).abs().sum() / 2  # 2² latent, 4² image
    assert output.target is None and torch.allclose(output.reconstruction, model.decode(z), atol=1e-6)
    assert logs["scale_equivariance"] == pytest.approx(added.item(), rel=1e-5)
    assert loss.item() == pytest.approx((usual + 0.25 * added).item(), rel=1e-5)


def test_lpips_applies_to_transformed_pairs_from_its_smallest_side_and_is_left_out_below():
    loss_fn = LPIPSWithDiscriminator(LPIPSGANConfig(perceptual_weight=1.0, lpips_pretrained=False, disc_weight=0))
    lpips_network = loss_fn._perceptual[0]
    for side in (8, 12, 16, 24):
        x, x_hat = torch.rand(2, 3, side, side) * 2 - 1, torch.rand(2, 3, side, side) * 2 - 1
        logs = {}
        rec = loss_fn._per_pixel(x, x_hat, logs)
        expected = (x_hat - x).abs()
        if side >= LPIPS_MIN_SIDE:  # the lpips package's own value, broadcast over the pixels
            expected = expected + lpips_network(x, x_hat)
        assert ("lpips" in logs) == (side >= 16) and torch.allclose(rec, expected, atol=1e-6)


KL_F8_TINY_32 = ["model.name=kl-f8-tiny", "data.name=objects", "data.image_size=32", "data.num_train=48",
                 "data.num_test=8", "loss.perceptual_weight=1", "loss.lpips_pretrained=false", "loss.disc_start=0",
                 "train.max_steps=20", "train.epochs=1", "train.batch_size=2", "train.snapshot_examples=0",
                 "train.validation_examples=4", "train.calibration_images=4", "train.progress_bar=false",
                 "train.log_every=1"]


@pytest.mark.slow
@pytest.mark.parametrize("option", ["loss.eqvae_prob=1.0", "loss.scale_equivariance_weight=1.0",
                                    "loss.latent_noise_gamma=3.0,loss.latent_mask_ratio=0.7", "vf"])
def test_kl_f8_tiny_at_32_trains_20_steps_with_lpips_and_each_regulariser(option, tmp_path):
    # at f = 8 a 32² image has a 4² latent: EQ-VAE's s = 1/4 and scale equivariance's ×4 make 8² images,
    # below LPIPS-VGG's 16 and the PatchGAN's 24
    options = option.split(",")
    if option == "vf":
        options = [f"loss.vf_model={_tiny_dinov2(tmp_path / 'dino')}", "loss.vf_image_size=32"]
    config = load_config(None, KL_F8_TINY_32 + options + [f"output_dir={tmp_path}", "run_name=r"])
    run = vaekit.train(config, evaluate_at_end=False, explore=False, device="cpu")
    records = [json.loads(line) for line in (run / "train_log.jsonl").read_text().splitlines()]
    steps = [r for r in records if "loss" in r and "step" in r]
    assert steps and max(r["step"] for r in steps) == 20 and all(math.isfinite(r["loss"]) for r in steps)
    if option.startswith("loss.scale"):
        assert all("scale_equivariance" in r for r in steps)


@pytest.mark.parametrize("option", ["loss.eqvae_prob=0.5", "loss.scale_equivariance_weight=1.0",
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
    corrupted, level = LatentDenoising(3.0, torch.Generator().manual_seed(0)).corrupt(z)
    assert level.shape == (64,) and 0 <= level.min() and level.max() < 1
    t = level.view(-1, 1, 1, 1)
    epsilon = (corrupted - (1 - t) * z) / (3.0 * t)  # what was mixed in must be a standard normal draw
    # 65,536 draws: the mean's standard error is 1/256, the std's about 1/362; 0.03 is over 7 of them
    assert abs(epsilon.mean().item()) < 0.03 and abs(epsilon.std().item() - 1) < 0.03
    # the same generator state gives the same noise whatever the latent: the noise does not depend on z
    again, _ = LatentDenoising(3.0, torch.Generator().manual_seed(0)).corrupt(z + 5)
    assert torch.allclose(again - corrupted, 5 * (1 - t).expand_as(z), atol=1e-5)


def test_masking_draws_one_ratio_per_batch_by_detok_s_formula():
    generator = torch.Generator().manual_seed(0)
    masks = torch.stack([draw_mask(4, (4, 8), 0.7, generator) for _ in range(4000)])  # (4000, 4, 1, 4, 8)
    counts = masks.flatten(2).sum(2)  # masked positions, per batch and image (of 32)
    assert (counts == counts[:, :1]).all()  # one ratio for the whole batch
    assert (masks[:, 0] != masks[:, 1]).any()  # which positions: drawn per image
    # r = max(0, u), u ~ U(−0.1, 0.7); ceil(32 (1 − r)) positions kept, so floor(32 r) masked: none when
    # u < 1/32, P = (0.1 + 1/32) / 0.8; E[r] = 0.7² / 2 / 0.8, less about half a position for the floor
    per_batch = counts[:, 0]
    assert abs((per_batch == 0).float().mean().item() - (0.1 + 1 / 32) / 0.8) < 0.025  # sd of the share: 0.006
    assert abs(per_batch.mean().item() / 32 - (0.30625 - 0.875 * 0.5 / 32)) < 0.01  # sd: 0.2 / 63 = 0.003
    assert per_batch.max() <= 32 - 10  # at most floor(32 × 0.7) = 22 masked


def test_masked_patches_are_hidden_from_the_encoder_and_the_decoder_gets_the_mask_token_there():
    mask = torch.zeros(1, 1, 2, 2)
    mask[0, 0, 0, 1] = 1  # the top-right latent position
    token = torch.tensor([1.0, 2.0, 3.0])
    denoising = LatentDenoising(0.0, torch.Generator(), mask, token, patch=4)
    x = torch.rand(1, 3, 8, 8) + 1
    hidden = denoising.encoder_input(x)
    assert (hidden[..., :4, 4:] == 0).all() and torch.equal(hidden[..., 4:, :], x[..., 4:, :])  # its 4×4 patch
    assert torch.equal(hidden[..., :4, :4], x[..., :4, :4])
    z = torch.randn(1, 3, 2, 2)
    corrupted, _ = denoising.corrupt(z)
    assert torch.equal(corrupted[0, :, 0, 1], token) and torch.equal(corrupted[0, :, 1], z[0, :, 1])


def test_the_masked_patches_follow_the_padded_latent_grid_when_the_side_is_not_a_multiple_of_f():
    mask = torch.zeros(1, 1, 3, 3)
    mask[0, 0, 2, 2] = 1  # the last latent position of a 17² image at f = 8 covers pixels 16 only
    hidden = LatentDenoising(0.0, torch.Generator(), mask, torch.zeros(3), patch=8).encoder_input(torch.ones(1, 3, 17, 17))
    assert hidden[..., 16, 16].eq(0).all() and hidden.eq(0).sum() == 3  # one pixel, three channels


def test_the_decoder_is_asked_for_the_clean_image_from_the_corrupted_latent_of_the_masked_image():
    model = _model()
    x = torch.rand(2, 3, 16, 16) * 2 - 1
    mask = draw_mask(2, (8, 8), 0.7, torch.Generator().manual_seed(3))
    token = torch.randn(3)
    denoising = LatentDenoising(3.0, torch.Generator().manual_seed(2), mask, token, patch=2)
    output = model(x, generator=torch.Generator().manual_seed(1), transform=BatchRegularisers(denoising))
    hidden = x * (1 - mask.repeat_interleave(2, -2).repeat_interleave(2, -1))  # f = 2
    z = model.encode(hidden).sample(torch.Generator().manual_seed(1))
    corrupted, _ = LatentDenoising(3.0, torch.Generator().manual_seed(2), mask, token, patch=2).corrupt(z)
    assert torch.equal(output.target, x) and torch.allclose(output.z, z, atol=1e-6)
    assert torch.allclose(output.reconstruction, model.decode(corrupted), atol=1e-6)


def test_the_mask_token_is_trained_with_the_autoencoder():
    model = _model()
    loss_fn = LPIPSWithDiscriminator.for_model(LPIPSGANConfig(perceptual_weight=0.0, disc_weight=0,
                                                              latent_mask_ratio=0.7), model)
    assert loss_fn.mask_token.shape == (3,) and loss_fn.generator_parameters() == [loss_fn.mask_token]
    x = torch.rand(4, 3, 16, 16) * 2 - 1
    generator = torch.Generator().manual_seed(0)
    transform = loss_fn.draw_transform(x, generator, 2)
    while not transform.transform.mask.any():  # a batch whose drawn ratio masked something
        transform = loss_fn.draw_transform(x, generator, 2)
    loss, _ = loss_fn(x, model(x, transform=transform))
    loss.backward()
    assert loss_fn.mask_token.grad is not None and loss_fn.mask_token.grad.abs().sum() > 0


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


def test_alignment_receives_the_sampled_latent_whatever_the_decoder_got():
    model = _model()
    loss_fn = LPIPSWithDiscriminator(LPIPSGANConfig(perceptual_weight=0.0, disc_weight=0, vf_adaptive=False))
    received = []

    class Recorder(torch.nn.Module):
        def forward(self, z, images):
            received.append(z)
            return z.sum() * 0, {}

    loss_fn.alignment = Recorder()
    x = torch.rand(2, 3, 16, 16) * 2 - 1
    transform = BatchRegularisers(LatentTransform(scale=0.5, quarter_turns=1), downsample=2)
    loss_fn(x, model(x, generator=torch.Generator().manual_seed(1), transform=transform))
    posterior = model.encode(x)
    z = posterior.sample(torch.Generator().manual_seed(1))  # VA-VAE: z = posterior.sample(), always
    assert torch.allclose(received[0], z, atol=1e-6) and not torch.allclose(received[0], posterior.mode(), atol=1e-3)


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
    from vaekit.diffusion.images import write_photo_crops

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


def test_the_scale_equivariance_preset_is_the_published_fine_tune_and_must_be_told_its_data(capsys):
    from vaekit.cli import main
    from vaekit.config import read_yaml

    preset = Path(__file__).resolve().parents[1] / "configs" / "finetune-scale-equivariance.yaml"
    raw = read_yaml(preset)
    assert raw["loss"]["scale_equivariance_weight"] == 1.0 and not raw["loss"].get("eqvae_prob")
    assert raw["train"]["max_steps"] == 10000 and not raw["train"].get("decoder_only")  # the paper's 10K steps
    assert raw["model"]["init_from"].endswith("/vae") and raw["data"]["crop_size"] == 256
    assert main(["train", str(preset)]) == 1
    assert "data.path is required" in capsys.readouterr().err.strip().splitlines()[-1]
