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
