"""Training and validation memory of kl-f8 (Stable Diffusion's VAE) per image, computed from the operations
it runs — no GPU needed, so these are estimates, labelled as such in docs/gpu.md.

The estimates are the library's (``vaekit.models.memory``), run on the meta device: for training, the
bytes of every tensor autograd keeps for the backward pass of one image (each storage counted once,
parameters left out); for validation, the peak of the tensors alive at once while one image is encoded
and its posterior mode decoded without gradients. The weights, gradients and AdamW's two moments of the
trained parameters add a fixed amount. LPIPS (VGG16) and the discriminator are left out: they add their
own activations (about a third more for LPIPS at these sizes). bf16 autocast keeps most activations in 2
bytes instead of 4; the figure for it is the float32 one halved, an upper bound on what autocast saves.

    python benchmarks/activation_memory.py [--sizes 256,512] [--json out.json]
"""

from __future__ import annotations

import argparse
import json

import vaekit
from vaekit.models.memory import reconstruction_bytes_per_image, training_bytes_per_image, training_state_bytes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="256,512")
    parser.add_argument("--json")
    args = parser.parse_args()
    model = vaekit.create_model("kl-f8")
    gib = 1024 ** 3
    results = {}
    for decoder_only in (False, True):
        trained = [p for name, p in model.named_parameters() if not decoder_only or name.startswith(("decoder.",
                                                                                                       "post_quant"))]
        fixed = training_state_bytes(model, trained)
        for size in (int(s) for s in args.sizes.split(",")):
            per_image = training_bytes_per_image(model, (3, size, size), decoder_only)
            key = f"{'decoder only' if decoder_only else 'whole autoencoder'}, {size}x{size}"
            results[key] = {"activations_per_image_gib": per_image / gib, "weights_grads_adam_gib": fixed / gib,
                            "images_in_24_gib_float32": int((24 * gib - fixed) // per_image),
                            "images_in_24_gib_bf16_at_most": int((24 * gib - fixed) // (per_image / 2))}
            print(f"{key}: {per_image / gib:.2f} GiB of activations per image (float32), weights + gradients + AdamW "
                  f"{fixed / gib:.2f} GiB; a 24 GiB card holds about {results[key]['images_in_24_gib_float32']} "
                  f"images per micro-batch in float32")
    for size in (int(s) for s in args.sizes.split(",")):
        per_image = reconstruction_bytes_per_image(model, (3, size, size))
        results[f"validation, {size}x{size}"] = {"peak_activations_per_image_gib": per_image / gib}
        print(f"validation (encode + decode, no gradients), {size}x{size}: {per_image / 2 ** 20:.0f} MiB per image")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)


if __name__ == "__main__":
    main()
