"""The wrapper around diffusers' image autoencoders (``vaekit.models.diffusers_autoencoders``) against the
class's own calls, on the same module and input: encode (the posterior's mode, or the point) then decode,
interleaved in one process (A B, B A, ...), medians over the rounds, vaekit's time over diffusers' as a ratio
of medians. Each class is built with its own default configuration (its published architecture; random
weights), except HunyuanImage, whose constructor has no defaults (a 4-channel f = 8 configuration here).

    python benchmarks/wrapped_autoencoders.py [--size 64] [--rounds 7] [--classes AutoencoderTiny ...]
"""

from __future__ import annotations

import argparse

import torch

from common import interleaved, machine, median
from vaekit.models.diffusers_autoencoders import WRAPPED, DiffusersAutoencoder

SETTINGS = {"AutoencoderKLHunyuanImage": dict(in_channels=3, out_channels=3, latent_channels=4,
                                              block_out_channels=(128, 256, 512, 512), layers_per_block=2,
                                              spatial_compression_ratio=8, sample_size=256, scaling_factor=1.0),
            "AutoencoderRAE": dict(encoder_input_size=224)}


def direct(name: str, module, x: torch.Tensor):
    """Encode and decode by the class's own calls, as its pipelines make them."""
    if name in ("AutoencoderKLQwenImage", "AutoencoderKLWan"):
        z = module.encode(x.unsqueeze(2)).latent_dist.mode()
        return module.decode(z).sample
    if name == "AutoencoderTiny":
        return module.decode(module.encode(x).latents).sample
    if name in ("AutoencoderDC", "AutoencoderRAE"):
        return module.decode(module.encode(x if name == "AutoencoderDC" else (x + 1) / 2).latent).sample
    z = module.encode(x).latent_dist.mode()
    if name == "ConsistencyDecoderVAE":
        return module.decode(z, generator=torch.Generator().manual_seed(0)).sample
    return module.decode(z).sample


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--classes", nargs="*", default=sorted(WRAPPED))
    args = parser.parse_args()
    import diffusers

    print(machine())
    print("| class | parameters | diffusers (s) | vaekit (s) | vaekit / diffusers |\n| --- | --- | --- | --- | --- |")
    for name in args.classes:
        torch.manual_seed(0)
        module = getattr(diffusers, name)(**SETTINGS.get(name, {})).eval()
        model = DiffusersAutoencoder(module)
        size = 224 if name == "AutoencoderRAE" else args.size
        x = torch.rand(1, 3, size, size, generator=torch.Generator().manual_seed(0)) * 2 - 1
        with torch.no_grad():
            times = interleaved({"diffusers": lambda: direct(name, module, x),
                                 "vaekit": lambda: model.decode(model.encode(x).mode())}, args.rounds, alternate=True)
        theirs, ours = median(times["diffusers"]), median(times["vaekit"])
        count = sum(p.numel() for p in module.parameters())
        print(f"| {name} | {count / 1e6:.1f} M | {theirs:.3f} | {ours:.3f} | {ours / theirs:.3f} |")


if __name__ == "__main__":
    main()
