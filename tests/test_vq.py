"""VQ autoencoders: the quantiser against brute force and hand computation, the EMA codebook, usage and
perplexity, diffusers VQModel parity and interop, taming/LDM checkpoints, training of each preset."""

import math

import pytest
import torch

import vaekit
from test_autoencoder_kl import _to_ldm_names
from vaekit.cli import main
from vaekit.config import load_config
from vaekit.models.fastconv import fast_paths
from vaekit.models.vq import VectorQuantizer, perplexity_of
from vaekit.training import train

SMALL = dict(block_out_channels=(16, 32), layers_per_block=1, norm_num_groups=8, latent_channels=4, num_embeddings=32)


def tiny(**extra):
    torch.manual_seed(0)
    return vaekit.create_model("vq", **{**SMALL, **extra}).eval()


def test_the_nearest_code_is_the_brute_force_one():
    torch.manual_seed(0)
    quantizer = VectorQuantizer(50, 6)
    quantizer.embedding.weight.data.normal_()
    z = torch.randn(3, 6, 5, 7)
    out = quantizer(z)
    flat = z.permute(0, 2, 3, 1).reshape(-1, 6).double()
    codebook = quantizer.embedding.weight.double()
    brute = torch.stack([((codebook - row) ** 2).sum(1).argmin() for row in flat])
    assert torch.equal(out.indices.flatten(), brute)
    torch.testing.assert_close(out.z.permute(0, 2, 3, 1).reshape(-1, 6), codebook[brute].float())
    # Cosine matching with l2-normalised codes.
    quantizer.l2_normalize = True
    out = quantizer(z)
    cosine = torch.nn.functional.normalize(flat, dim=1) @ torch.nn.functional.normalize(codebook, dim=1).T
    assert torch.equal(out.indices.flatten(), cosine.argmax(1))


def test_straight_through_gradient_and_the_loss_terms_by_hand():
    torch.manual_seed(0)
    quantizer = VectorQuantizer(16, 3, beta=0.25)
    quantizer.embedding.weight.data.normal_()
    z = torch.randn(2, 3, 4, 4, requires_grad=True)
    out = quantizer(z)
    upstream = torch.randn_like(out.z)
    (out.z * upstream).sum().backward(retain_graph=True)
    torch.testing.assert_close(z.grad, upstream)  # the quantiser passes gradients through unchanged
    assert quantizer.embedding.weight.grad is None  # ... and none to the codebook from the decoder's side

    flat = z.detach().permute(0, 2, 3, 1).reshape(-1, 3)
    q = quantizer.embedding.weight.detach()[out.indices.flatten()]
    squared = ((flat - q) ** 2).mean()
    torch.testing.assert_close(out.commitment, squared)
    torch.testing.assert_close(out.codebook, squared)
    torch.testing.assert_close(out.loss, 0.25 * squared + squared)  # β on the commitment term
    z.grad = None
    out.loss.backward()
    # d/dz of β‖z − sg(q)‖²: the commitment pulls z only; d/de of ‖e − sg(z)‖²: the codebook term moves codes only.
    torch.testing.assert_close(z.grad.permute(0, 2, 3, 1).reshape(-1, 3), 0.25 * 2 * (flat - q) / flat.numel())
    expected = torch.zeros_like(quantizer.embedding.weight)
    expected.index_add_(0, out.indices.flatten(), 2 * (q - flat) / flat.numel())
    torch.testing.assert_close(quantizer.embedding.weight.grad, expected)


def test_ema_codebook_update_follows_its_closed_form():
    torch.manual_seed(0)
    quantizer = VectorQuantizer(4, 2, ema_decay=0.9).train()
    codebook = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0], [5.0, 5.0]])
    quantizer.embedding.weight.data.copy_(codebook)
    quantizer.ema_weight.copy_(codebook)
    z = torch.tensor([[0.1, 0.0], [0.9, 0.1], [1.1, -0.1], [0.0, 0.8]]).T.reshape(1, 2, 2, 2)
    with torch.enable_grad():
        out = quantizer(z)
    assert out.indices.flatten().tolist() == [0, 1, 1, 2] and out.codebook.item() == 0.0  # no codebook loss
    assert torch.equal(quantizer.embedding.weight, codebook)  # the forward pass changes nothing
    quantizer.update_codebook(*quantizer.code_sums(out.vectors, out.indices), out.vectors, torch.Generator())
    counts = torch.tensor([1.0, 2.0, 1.0, 0.0])
    sums = torch.tensor([[0.1, 0.0], [2.0, 0.0], [0.0, 0.8], [0.0, 0.0]])
    n = 0.9 * torch.ones(4) + 0.1 * counts
    m = 0.9 * codebook + 0.1 * sums
    smoothed = (n + 1e-5) / (n.sum() + 4 * 1e-5) * n.sum()
    torch.testing.assert_close(quantizer.ema_count, n)
    torch.testing.assert_close(quantizer.embedding.weight, m / smoothed[:, None])
    assert not quantizer.embedding.weight.requires_grad


def test_usage_and_perplexity():
    assert perplexity_of(torch.tensor([5, 5, 5, 5])).item() == pytest.approx(4.0)
    assert perplexity_of(torch.tensor([7, 0, 7, 0])).item() == pytest.approx(2.0)
    p = torch.tensor([0.5, 0.25, 0.25])
    assert perplexity_of(torch.tensor([2, 1, 1])).item() == pytest.approx(math.exp(-(p * p.log()).sum().item()))
    from vaekit.config import load_config as config_of
    from vaekit.data import build_dataset
    from vaekit.metrics.image import evaluate_reconstruction

    model = tiny()
    test = build_dataset(config_of(None, ["data.name=photos", "data.crop_size=16"]).data, "test")
    metrics = evaluate_reconstruction(model, test, perceptual=False, to_model_range=lambda x: x * 2 - 1)
    x, _ = test.__getitems__(list(range(len(test))))
    with torch.no_grad():
        counts = torch.bincount(model.encode_indices(x * 2 - 1).flatten(), minlength=32)
    assert metrics["codes_used"] == int((counts > 0).sum()) and metrics["codebook_usage"] == pytest.approx(
        (counts > 0).float().mean().item())
    assert metrics["perplexity"] == pytest.approx(perplexity_of(counts).item(), rel=1e-9)


def test_dead_codes_restart_at_encoder_outputs():
    torch.manual_seed(0)
    quantizer = VectorQuantizer(8, 2, dead_code_threshold=0.995).train()  # use starts at 1: one idle step
    quantizer.embedding.weight.data.copy_(torch.tensor([[0.0, 0.0]] + [[100.0, 100.0]] * 7))
    z = torch.randn(1, 2, 4, 4) * 0.1
    out = quantizer(z)
    restarted = quantizer.update_codebook(*quantizer.code_sums(out.vectors, out.indices), out.vectors,
                                          torch.Generator().manual_seed(0))
    assert restarted == 7
    flat = z.permute(0, 2, 3, 1).reshape(-1, 2)
    for code in quantizer.embedding.weight[1:]:  # every far-away code is now one of the batch's vectors
        assert (flat - code).abs().sum(1).min() == 0


def _diffusers_twin(model):
    import diffusers

    c = model.config
    twin = diffusers.VQModel(in_channels=c.in_channels, out_channels=c.out_channels,
                             down_block_types=("DownEncoderBlock2D",) * len(c.block_out_channels),
                             up_block_types=("UpDecoderBlock2D",) * len(c.block_out_channels),
                             block_out_channels=c.block_out_channels, layers_per_block=c.layers_per_block,
                             latent_channels=c.latent_channels, num_vq_embeddings=c.num_embeddings,
                             norm_num_groups=c.norm_num_groups).eval()
    twin.load_state_dict(model.state_dict())  # same names: no conversion
    return twin


def test_parity_with_diffusers_vqmodel_and_interop(tmp_path):
    model = tiny()
    model.quantize.embedding.weight.data.normal_(0, 0.3)
    twin = _diffusers_twin(model)
    x = torch.rand(2, 3, 16, 24) * 2 - 1
    with torch.no_grad(), fast_paths(False):
        h = twin.encode(x).latents
        # encode gives the continuous pre-quantisation latent, as diffusers' and LDM's do
        torch.testing.assert_close(model.encode(x).mean, h, atol=1e-5, rtol=1e-5)
        quantized, _, (_, _, indices) = twin.quantize(h)
        assert torch.equal(model.encode_indices(x).flatten(), indices.flatten())
        torch.testing.assert_close(model.reconstruct(x), twin.decode(h).sample, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(model(x).reconstruction, twin(x).sample, atol=1e-5, rtol=1e-5)
        # decode quantises an off-codebook latent first (what a diffusion model samples), unless told not to
        off = torch.randn(2, 4, 4, 6, generator=torch.Generator().manual_seed(3)) * 0.5
        torch.testing.assert_close(model.decode(off), twin.decode(off).sample, atol=1e-4, rtol=0)
        torch.testing.assert_close(model.decode(off, force_not_quantize=True),
                                   twin.decode(off, force_not_quantize=True).sample, atol=1e-4, rtol=0)
        assert (model.decode(off) - model.decode(off, force_not_quantize=True)).abs().max() > 1e-2
    # Exported, diffusers loads it; a folder diffusers wrote loads in vaekit.
    assert main(["convert", str(_saved(model, tmp_path)), "-o", str(tmp_path / "d"), "--format", "diffusers"]) == 0
    import diffusers

    again = diffusers.VQModel.from_pretrained(tmp_path / "d")
    assert all(torch.equal(again.state_dict()[k], v) for k, v in twin.state_dict().items())
    twin.save_pretrained(tmp_path / "by-diffusers")
    loaded = vaekit.load_model(tmp_path / "by-diffusers", norm_num_groups=8)
    assert loaded.registry_name == "vq" and loaded.config.num_embeddings == 32
    assert all(torch.equal(loaded.state_dict()[k], v) for k, v in model.state_dict().items())


def test_a_model_diffusers_cannot_express_is_refused_not_changed(tmp_path):
    from vaekit.errors import VaekitError
    from vaekit.io.convert import export_diffusers

    with pytest.raises(VaekitError, match="l2-normalised codes"):
        export_diffusers(tiny(l2_normalize=True), tmp_path / "d")
    assert not (tmp_path / "d" / "config.json").exists()


def test_the_loss_is_weighted_as_taming_vqlpips():
    """One step's loss and gradients against taming's VQLPIPSWithDiscriminator written out by hand:
    mean |x − x̂| + codebook_weight · (‖sg(z) − q‖² + β‖z − sg(q)‖²), each a mean."""
    from vaekit.losses.lpips_gan import LPIPSGANConfig, LPIPSWithDiscriminator

    model = tiny(beta=0.25).train()
    loss_fn = LPIPSWithDiscriminator.for_model(LPIPSGANConfig(perceptual_weight=0, disc_weight=0,
                                                              codebook_weight=0.7), model)
    x = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(0)) * 2 - 1
    loss, _ = loss_fn(x, model(x))
    loss.backward()
    ours = {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}
    model.zero_grad()

    z = model.encode(x).mean
    codebook = model.quantize.embedding.weight
    flat = z.permute(0, 2, 3, 1).reshape(-1, 4)
    q = codebook[torch.cdist(flat, codebook).argmin(1)]
    z_q = (flat + (q - flat).detach()).reshape(2, 8, 8, 4).permute(0, 3, 1, 2)  # f = 2
    x_hat = model.decoder(model.post_quant_conv(z_q))
    codebook_loss = ((q - flat.detach()) ** 2).mean() + 0.25 * ((q.detach() - flat) ** 2).mean()
    by_hand = (x - x_hat).abs().mean() + 0.7 * codebook_loss
    by_hand.backward()
    assert loss.item() == pytest.approx(by_hand.item(), rel=1e-5)
    for name, p in model.named_parameters():
        if p.grad is not None:
            torch.testing.assert_close(ours[name], p.grad, atol=1e-6, rtol=1e-4)


@pytest.mark.parametrize("ema", [None, 0.9])
@pytest.mark.parametrize("l2", [False, True])
@pytest.mark.parametrize("restart", [None, 0.995])
def test_every_combination_of_the_quantiser_options_trains_past_a_restart(ema, l2, restart, tmp_path):
    overrides = ["model.name=vq", "model.block_out_channels=[8,16]", "model.layers_per_block=1",
                 "model.norm_num_groups=8", "model.latent_channels=4", "model.num_embeddings=64",
                 f"model.l2_normalize={str(l2).lower()}", "data.name=photos", "data.crop_size=8", "data.num_train=16",
                 "loss.perceptual_weight=0", "loss.disc_weight=0", "train.max_steps=6", "train.batch_size=4",
                 "train.progress_bar=false", "train.validate_every=1000", "train.validation_examples=4",
                 "train.log_every=1", "train.calibration_images=4", "train.snapshot_examples=0", f"output_dir={tmp_path}"]
    if ema is not None:
        overrides.append(f"model.codebook_ema_decay={ema}")
    if restart is not None:  # 16 positions a step over 64 codes: most are idle after one step, and restart
        overrides.append(f"model.dead_code_threshold={restart}")  # use starts at 1 and decays by 0.99 a step
    run = train(load_config(None, overrides), evaluate_at_end=False, explore=False)
    import json

    records = [json.loads(line) for line in (run / "train_log.jsonl").read_text().splitlines()]
    restarted = sum(r.get("codes_restarted", 0) for r in records)
    assert (restarted > 0) == (restart is not None)
    model = vaekit.load_model(run)
    assert torch.isfinite(model.quantize.embedding.weight).all()


def test_decoder_only_leaves_encoder_quant_conv_and_codebook_bitwise(tmp_path):
    source = tiny(codebook_ema_decay=0.9, dead_code_threshold=0.5, num_embeddings=64)
    saved = vaekit.save_model(source, tmp_path / "source")
    config = load_config(None, ["model.name=vq", f"model.init_from={saved}", "train.decoder_only=true",
                                "data.name=photos", "data.crop_size=8", "data.num_train=16", "loss.perceptual_weight=0",
                                "loss.disc_weight=0", "train.max_steps=4", "train.batch_size=4",
                                "train.progress_bar=false", "train.validate_every=1000", "train.validation_examples=4",
                                "train.snapshot_examples=0", f"output_dir={tmp_path}"])
    model = vaekit.load_model(train(config, evaluate_at_end=False, explore=False))
    before, after = source.state_dict(), model.state_dict()
    frozen = [k for k in before if k.startswith(("encoder.", "quant_conv.", "quantize."))]
    assert any(k.startswith("quantize.") for k in frozen)
    assert all(torch.equal(before[k], after[k]) for k in frozen)
    assert not all(torch.equal(before[k], after[k]) for k in before if k.startswith("decoder."))


def _saved(model, tmp_path):
    return vaekit.save_model(model, tmp_path / "vaekit-vq")


def test_a_taming_ldm_vq_checkpoint_loads(tmp_path):
    model = tiny()
    ldm = _to_ldm_names(model.state_dict(), len(SMALL["block_out_channels"]))
    assert "quantize.embedding.weight" in ldm
    torch.save({"state_dict": {**ldm, "loss.discriminator.main.0.weight": torch.zeros(1)}}, tmp_path / "vq.ckpt")
    loaded = vaekit.load_model(tmp_path / "vq.ckpt", norm_num_groups=8)
    assert loaded.registry_name == "vq" and loaded.config.num_embeddings == 32
    assert all(torch.equal(loaded.state_dict()[k], v) for k, v in model.state_dict().items())


@pytest.mark.parametrize("name", [pytest.param(n, marks=[pytest.mark.slow]) for n in ("vq-f4", "vq-f8", "vq-f16")])
def test_each_preset_trains_a_step(name, tmp_path):
    config = load_config(None, [f"model.name={name}", "data.name=photos", "data.crop_size=32", "data.num_train=4",
                                "loss.perceptual_weight=0", "loss.disc_start=0", "train.max_steps=2",
                                "train.batch_size=2", "train.progress_bar=false", "train.validation_examples=2",
                                "train.calibration_images=2", "train.snapshot_examples=0", f"output_dir={tmp_path}"])
    run = train(config, evaluate_at_end=False, explore=False)
    model = vaekit.load_model(run)
    f, codes = {"vq-f4": (4, 8192), "vq-f8": (8, 16384), "vq-f16": (16, 16384)}[name]
    assert model.downsampling_factor == f and model.config.num_embeddings == codes
    log = (run / "train_log.jsonl").read_text()
    assert "vq_loss" in log and "perplexity" in log and "kl" not in log


def test_a_small_vq_model_trains_and_is_evaluated_and_explored(tmp_path):
    config = load_config(None, ["model.name=vq", "model.block_out_channels=[16,32]", "model.layers_per_block=1",
                                "model.norm_num_groups=8", "model.latent_channels=4", "model.num_embeddings=32",
                                "model.codebook_ema_decay=0.9", "data.name=photos", "data.crop_size=16",
                                "data.num_train=32", "loss.perceptual_weight=0", "loss.disc_weight=0",
                                "train.epochs=2", "train.batch_size=8", "train.progress_bar=false",
                                "train.validation_examples=8", "train.calibration_images=8", f"output_dir={tmp_path}"])
    run = train(config)
    import json

    metrics = json.loads((run / "metrics.json").read_text())["test"]
    assert 0 < metrics["codebook_usage"] <= 1 and 1 <= metrics["perplexity"] <= metrics["codes_used"]
    figures = {f["name"] for f in json.loads((run / "figures" / "figures.json").read_text())["figures"]}
    assert {"code_usage", "code_neighbours", "reconstructions"} <= figures


def test_the_nearest_other_code_is_found_in_chunks_as_with_the_whole_distance_matrix():
    from vaekit.explore.images import nearest_other_code

    codebook = torch.randn(300, 4, generator=torch.Generator().manual_seed(0))
    distances = torch.cdist(codebook, codebook)
    distances.fill_diagonal_(float("inf"))
    assert torch.equal(nearest_other_code(codebook, chunk=7), distances.argmin(1))
