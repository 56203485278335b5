"""EQ-VAE and scale equivariance: the transform, its draws, and the loss it makes, against hand computations."""

import pytest
import torch
import torch.nn.functional as F

import vaekit
from vaekit.config import load_config
from vaekit.errors import ConfigError
from vaekit.losses import LPIPSGANConfig, LPIPSWithDiscriminator
from vaekit.losses.latent_transforms import LatentTransform, draw_transform


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


@pytest.mark.parametrize("option", ["loss.eqvae_prob=0.5", "loss.scale_equivariance_prob=0.5"])
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
