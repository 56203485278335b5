import math

import pytest
import torch
from torch.distributions import Bernoulli as TorchBernoulli
from torch.distributions import Independent, Normal, kl_divergence

from vaekit.models.distributions import Bernoulli, DiagonalGaussian


def _reference(mean, logvar):
    return Independent(Normal(mean, torch.exp(0.5 * logvar)), mean.ndim - 1)


@pytest.mark.parametrize("shape", [(5, 7), (3, 4, 6, 5)])
def test_kl_to_standard_normal_matches_torch(shape):
    torch.manual_seed(0)
    mean, logvar = torch.randn(shape), torch.randn(shape)
    prior = _reference(torch.zeros(shape), torch.zeros(shape))
    expected = kl_divergence(_reference(mean, logvar), prior)
    torch.testing.assert_close(DiagonalGaussian(mean, logvar).kl(), expected)


@pytest.mark.parametrize("shape", [(5, 7), (3, 4, 6, 5)])
def test_kl_between_diagonal_gaussians_matches_torch(shape):
    torch.manual_seed(1)
    p = DiagonalGaussian(torch.randn(shape), torch.randn(shape))
    q = DiagonalGaussian(torch.randn(shape), torch.randn(shape))
    expected = kl_divergence(_reference(p.mean, p.logvar), _reference(q.mean, q.logvar))
    torch.testing.assert_close(p.kl(q), expected)


def test_log_prob_matches_torch():
    torch.manual_seed(2)
    mean, logvar, x = torch.randn(4, 3, 2, 2), torch.randn(4, 3, 2, 2), torch.randn(4, 3, 2, 2)
    torch.testing.assert_close(DiagonalGaussian(mean, logvar).log_prob(x), _reference(mean, logvar).log_prob(x))


def test_from_parameters_splits_channels_and_clamps_logvar():
    params = torch.cat([torch.ones(2, 4, 3, 3), torch.full((2, 4, 3, 3), 100.0)], dim=1)
    posterior = DiagonalGaussian.from_parameters(params)
    assert posterior.mean.shape == (2, 4, 3, 3)
    assert torch.all(posterior.logvar == 20.0)  # clamped like diffusers
    assert torch.isfinite(posterior.var).all()


def test_samples_have_the_posterior_moments_and_follow_the_generator():
    mean, logvar = torch.tensor([[1.0, -2.0]]), torch.tensor([[0.0, math.log(4.0)]])
    posterior = DiagonalGaussian(mean.expand(200_000, 2), logvar.expand(200_000, 2))
    z = posterior.sample(torch.Generator().manual_seed(0))
    torch.testing.assert_close(z.mean(0), mean[0], atol=0.02, rtol=0)
    torch.testing.assert_close(z.std(0), torch.tensor([1.0, 2.0]), atol=0.02, rtol=0)
    assert torch.equal(z, posterior.sample(torch.Generator().manual_seed(0)))
    assert torch.equal(posterior.mode(), posterior.mean)


def test_deterministic_posterior_is_a_point_mass():
    mean = torch.randn(3, 5)
    posterior = DiagonalGaussian(mean, torch.randn(3, 5), deterministic=True)
    assert torch.equal(posterior.sample(), mean)
    assert torch.equal(posterior.kl(), torch.zeros(3))


def test_bernoulli_log_prob_matches_torch_on_binary_and_soft_targets():
    torch.manual_seed(3)
    logits = torch.randn(6, 1, 4, 4) * 5
    binary = torch.randint(0, 2, logits.shape).float()
    expected = TorchBernoulli(logits=logits).log_prob(binary).flatten(1).sum(1)
    torch.testing.assert_close(Bernoulli(logits).log_prob(binary), expected)
    soft = torch.rand(logits.shape)
    bce = torch.nn.functional.binary_cross_entropy_with_logits(logits, soft, reduction="none").flatten(1).sum(1)
    torch.testing.assert_close(Bernoulli(logits).log_prob(soft), -bce)
    torch.testing.assert_close(Bernoulli(logits).mean, torch.sigmoid(logits))


LOGITS = [-30.0, -5.0, -1.0, -2e-3, -5e-4, 0.0, 5e-4, 2e-3, 0.7, 4.0, 25.0]


def test_the_continuous_bernoulli_is_a_normalised_density_on_the_unit_interval():
    from vaekit.models.distributions import ContinuousBernoulli

    x = torch.linspace(0, 1, 200_001, dtype=torch.float64)
    for logit in LOGITS:
        density = ContinuousBernoulli(torch.full_like(x, logit)).log_prob_elementwise(x).exp()
        assert torch.trapezoid(density, x).item() == pytest.approx(1.0, abs=1e-6), logit
        mean = torch.trapezoid(x * density, x).item()
        assert ContinuousBernoulli(torch.tensor([logit], dtype=torch.float64)).mean.item() == pytest.approx(mean, abs=1e-6)


def test_the_continuous_bernoulli_matches_torch_s():
    from vaekit.models.distributions import ContinuousBernoulli

    logits = torch.tensor(LOGITS, dtype=torch.float64)
    x = torch.rand(len(LOGITS), dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    ours = ContinuousBernoulli(logits)
    # torch's normaliser uses a Taylor series in a wide band around λ = 1/2 (|λ − 1/2| < 0.001 by default),
    # ours only where |logits| < 1e-3: compare away from it, where both are exact formulas.
    # torch works from probabilities, which lose digits at |logits| = 25 (ours is exact there: the
    # normalisation test above), hence 1e-7 and not 1e-9.
    theirs = torch.distributions.ContinuousBernoulli(logits=logits, lims=(0.4999999, 0.5000001))
    torch.testing.assert_close(ours.log_prob_elementwise(x), theirs.log_prob(x), rtol=1e-7, atol=1e-9)
    torch.testing.assert_close(ours.mean, theirs.mean, rtol=1e-7, atol=1e-9)


def test_a_continuous_bernoulli_vae_is_scored_as_a_bound_and_a_bernoulli_one_on_soft_data_is_not():
    import vaekit
    from vaekit.data import ImageDataset
    from vaekit.metrics import evaluate_likelihood, iwae_log_likelihood

    torch.manual_seed(0)
    soft = torch.rand(40, 3, 1, 1, dtype=torch.float64) * 0.8 + 0.1
    for likelihood, binary_data, bound in (("bernoulli", False, False), ("bernoulli", True, True),
                                            ("continuous-bernoulli", False, True)):
        model = vaekit.create_model("mlp-vae", input_shape=(3, 1, 1), hidden_dims=[], latent_dim=1,
                                    likelihood=likelihood).double().eval()
        data = soft.round() if binary_data else soft
        metrics = evaluate_likelihood(model.float(), ImageDataset(data.float()), iwae_samples=4)
        model.double()
        assert metrics["bound_on_log_px"] is bound and metrics["likelihood"] == likelihood
    # With the continuous Bernoulli, log p(x) by quadrature over the 1-D latent is above the ELBO, and the
    # IWAE estimate approaches it as k grows.
    with torch.no_grad():
        z = torch.linspace(-9, 9, 20_001, dtype=torch.float64)[:, None]
        log_pz = -0.5 * (z[:, 0] ** 2 + math.log(2 * math.pi))
        log_px_z = model.decode_distribution(z).log_prob_elementwise(soft[:5, None]).flatten(2).sum(-1)  # (5, points)
        log_px = torch.logsumexp(log_px_z + log_pz + math.log(z[1, 0] - z[0, 0]), dim=1)
        generator = torch.Generator().manual_seed(1)
        iwae = iwae_log_likelihood(model, soft[:5], None, 20_000, generator)
        elbo = torch.stack([iwae_log_likelihood(model, soft[:5], None, 1, generator) for _ in range(2000)]).mean(0)
    assert (elbo < log_px).all() and (log_px - iwae).abs().max() < 0.01


def test_running_moments_over_batches_equal_torch_s_over_everything():
    """Moments (latent scale, eval's latent statistics, tiling's GroupNorm statistics) against
    torch.var_mean over the concatenated batches, including values far from zero (cancellation)."""
    from vaekit.moments import Moments

    generator = torch.Generator().manual_seed(0)
    batches = [1e3 + torch.randn(3, n, generator=generator) for n in (5, 17, 1)]
    moments = Moments()
    for batch in batches:
        moments.add(batch)
    everything = torch.cat(batches, dim=-1).double()
    for correction in (0, 1):
        var, mean = torch.var_mean(everything, dim=-1, correction=correction)
        torch.testing.assert_close(moments.variance(correction), var, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(moments.mean(), mean, rtol=1e-12, atol=0)
    assert moments.count == 23
    constant = Moments()
    constant.add(torch.full((4,), 0.1))
    assert constant.variance().item() == 0.0  # rounding never gives a negative variance
