"""The CPU inference fast paths: Winograd convolutions and channels-last, against direct convolution."""

import copy
import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import vaekit
from conftest import relative_error
from vaekit.models import autotune, fastconv
from vaekit.models.autotune import Autotuner
from vaekit.models.fastconv import fast_paths, winograd_conv3x3, winograd_filter, winograd_matrices


@pytest.mark.parametrize("m", [2, 3, 4])
def test_winograd_matrices_compute_a_correlation(m):
    """Aᵀ[(G g) ⊙ (Bᵀ d)] is the valid correlation of d with g (the defining identity, in float64)."""
    Bt, G, At = winograd_matrices(m)
    rng = np.random.default_rng(m)
    d, g = rng.standard_normal(m + 2), rng.standard_normal(3)
    expected = np.array([d[i:i + 3] @ g for i in range(m)])
    np.testing.assert_allclose(At @ ((G @ g) * (Bt @ d)), expected, atol=1e-12)


@pytest.mark.parametrize("m", [2, 4])
@pytest.mark.parametrize("shape", [(1, 16, 8, 8), (2, 24, 13, 19), (3, 8, 1, 5)])
def test_winograd_convolution_equals_conv2d(m, shape):
    torch.manual_seed(0)
    x = torch.randn(shape)
    weight = torch.randn(12, shape[1], 3, 3) / (9 * shape[1]) ** 0.5
    bias = torch.randn(12)
    reference = F.conv2d(x.double(), weight.double(), bias.double(), padding=1)
    for layout in (torch.contiguous_format, torch.channels_last):
        # Small chunks: the row-chunked path must give the same as one chunk.
        for chunk in (None, 64):
            out = winograd_conv3x3(x.contiguous(memory_format=layout), winograd_filter(weight, m), bias, m, chunk)
            assert out.shape == reference.shape
            torch.testing.assert_close(out.double(), reference, atol=2e-5 if m == 4 else 2e-6, rtol=0)


@pytest.mark.parametrize("shape", [(1, 16, 7, 9), (2, 8, 3, 4)])
def test_winograd_convolution_of_an_enlarged_input(shape):
    """upsample=2 convolves the nearest-neighbour enlargement, built a row chunk at a time (chunks that
    start inside an enlarged row included)."""
    torch.manual_seed(0)
    x = torch.randn(shape)
    weight = torch.randn(12, shape[1], 3, 3) / (9 * shape[1]) ** 0.5
    bias = torch.randn(12)
    reference = F.conv2d(F.interpolate(x.double(), scale_factor=2.0, mode="nearest"), weight.double(), bias.double(),
                         padding=1)
    for chunk in (None, 64, 1):
        out = winograd_conv3x3(x.contiguous(memory_format=torch.channels_last), winograd_filter(weight, 4), bias,
                               4, chunk, upsample=2)
        torch.testing.assert_close(out.double(), reference, atol=2e-5, rtol=0)
    conv = fastconv.Conv2d(shape[1], 12, 3, padding=1)
    with torch.no_grad():
        conv.weight.copy_(weight), conv.bias.copy_(bias)
        with fast_paths(False):  # the ordinary path interpolates, then convolves
            torch.testing.assert_close(conv(x, upsample=2).double(), reference, atol=1e-5, rtol=0)


def test_filter_transform_matches_float64():
    torch.manual_seed(0)
    weight = torch.randn(6, 5, 3, 3)
    _, G, _ = winograd_matrices(4)
    G = torch.from_numpy(G)
    exact = torch.einsum("ik,ockl,jl->ijco", G, weight.double(), G).reshape(36, 5, 6)
    torch.testing.assert_close(winograd_filter(weight, 4).double(), exact, atol=1e-6, rtol=1e-6)
    scratch = torch.full((36 * 5 * 6 + 7,), float("nan"))
    torch.testing.assert_close(winograd_filter(weight, 4, out=scratch).double(), exact, atol=1e-6, rtol=1e-6)


def _conv(in_channels=8, out_channels=8, **kwargs):
    torch.manual_seed(0)
    return fastconv.Conv2d(in_channels, out_channels, 3, padding=1, **kwargs)


def test_winograd_applies_to_cpu_float32_inference_only():
    conv = _conv()
    x = torch.randn(1, 8, 6, 6)
    with fast_paths(winograd_min_channels=1):
        assert not conv._winograd_applies(x)  # autograd on: training runs the ordinary convolution
        with torch.no_grad():
            assert conv._winograd_applies(x)
            assert not conv._winograd_applies(x.to(torch.bfloat16))
            assert not conv._winograd_applies(x.double())
            assert not _conv(stride=2)._winograd_applies(x)
            assert not fastconv.Conv2d(8, 8, 1)._winograd_applies(x)
            with fast_paths(False):
                assert not conv._winograd_applies(x)
            with fast_paths(winograd=False):
                assert not conv._winograd_applies(x)
    with torch.no_grad():
        assert not conv._winograd_applies(x)  # too few channels for the default threshold
    with pytest.raises(AttributeError, match="unknown fast-path setting"):
        with fast_paths(winograd_tiles=2):
            pass


def test_transformed_filters_follow_weight_updates():
    conv = _conv()
    x = torch.randn(1, 8, 10, 10)
    with fast_paths(winograd_min_channels=1), torch.no_grad():
        conv(x)
        conv.weight.mul_(-2)  # an in-place update, as an optimizer step makes
        fast = conv(x)
    torch.testing.assert_close(fast, F.conv2d(x, conv.weight, conv.bias, padding=1), atol=1e-4, rtol=0)
    assert set(conv.state_dict()) == {"weight", "bias"}  # nothing of the cache is saved


def test_filter_cache_stays_within_its_budget_and_dies_with_its_layers():
    """Layers beyond settings.winograd_cache_mb transform their filters per call: same outputs."""
    import gc

    gc.collect()  # layers of earlier tests, if any, leave the cache now rather than during the counting
    torch.manual_seed(0)
    convs = [fastconv.Conv2d(32, 32, 3, padding=1) for _ in range(3)]  # 36·32·32·4 B = 144 KiB each
    x = torch.randn(1, 32, 9, 9)
    with torch.no_grad():
        with fast_paths(winograd_min_channels=1, winograd_cache_mb=0):
            uncached = [conv(x) for conv in convs]
            assert fastconv.filter_cache.nbytes() == 0
        before = fastconv.filter_cache.nbytes()
        with fast_paths(winograd_min_channels=1, winograd_cache_mb=(before + 2.5 * 36 * 32 * 32 * 4) / 2**20):
            for _ in range(2):
                cached = [conv(x) for conv in convs]
            assert fastconv.filter_cache.nbytes() - before == 2 * 36 * 32 * 32 * 4  # two fit, one does not
    for a, b in zip(cached, uncached):
        assert torch.equal(a, b)
    del convs, cached
    gc.collect()
    assert fastconv.filter_cache.nbytes() == before


def test_inference_mode_and_no_grad_calls_can_alternate():
    """The reused filter buffer must stay writable whichever mode created it."""
    conv = fastconv.Conv2d(8, 8, 3, padding=1)
    fastconv.filter_cache.scratch.buffer = None
    x = torch.randn(1, 8, 6, 6)
    with fast_paths(winograd_min_channels=1):
        with torch.inference_mode():
            first = conv(x)
        with torch.no_grad():
            second = conv(x)
    assert torch.equal(first, second)


def test_gradients_are_those_of_an_ordinary_convolution():
    conv = _conv()
    x = torch.randn(2, 8, 7, 7, requires_grad=True)
    with fast_paths(winograd_min_channels=1):
        conv(x).square().sum().backward()
    plain = torch.nn.Conv2d(8, 8, 3, padding=1)
    plain.load_state_dict(conv.state_dict())
    x2 = x.detach().clone().requires_grad_()
    plain(x2).square().sum().backward()
    assert torch.equal(x.grad, x2.grad) and torch.equal(conv.weight.grad, plain.weight.grad)


@pytest.mark.parametrize("tile", [2, 4])
def test_autoencoder_outputs_with_and_without_fast_paths_agree(tile):
    torch.manual_seed(0)
    model = vaekit.create_model("autoencoder-kl", block_out_channels=(32, 64), layers_per_block=1,
                                norm_num_groups=8).eval()
    x = torch.rand(2, 3, 30, 36) * 2 - 1
    with torch.no_grad():
        with fast_paths(False):
            posterior, = (model.encode(x),)
            images = model.decode(posterior.mean)
        with fast_paths(winograd_min_channels=1, winograd_tile=tile):
            fast_posterior = model.encode(x)
            fast_images = model.decode(posterior.mean)
    torch.testing.assert_close(fast_posterior.mean, posterior.mean, atol=1e-4, rtol=0)
    torch.testing.assert_close(fast_posterior.logvar, posterior.logvar, atol=1e-4, rtol=0)
    torch.testing.assert_close(fast_images, images, atol=1e-4, rtol=0)
    assert fast_images.is_contiguous()  # callers get ordinary NCHW tensors back


@pytest.mark.parametrize("offset", [0.0, 30.0, 1000.0])
def test_winograd_on_trained_filters_and_offset_activations(trained_small, offset):
    """F(4×4) amplifies rounding more than F(2×2) or direct convolution; random filters on unit noise do
    not show whether that matters. Every 3×3 convolution of a model that has learnt something, fed its
    real input shifted by ``offset`` times that input's standard deviation, against float64: within
    5e-5 of the output's scale (measured: 2e-5 at most, over all layers and offsets), so no layer
    needs the smaller transform or the direct path."""
    model, photo = trained_small
    convs = [m for m in model.modules() if isinstance(m, fastconv.Conv2d) and m.kernel_size == (3, 3)
             and m.stride == (1, 1)]
    inputs = {}
    hooks = [conv.register_forward_pre_hook(lambda m, args: inputs.setdefault(m, args[0].contiguous())) for conv in convs]
    with torch.no_grad(), fast_paths(False):
        model.decode(model.encode(photo).mean)
    for hook in hooks:
        hook.remove()
    assert len(inputs) == len(convs) >= 20
    for conv, x in inputs.items():
        x = x + offset * x.std()
        weight, bias = conv.weight.detach(), conv.bias.detach()
        reference = F.conv2d(x.double(), weight.double(), bias.double(), padding=1)
        for m in (4, 2):
            out = winograd_conv3x3(x.contiguous(memory_format=torch.channels_last), winograd_filter(weight, m), bias, m,
                                   None)
            assert relative_error(out, reference) < 5e-5, (conv, m)


@pytest.mark.parametrize("offset", [0.0, 100.0])
def test_fast_paths_on_trained_weights_are_as_accurate_as_float32(trained_small, offset):
    """The whole model on a photograph (and on latents shifted far from the prior's range), the fast paths
    with Winograd on every 3×3 convolution against float64: within the 2e-5 contract of the output's scale.

    The bound is the arithmetic's, not one machine's: float32 rounds at u = 2⁻²⁴ ≈ 6e-8 per operation, and
    F(4×4, 3×3) multiplies rounding errors by at most κ = (‖Bᵀ‖₂ ‖G‖₂ ‖Aᵀ‖₂)² ≈ 1.3e4 (from the transform
    matrices, checked below) — the worst case, where each error adds with the same sign; the contract
    (≈ 330 u) assumes they do not. Measured 4.3e-6 to 6.8e-6 on AVX2 and AVX-512 machines. Direct float32
    convolution is not a yardstick: its error is oneDNN's, which differs by CPU (7.4e-7 on one, 3e-6 on
    another)."""
    from vaekit.models.fastconv import winograd_matrices

    bt, g, at = winograd_matrices(4)
    kappa = (np.linalg.norm(bt, 2) * np.linalg.norm(g, 2) * np.linalg.norm(at, 2)) ** 2
    unit_roundoff = 2.0 ** -24
    assert 2e-5 < kappa * unit_roundoff  # the contract is tighter than the worst case, not looser
    model, photo = trained_small
    reference = copy.deepcopy(model).double()
    with torch.no_grad():
        latents = reference.encode(photo.double()).mean
        images = reference.decode(latents + offset)
        with fast_paths(winograd_min_channels=1, winograd_tile=4):
            fast_latents = model.encode(photo).mean
            fast_images = model.decode(latents.float() + offset)
    for fast, exact in ((fast_latents, latents), (fast_images, images)):
        assert relative_error(fast, exact) < 2e-5


def test_other_dtypes_take_the_ordinary_path_and_keep_their_dtype():
    """The GPU precisions (bf16/fp16) are never routed through the float32 CPU fast paths."""
    torch.manual_seed(0)
    model = vaekit.create_model("autoencoder-kl", block_out_channels=(32, 64), layers_per_block=1,
                                norm_num_groups=8).eval()
    x = torch.rand(1, 3, 16, 16) * 2 - 1
    with torch.no_grad(), fast_paths(winograd_min_channels=1):
        reference = model.decode(model.encode(x).mean)
        half = model.to(torch.bfloat16)
        out = half.decode(half.encode(x.to(torch.bfloat16)).mean)
    assert out.dtype == torch.bfloat16 and torch.isfinite(out).all()
    assert (out.float() - reference).abs().max() < 0.1


def test_float16_overflow_is_recomputed_in_float32():
    """SDXL's VAE overflows float16 inside the decoder; the output must come back finite, as float32's."""
    torch.manual_seed(0)
    model = vaekit.create_model("autoencoder-kl", block_out_channels=(32, 64), layers_per_block=1,
                                norm_num_groups=8).eval()
    with torch.no_grad():
        model.decoder.mid_block.resnets[0].conv2.weight.mul_(1e6)  # activations beyond 65504
        z = torch.randn(1, 4, 4, 4)
        reference = model.decode(z)
        half = vaekit.create_model("autoencoder-kl", block_out_channels=(32, 64), layers_per_block=1,
                                   norm_num_groups=8).eval()
        half.load_state_dict(model.state_dict())
        half = half.half()
        assert not torch.isfinite(half.decoder(half.post_quant_conv(z.half()))).all()  # it does overflow
        with pytest.warns(UserWarning, match="overflowed float16"):
            out = half.decode(z.half())
    assert out.dtype == torch.float16 and torch.isfinite(out).all()
    torch.testing.assert_close(out.float(), reference, atol=2e-2, rtol=0)


def test_gpu_inference_copy_keeps_the_weights_and_sets_dtype_and_layout():
    torch.manual_seed(0)
    model = vaekit.create_model("autoencoder-kl", block_out_channels=(32, 64), layers_per_block=1,
                                norm_num_groups=8).eval()
    fast = fastconv.gpu_inference(model, torch.bfloat16, device="cpu")
    weight = fast.decoder.conv_in.weight
    assert weight.dtype == torch.bfloat16 and weight.is_contiguous(memory_format=torch.channels_last)
    assert model.decoder.conv_in.weight.dtype == torch.float32  # the original is untouched
    for name, tensor in model.state_dict().items():
        torch.testing.assert_close(fast.state_dict()[name].float(), tensor, atol=0, rtol=1e-2)
    with pytest.raises(ValueError, match="float16, bfloat16 or float32"):
        fastconv.gpu_inference(model, torch.int8, device="cpu")


# The autotuner: timed choices among the paths, per machine and shape, cached on disk. Timings are never
# real here: a fake clock is advanced by the candidates themselves.

class FakeClock:
    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def _scripted(clock: FakeClock, durations, out=None):
    """A candidate whose successive runs take ``durations`` on ``clock``; more runs than that fail."""
    remaining = list(durations)
    out = torch.ones(4) if out is None else out

    def run():
        assert remaining, "ran more often than warm-up + repeats"
        clock.now += remaining.pop(0)
        return out
    return run


MACHINE = {"cpu": "AMD EPYC 9R14", "isa": ["avx2", "avx512f"], "torch": "2.15.0", "threads": 2}


def _tuner(folder, clock=None, **machine):
    return Autotuner(folder, clock=clock or FakeClock(), machine=lambda: {**MACHINE, **machine})


def _never(name):
    def run():
        raise AssertionError(f"{name} was timed again")
    return run


def test_autotuner_takes_the_lowest_median_after_an_untimed_warm_up(tmp_path):
    clock = FakeClock()
    tuner = _tuner(tmp_path, clock)
    # First run of each: the warm-up (slow, not counted). "a" has the fastest single run, "b" the lowest
    # median (not the lowest mean: its outlier), "c" the lowest mean.
    runs = {"a": [50, 0.5, 3.0, 3.0], "b": [50, 1.0, 9.0, 2.0], "c": [50, 2.5, 2.5, 2.5]}
    assert tuner.choose("k", {name: _scripted(clock, d) for name, d in runs.items()}, 1e-3) == "b"
    assert tuner.entries()["k"]["seconds"] == {"a": 3.0, "b": 2.0, "c": 2.5}
    assert tuner.used == {"k": "b"}
    tied = {"x": [1, 2, 2, 2], "y": [1, 2, 2, 2]}  # a tie goes to the first listed (the reference)
    assert tuner.choose("tie", {name: _scripted(clock, d) for name, d in tied.items()}, 1e-3) == "x"


def test_a_candidate_that_disagrees_with_the_reference_is_never_chosen(tmp_path):
    clock = FakeClock()
    tuner = _tuner(tmp_path, clock)
    candidates = {"plain": _scripted(clock, [1, 5, 5, 5], torch.arange(4.0)),
                  "broken": _scripted(clock, [1], torch.arange(4.0) + 0.01)}  # fastest, if it were timed
    with pytest.warns(UserWarning, match="'broken' differs from 'plain'"):
        assert tuner.choose("k", candidates, fastconv.tuning_tolerance()) == "plain"
    assert set(tuner.entries()["k"]["rejected"]) == {"broken"}


def test_a_choice_is_timed_and_written_once_then_read_back(tmp_path, monkeypatch):
    writes = []
    write = Autotuner._write
    monkeypatch.setattr(Autotuner, "_write", lambda self, *args: writes.append(args) or write(self, *args))
    clock = FakeClock()
    tuner = _tuner(tmp_path, clock)
    assert tuner.choose("k", {"a": _scripted(clock, [1, 2, 2, 2]), "b": _scripted(clock, [1, 1, 1, 1])}, 1e-3) == "b"
    assert len(writes) == 1
    assert tuner.choose("k", {"a": _never("a"), "b": _never("b")}, 1e-3) == "b"  # from memory
    fresh = _tuner(tmp_path)  # another process on the same machine: from the file
    assert fresh.choose("k", {"a": _never("a"), "b": _never("b")}, 1e-3) == "b"
    assert len(writes) == 1
    saved = json.loads(tuner.cache_file().read_text())
    assert saved["machine"] == MACHINE and saved["choices"]["k"]["path"] == "b"


def test_the_cache_key_follows_the_machine_and_the_shape(tmp_path):
    files = {_tuner(tmp_path).cache_file(), _tuner(tmp_path, cpu="Intel(R) Xeon(R) Platinum 8488C").cache_file(),
             _tuner(tmp_path, isa=["avx2"]).cache_file(), _tuner(tmp_path, threads=1).cache_file(),
             _tuner(tmp_path, torch="2.16.0").cache_file()}
    assert len(files) == 5
    clock = FakeClock()
    _tuner(tmp_path, clock).choose("k", {"a": _scripted(clock, [1, 1, 1, 1])}, 1e-3)
    other = _tuner(tmp_path, clock, cpu="Intel(R) Xeon(R) Platinum 8488C")
    assert other.choose("k", {"a": _scripted(clock, [1, 1, 1, 1])}, 1e-3) == "a"  # timed: it did not raise
    here = autotune.machine()
    assert here["threads"] == torch.get_num_threads() and here["torch"] == torch.__version__
    assert here["cpu"] and isinstance(here["isa"], list)

    conv, wider = _conv(16, 16), _conv(16, 32)
    x = torch.randn(1, 16, 32, 32).contiguous(memory_format=torch.channels_last)
    key = fastconv.shape_key(conv, x)
    assert fastconv.shape_key(conv, torch.randn(1, 16, 32, 33).contiguous(memory_format=torch.channels_last)) == key
    others = [fastconv.shape_key(wider, x), fastconv.shape_key(conv, x, upsample=2),
              fastconv.shape_key(conv, x.contiguous()), fastconv.shape_key(conv, torch.randn(1, 16, 64, 64)),
              fastconv.shape_key(conv, torch.randn(4, 16, 32, 32).contiguous(memory_format=torch.channels_last))]
    assert len({key, *others}) == 6


@pytest.mark.parametrize("content", ["{not json", '{"choices": {"k": {"path": 3}}}', "[]"])
def test_a_corrupt_cache_file_is_ignored_with_a_warning_and_rewritten(tmp_path, content):
    clock = FakeClock()
    tuner = _tuner(tmp_path, clock)
    tuner.cache_file().parent.mkdir(parents=True, exist_ok=True)
    tuner.cache_file().write_text(content)
    with pytest.warns(UserWarning, match="unreadable fast-path autotune cache"):
        assert tuner.choose("k", {"a": _scripted(clock, [1, 2, 2, 2]), "b": _scripted(clock, [1, 1, 1, 1])},
                            1e-3) == "b"
    assert json.loads(tuner.cache_file().read_text())["choices"]["k"]["path"] == "b"
    assert _tuner(tmp_path).choose("k", {"a": _never("a"), "b": _never("b")}, 1e-3) == "b"


@pytest.mark.parametrize("upsample", [1, 2])
def test_every_path_agrees_with_the_plain_path(upsample):
    """Every path the autotuner may pick, on both layouts, against float64 and against the plain path:
    within the per-layer contract of test_winograd_on_trained_filters_and_offset_activations, 5e-5 of the
    output's scale (F(4×4)'s worst case κ·u ≈ 7.8e-4 assumes every rounding adds with one sign; the
    contract assumes they do not)."""
    torch.manual_seed(0)
    conv = fastconv.Conv2d(24, 12, 3, padding=1)
    with torch.no_grad():
        conv.weight.copy_(torch.randn(12, 24, 3, 3) / (9 * 24) ** 0.5)
    x = torch.randn(2, 24, 13, 19)
    enlarged = F.interpolate(x.double(), scale_factor=float(upsample), mode="nearest")
    reference = F.conv2d(enlarged, conv.weight.double(), conv.bias.double(), padding=1)
    with torch.no_grad():
        for memory_format in (torch.contiguous_format, torch.channels_last):
            laid_out = x.contiguous(memory_format=memory_format)
            plain = conv.run_path("plain", laid_out, upsample)
            assert fastconv.layout(plain) == fastconv.layout(laid_out)  # what follows sees the same layout
            for path in fastconv.conv_paths(laid_out):
                out = conv.run_path(path, laid_out, upsample)
                assert out.shape == reference.shape
                assert relative_error(out, reference) < 5e-5, path
                assert relative_error(out, plain.double()) < 5e-5, path
    assert fastconv.conv_paths(x.contiguous(memory_format=torch.channels_last)) == fastconv.PATHS
    assert fastconv.conv_paths(x) == ("plain", "winograd2", "winograd4")
    # While timing, a candidate is dropped only beyond F(4×4)'s worst case, far above the contract.
    assert fastconv.tuning_tolerance() == fastconv.rounding_bound(4) > 10 * 5e-5


def test_a_convolution_runs_the_path_its_timings_chose(tmp_path, monkeypatch):
    clock = FakeClock()
    tuner = _tuner(tmp_path, clock)
    monkeypatch.setattr(fastconv, "autotuner", tuner)
    seconds = {"plain": 4.0, "channels-last": 3.0, "winograd2": 1.0, "winograd4": 2.0}
    run_path = fastconv.Conv2d.run_path

    def timed(self, path, x, upsample=1):
        clock.now += seconds[path]
        return run_path(self, path, x, upsample)

    monkeypatch.setattr(fastconv.Conv2d, "run_path", timed)
    conv = _conv(16, 16)
    x = torch.randn(1, 16, 12, 12).contiguous(memory_format=torch.channels_last)
    with torch.no_grad(), fast_paths(winograd_min_channels=1, autotune=True):
        out = conv(x)
        assert tuner.used == {fastconv.shape_key(conv, x): "winograd2"}
        assert torch.equal(out, run_path(conv, "winograd2", x))
        before = clock.now
        conv(x)
        assert clock.now - before == seconds["winograd2"]  # the second call runs its choice, untimed
    with torch.no_grad(), fast_paths(winograd_min_channels=1):  # a path setting given: pinned, not tuned
        assert conv.choose_path(x) == "winograd4"
        with fast_paths(winograd_min_channels=1, winograd_tile=2):
            assert conv.choose_path(x) == "winograd2"


def test_paths_can_be_pinned_in_code_and_in_the_environment():
    with fast_paths(path="channels-last") as pinned:
        assert pinned.enabled and not pinned.autotune and not pinned.winograd and pinned.channels_last
    with fast_paths(path="plain") as pinned:
        assert not pinned.enabled
    with fast_paths(winograd_tile=2) as pinned:
        assert not pinned.autotune and pinned.winograd_tile == 2
    with fast_paths(winograd_min_channels=128, autotune=True) as pinned:
        assert pinned.autotune
    with pytest.raises(ValueError, match="unknown fast CPU path 'fastest'"):
        with fast_paths(path="fastest"):
            pass
    assert fastconv.settings_from({}).autotune and fastconv.settings_from({}).enabled
    assert not fastconv.settings_from({"VAEKIT_FAST_CPU_AUTOTUNE": "0"}).autotune
    assert fastconv.settings_from({"VAEKIT_FAST_CPU_PATH": "winograd2"}).winograd_tile == 2
    assert not fastconv.settings_from({"VAEKIT_FAST_CPU_PATH": "winograd2"}).autotune
    assert not fastconv.settings_from({"VAEKIT_FAST_CPU_PATH": "plain"}).enabled
    assert not fastconv.settings_from({"VAEKIT_FAST_CPU": "0", "VAEKIT_FAST_CPU_PATH": "auto"}).enabled


def test_whatever_the_timings_choose_the_model_stays_within_the_float32_contract(trained_small, tmp_path,
                                                                                  monkeypatch):
    """Random timings give layers of different shapes different paths; the whole model must still meet
    test_fast_paths_on_trained_weights_are_as_accurate_as_float32's 2e-5 of the output's scale."""
    import random

    rng = random.Random(0)
    tuner = Autotuner(tmp_path, clock=rng.random, machine=lambda: {"cpu": "random timings"})
    monkeypatch.setattr(fastconv, "autotuner", tuner)
    model, photo = trained_small
    reference = copy.deepcopy(model).double()
    with torch.no_grad():
        latents = reference.encode(photo.double()).mean
        images = reference.decode(latents)
        with fast_paths(winograd_min_channels=1, autotune=True):
            fast_latents = model.encode(photo).mean
            fast_images = model.decode(latents.float())
    assert len(set(tuner.used.values())) >= 3, tuner.used
    for fast, exact in ((fast_latents, latents), (fast_images, images)):
        assert relative_error(fast, exact) < 2e-5
