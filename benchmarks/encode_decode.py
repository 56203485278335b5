"""Encode + decode with Stable Diffusion's VAE config: vaekit against diffusers on the same weights.

Interleaved in one process (each round runs diffusers then vaekit, encode then decode), medians over
the rounds, speed-ups as ratios of medians. Outputs are compared (max abs difference of the latent
mean and of the image decoded from diffusers' latent), and each path's achieved GFLOP/s is printed next
to this machine's own large-matmul rate. On a CUDA machine it also times bf16 decoding at 1024×1024 and
bf16 encoding of 8 images at 512×512, and checks fp16 for NaNs. Weights are random (seeded): speed and
agreement do not depend on them.

vaekit's CPU path is autotuned (``vaekit.models.autotune``): each size's first call, outside the timed
rounds, times the convolution paths of every layer shape class not yet in this machine's cache and is
reported as "first call"; then the paths it chose are printed. Delete the cache file it names, or set
``VAEKIT_CACHE`` to an empty folder, to measure the timing cost itself.

    python benchmarks/encode_decode.py [--sizes 256 512] [--batches 1 4] [--rounds 3] [--json out.json]
"""

from __future__ import annotations

import argparse

import torch

from common import flops, interleaved, machine, matmul_rate, median, sd_pair, write_json
from vaekit.models import fastconv
from vaekit.models.fastconv import fast_paths


def nominal_flops(model, shape, device: str = "meta") -> tuple[int, int]:
    """FLOPs of encode and decode as direct convolutions and matmuls (counted on meta tensors, so that
    the fast paths' own arithmetic, e.g. Winograd's 4× fewer multiplications, is not what is counted):
    GFLOP/s below are nominal work per second, the same yardstick for both libraries."""
    with torch.device(device):
        twin = type(model)(model.config).eval()
        x = torch.empty(shape)
    with torch.no_grad():
        encode = flops(lambda: twin.encode(x).mean)
        z = twin.encode(x).mean
        decode = flops(lambda: twin.decode(z))
    return encode, decode


def tune(model, x, z) -> dict:
    """One untimed-by-the-table encode + decode: the autotuner times the paths of layer shapes it has not
    seen on this machine. Returns how long that took and the path each layer shape class got."""
    import time

    fastconv.autotuner.used.clear()
    start = time.perf_counter()
    model.encode(x)
    model.decode(z)
    seconds = time.perf_counter() - start
    chosen = dict(fastconv.autotuner.used)
    counts = {path: sum(1 for p in chosen.values() if p == path) for path in fastconv.PATHS}
    return {"first call s": seconds, "paths": chosen, "path counts": {p: n for p, n in counts.items() if n}}


def cpu_table(model, twin, sizes, batches, rounds) -> list[dict]:
    rows = []
    for size in sizes:
        for batch in batches:
            torch.manual_seed(1)
            x = torch.rand(batch, 3, size, size) * 2 - 1
            with torch.inference_mode():
                z = twin.encode(x).latent_dist.mean
                autotuned = tune(model, x, z)
                paths = {
                    "diffusers encode": lambda: twin.encode(x).latent_dist.mean,
                    "vaekit encode": lambda: model.encode(x).mean,
                    "diffusers decode": lambda: twin.decode(z).sample,
                    "vaekit decode": lambda: model.decode(z),
                }
                times = interleaved(paths, rounds, warmup=0 if rows else 1)
                encode_flops, decode_flops = nominal_flops(model, x.shape)
                latent_error = (model.encode(x).mean - z).abs().max().item()
                image_error = (model.decode(z) - twin.decode(z).sample).abs().max().item()
            row = {"size": size, "batch": batch, "rounds": rounds, "gflop_encode": encode_flops / 1e9,
                   "gflop_decode": decode_flops / 1e9, "max_abs_diff_latent": latent_error,
                   "max_abs_diff_image": image_error, "autotune": autotuned}
            for name, values in times.items():
                row[f"{name} s"] = median(values)
            for who in ("diffusers", "vaekit"):
                total = row[f"{who} encode s"] + row[f"{who} decode s"]
                row[f"{who} total s"] = total
                row[f"{who} GFLOP/s"] = (encode_flops + decode_flops) / total / 1e9
            row["speedup encode"] = row["diffusers encode s"] / row["vaekit encode s"]
            row["speedup decode"] = row["diffusers decode s"] / row["vaekit decode s"]
            row["speedup total"] = row["diffusers total s"] / row["vaekit total s"]
            rows.append(row)
            print(f"{size}²×{batch}: diffusers {row['diffusers total s']:.2f} s, vaekit {row['vaekit total s']:.2f} s, "
                  f"{row['speedup total']:.2f}×; first call (autotune) {autotuned['first call s']:.2f} s, "
                  f"layer shapes per path: {autotuned['path counts']}", flush=True)
    return rows


def ablation(model, twin, size, rounds) -> dict:
    """What each optimisation contributes: encode + decode at ``size``² batch 1 with the fast paths
    switched on one after another (same process, interleaved), each pinned for every layer, then the
    autotuned default (its choices made by ``cpu_table``'s or this function's first call). The last row
    keeps the transformed filters between calls (a copy of the model, so that its cached filters are its
    own)."""
    import copy

    torch.manual_seed(2)
    cached = copy.deepcopy(model)
    x = torch.rand(1, 3, size, size) * 2 - 1

    def run(net=model, **settings):
        def fn():
            with fast_paths(**settings):
                net.decode(net.encode(x).mean)
        return fn

    with torch.inference_mode():
        paths = {"diffusers": lambda: twin.decode(twin.encode(x).latent_dist.mean).sample,
                 "vaekit, all fast paths off": run(enabled=False),
                 "+ channels-last": run(path="channels-last"),
                 "+ Winograd F(2×2,3×3)": run(path="winograd2"),
                 "+ Winograd F(4×4,3×3)": run(path="winograd4"),
                 "autotuned per layer shape (default)": run(),
                 "autotuned + filters kept between calls": run(cached, winograd_cache_mb=4096)}
        run()()  # the autotuner's timing, if this size was not tuned yet, stays out of the rounds
        times = interleaved(paths, rounds)
    base = median(times["diffusers"])
    return {name: {"seconds": median(values), "speedup_vs_diffusers": base / median(values)}
            for name, values in times.items()}


def gpu_section(model, twin, rounds) -> dict:
    if not torch.cuda.is_available():
        return {"measured": False, "why": "no CUDA device on this machine"}
    from vaekit.models.fastconv import gpu_inference

    sync = torch.cuda.synchronize
    rate = matmul_rate(torch.bfloat16, "cuda", n=8192)
    result = {"measured": True, "bf16 matmul TFLOP/s": rate / 1e3, "device": torch.cuda.get_device_name()}
    for dtype in (torch.bfloat16, torch.float16):
        fast = gpu_inference(model, dtype)
        ref = twin.to("cuda", dtype)
        torch.manual_seed(3)
        z = torch.randn(1, 4, 128, 128, device="cuda", dtype=dtype)
        x = (torch.rand(8, 3, 512, 512, device="cuda") * 2 - 1).to(dtype)
        with torch.inference_mode():
            paths = {"diffusers decode 1024²": lambda: ref.decode(z).sample,
                     "vaekit decode 1024²": lambda: fast.decode(z),
                     "diffusers encode 512²×8": lambda: ref.encode(x).latent_dist.mean,
                     "vaekit encode 512²×8": lambda: fast.encode(x).mean}
            times = interleaved(paths, rounds, warmup=2, sync=sync)
            decode_flops = nominal_flops(model, (1, 3, 1024, 1024))[1]
            encode_flops = nominal_flops(model, (8, 3, 512, 512))[0]
            finite = all(torch.isfinite(fn()).all().item() for fn in paths.values())
        name = str(dtype).replace("torch.", "")
        entry = {f"{k} s": median(v) for k, v in times.items()}
        entry["speedup decode"] = entry["diffusers decode 1024² s"] / entry["vaekit decode 1024² s"]
        entry["speedup encode"] = entry["diffusers encode 512²×8 s"] / entry["vaekit encode 512²×8 s"]
        entry["vaekit decode fraction of matmul rate"] = decode_flops / entry["vaekit decode 1024² s"] / 1e9 / rate
        entry["vaekit encode fraction of matmul rate"] = encode_flops / entry["vaekit encode 512²×8 s"] / 1e9 / rate
        entry["all outputs finite"] = finite
        result[name] = entry
        twin.float().cpu()
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[256, 512])
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 4])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--ablation-rounds", type=int, default=5)
    parser.add_argument("--no-cpu", action="store_true", help="only the GPU section")
    parser.add_argument("--json")
    args = parser.parse_args()
    model, twin = sd_pair()
    report = {"machine": machine(), "autotune cache": str(fastconv.autotuner.cache_file()),
              "fast path settings": dict(fastconv.settings.__dict__)}
    print(f"fast CPU path: {'autotuned' if fastconv.settings.autotune else 'pinned'}; "
          f"choices cached in {report['autotune cache']}", flush=True)
    if not args.no_cpu:
        report["cpu matmul GFLOP/s"] = matmul_rate()
        print(f"this machine's fp32 matmul (2048³): {report['cpu matmul GFLOP/s']:.0f} GFLOP/s", flush=True)
        report["cpu"] = cpu_table(model, twin, args.sizes, args.batches, args.rounds)
        report["ablation 256² batch 1"] = ablation(model, twin, 256, args.ablation_rounds)
    report["gpu"] = gpu_section(model, twin, args.rounds)

    if "cpu" in report:
        rate = report["cpu matmul GFLOP/s"]
        print(f"\nCPU fp32, SD config, medians of {args.rounds} interleaved rounds; matmul rate {rate:.0f} GFLOP/s")
        print(f"{'input':>10} {'diffusers s':>12} {'vaekit s':>9} {'speed-up':>9} {'enc':>6} {'dec':>6} "
              f"{'diffusers GFLOP/s':>18} {'vaekit GFLOP/s':>15} {'max|Δ| latent':>14} {'max|Δ| image':>13}")
        for r in report["cpu"]:
            print(f"{r['size']}²×{r['batch']:<4} {r['diffusers total s']:>10.2f} {r['vaekit total s']:>9.2f} "
                  f"{r['speedup total']:>8.2f}× {r['speedup encode']:>5.2f}× {r['speedup decode']:>5.2f}× "
                  f"{r['diffusers GFLOP/s']:>8.0f} ({r['diffusers GFLOP/s'] / rate:4.0%}) "
                  f"{r['vaekit GFLOP/s']:>6.0f} ({r['vaekit GFLOP/s'] / rate:4.0%}) "
                  f"{r['max_abs_diff_latent']:>14.1e} {r['max_abs_diff_image']:>13.1e}")
        print("\nPaths the autotuner chose (layer shape class: path; medians of its timings in ms):")
        for r in report["cpu"]:
            print(f"  {r['size']}²×{r['batch']}: first call {r['autotune']['first call s']:.2f} s")
            entries = fastconv.autotuner.entries()
            for key, path in sorted(r["autotune"]["paths"].items()):
                times = entries.get(key, {}).get("seconds", {})
                print(f"    {key}: {path}  (" + ", ".join(f"{p} {t * 1e3:.0f}" for p, t in times.items()) + ")")
        print("\nWhat each optimisation contributes (256² batch 1, encode + decode):")
        for name, entry in report["ablation 256² batch 1"].items():
            print(f"  {name:<40} {entry['seconds']:6.2f} s  {entry['speedup_vs_diffusers']:.2f}× diffusers")
    gpu = report["gpu"]
    print("\nGPU:", "not measured — " + gpu["why"] if not gpu["measured"] else "")
    if gpu["measured"]:
        for key, value in gpu.items():
            print(f"  {key}: {value}")
    write_json(args.json, report)


if __name__ == "__main__":
    main()
