"""Likelihood metrics against closed forms: a linear-Gaussian VAE is probabilistic PCA, whose log p(x)
is the log-density of N(μ, WWᵀ + σ²I)."""

import math

import pytest
import torch
from torch.distributions import MultivariateNormal

import vaekit
from vaekit.data import ImageDataset
from vaekit.metrics import evaluate_likelihood, iwae_log_likelihood

DATA_DIM, LATENT_DIM, SIGMA = 6, 2, 0.5


@pytest.fixture(scope="module")
def ppca():
    """A linear VAE = PPCA, with a deliberately imperfect (but reasonable) diagonal encoder."""
    torch.manual_seed(0)
    model = vaekit.create_model("mlp-vae", input_shape=(DATA_DIM,), hidden_dims=[], latent_dim=LATENT_DIM,
                                likelihood="gaussian").double()
    W, mu = torch.randn(DATA_DIM, LATENT_DIM, dtype=torch.double), torch.randn(DATA_DIM, dtype=torch.double)
    M = W.T @ W + SIGMA**2 * torch.eye(LATENT_DIM, dtype=torch.double)
    posterior_mean_map = torch.linalg.solve(M, W.T)  # exact posterior mean = M⁻¹Wᵀ(x − μ)
    posterior_var = SIGMA**2 * torch.linalg.inv(M).diagonal()
    with torch.no_grad():
        model.decoder[0].weight.copy_(W)
        model.decoder[0].bias.copy_(mu)
        model.log_scale.fill_(math.log(SIGMA))
        encoder = model.encoder[0]
        encoder.weight.zero_()
        encoder.weight[:LATENT_DIM] = 0.8 * posterior_mean_map  # shrunk mean
        encoder.bias[:LATENT_DIM] = -0.8 * posterior_mean_map @ mu
        encoder.bias[LATENT_DIM:] = torch.log(posterior_var) + 0.7  # inflated variance
    x = MultivariateNormal(mu, W @ W.T + SIGMA**2 * torch.eye(DATA_DIM, dtype=torch.double)).sample((400,))
    log_px = MultivariateNormal(mu, W @ W.T + SIGMA**2 * torch.eye(DATA_DIM, dtype=torch.double)).log_prob(x)
    return model.eval(), x, log_px


def test_iwae_is_between_elbo_and_log_likelihood_and_tightens_with_k(ppca):
    model, x, log_px = ppca
    generator = torch.Generator().manual_seed(0)
    elbo = torch.stack([iwae_log_likelihood(model, x, None, 1, generator) for _ in range(200)]).mean(0)
    bounds = {k: iwae_log_likelihood(model, x, None, k, generator).mean() for k in (10, 100, 1000, 5000)}
    true = log_px.mean()
    assert elbo.mean() < bounds[10] < bounds[100] < bounds[1000] < true + 1e-3
    assert true - bounds[5000] < 0.02
    assert true - elbo.mean() > 0.2  # the encoder is imperfect, so the ELBO gap is real
    assert bounds[5000] <= true + 1e-3


def test_evaluated_elbo_matches_closed_form_expectation(ppca):
    """E_q[log p(x|z)] − KL has a closed form for a linear-Gaussian decoder."""
    model, x, _ = ppca
    with torch.no_grad():
        posterior = model.encode(x)
        W, mu = model.decoder[0].weight, model.decoder[0].bias
        residual = x - (posterior.mean @ W.T + mu)
        expected_sq = residual.pow(2).sum(1) + (posterior.var @ W.pow(2).T).sum(1)
        log_lik = -0.5 * (DATA_DIM * math.log(2 * math.pi * SIGMA**2) + expected_sq / SIGMA**2)
        closed_form = (-(log_lik - posterior.kl())).mean().item()
    model = vaekit.create_model("mlp-vae", input_shape=(1, 1, DATA_DIM), hidden_dims=[], latent_dim=LATENT_DIM,
                                likelihood="gaussian").double().eval()
    model.load_state_dict(ppca[0].state_dict())
    data = ImageDataset(x.view(-1, 1, 1, DATA_DIM).float(), value_range=(-math.inf, math.inf))
    data.images = data.images.double()  # keep the closed form's precision
    metrics = evaluate_likelihood(model, data, iwae_samples=0)
    assert metrics["negative_elbo"] == pytest.approx(closed_form, abs=0.15)


def _model_with_dead_dims(dead: list[int]):
    torch.manual_seed(0)
    model = vaekit.create_model("mlp-vae", input_shape=(1, 4, 4), hidden_dims=[16], latent_dim=5)
    last = model.encoder[-1]
    with torch.no_grad():
        last.weight[:5] *= 20  # live means vary strongly with x
        for d in dead:  # mean ≡ 0 and log-variance ≡ 0: the posterior is the prior, whatever x is
            for row in (d, d + 5):
                last.weight[row].zero_()
                last.bias[row] = 0.0
    return model.eval()


def test_active_units_and_kl_per_dim_report_dead_dimensions():
    model = _model_with_dead_dims([1, 3])
    data = ImageDataset(torch.rand(64, 1, 4, 4))
    metrics = evaluate_likelihood(model, data, iwae_samples=0)
    assert metrics["active_units"] == 3
    assert metrics["kl_per_dim"][1] == pytest.approx(0.0, abs=1e-6)
    assert metrics["kl_per_dim"][3] == pytest.approx(0.0, abs=1e-6)
    assert min(metrics["kl_per_dim"][i] for i in (0, 2, 4)) > 1e-3
    assert sum(metrics["kl_per_dim"]) == pytest.approx(metrics["kl"], rel=1e-5)


def test_autoencoder_gets_reconstruction_metrics_and_no_likelihood():
    model = vaekit.create_model("mlp-ae", input_shape=(1, 4, 4), hidden_dims=[16], latent_dim=3).eval()
    metrics = evaluate_likelihood(model, ImageDataset(torch.rand(20, 1, 4, 4)), iwae_samples=50)
    assert set(metrics) == {"num_examples", "likelihood", "reconstruction", "mse"}


def test_iwae_is_reproducible_under_a_seed():
    model = _model_with_dead_dims([])
    x = torch.rand(7, 1, 4, 4)
    first = iwae_log_likelihood(model, x, None, 40, torch.Generator().manual_seed(5))
    assert torch.equal(first, iwae_log_likelihood(model, x, None, 40, torch.Generator().manual_seed(5)))
    assert not torch.equal(first, iwae_log_likelihood(model, x, None, 40, torch.Generator().manual_seed(6)))
