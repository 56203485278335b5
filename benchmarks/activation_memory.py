"""Training memory of kl-f8 (Stable Diffusion's VAE) per image, computed from what autograd keeps — no GPU
needed, so these are estimates, labelled as such in docs/gpu.md.

A forward pass of one image under ``torch.autograd.graph.saved_tensors_hooks`` records every tensor kept
for the backward pass (each storage counted once); their bytes are the activation memory per image. The
weights, gradients and AdamW's two moments of the trained parameters add a fixed amount. LPIPS (VGG16)
and the discriminator are left out: they add their own activations (about a third more for LPIPS at
these sizes). bf16 autocast keeps most activations in 2 bytes instead of 4; the figure for it is the
float32 one halved, an upper bound on what autocast saves.

    python benchmarks/activation_memory.py [--sizes 256,512] [--json out.json]
"""

from __future__ import annotations

import argparse
import json

import torch

import vaekit


def saved_bytes(model: torch.nn.Module, x: torch.Tensor, decoder_only: bool) -> int:
    """Bytes of the distinct storages autograd keeps for one training forward pass of ``x``."""
    seen: dict[int, int] = {}

    def pack(tensor: torch.Tensor):
        storage = tensor.untyped_storage()
        seen[storage.data_ptr()] = storage.nbytes()
        return tensor

    if decoder_only:
        with torch.no_grad():
            z = model.encode(x).sample()
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            model.decode(z)
    else:
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            model(x)
    return sum(seen.values())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="256,512")
    parser.add_argument("--json")
    args = parser.parse_args()
    torch.manual_seed(0)
    model = vaekit.create_model("kl-f8").train()
    gib = 1024 ** 3
    results = {}
    for decoder_only in (False, True):
        trained = [p for name, p in model.named_parameters() if not decoder_only or name.startswith(("decoder.",
                                                                                                       "post_quant"))]
        fixed = sum(p.numel() for p in model.parameters()) * 4 + sum(p.numel() for p in trained) * 4 * 3
        for size in (int(s) for s in args.sizes.split(",")):
            x = torch.rand(1, 3, size, size) * 2 - 1
            per_image = saved_bytes(model, x, decoder_only)
            key = f"{'decoder only' if decoder_only else 'whole autoencoder'}, {size}x{size}"
            results[key] = {"activations_per_image_gib": per_image / gib, "weights_grads_adam_gib": fixed / gib,
                            "images_in_24_gib_float32": int((24 * gib - fixed) // per_image),
                            "images_in_24_gib_bf16_at_most": int((24 * gib - fixed) // (per_image / 2))}
            print(f"{key}: {per_image / gib:.2f} GiB of activations per image (float32), weights + gradients + AdamW "
                  f"{fixed / gib:.2f} GiB; a 24 GiB card holds about {results[key]['images_in_24_gib_float32']} "
                  f"images per micro-batch in float32")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)


if __name__ == "__main__":
    main()
