"""Test-only ComfyUI node, installed by the tests and never shipped: CONDITIONING of a chosen width.

Wan's text encoder (umT5-XXL) is far too big for CPU tests; this stands in for CLIPLoader + CLIPTextEncode
with a seeded random embedding per text, so different prompts give different conditioning.
"""

import hashlib

import torch


class TestConditioning:
    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "text": ("STRING", {"default": "a red circle moving right"}),
                "width": ("INT", {"default": 4096, "min": 1, "max": 8192}),
            },
            # LTX-Video's T5 encoder gives the text's attention mask too (its last two tokens: padding here).
            "optional": {"attention_mask": ("BOOLEAN", {"default": False})},
        }

    RETURN_TYPES = ("CONDITIONING",)
    FUNCTION = "encode"
    CATEGORY = "testing"

    def encode(self, text, width, attention_mask=False):
        seed = int(hashlib.sha256(text.encode()).hexdigest()[:8], 16)
        embedding = torch.randn(1, 8, width, generator=torch.Generator().manual_seed(seed))
        extras = {}
        if attention_mask:
            extras["attention_mask"] = torch.ones(1, 8, dtype=torch.int64)
            extras["attention_mask"][:, -2:] = 0
        return ([[embedding, extras]],)


class TestImageLatent:
    """A video LATENT whose first latent frame is a fixed "image" kept by a noise mask, the way core
    Wan22ImageToVideoLatent marks a start image (which needs Wan 2.2's VAE, too big for tests)."""

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "channels": ("INT", {"default": 48, "min": 1, "max": 128}),
                "frames": ("INT", {"default": 5, "min": 1, "max": 64}),
                "height": ("INT", {"default": 4, "min": 1, "max": 64}),
                "width": ("INT", {"default": 4, "min": 1, "max": 64}),
                "seed": ("INT", {"default": 0, "min": 0, "max": 2**31}),
            }
        }

    RETURN_TYPES = ("LATENT",)
    FUNCTION = "make"
    CATEGORY = "testing"

    def make(self, channels, frames, height, width, seed):
        samples = torch.zeros(1, channels, frames, height, width)
        samples[:, :, 0] = torch.randn(1, channels, height, width, generator=torch.Generator().manual_seed(seed))
        mask = torch.ones(1, 1, frames, height, width)
        mask[:, :, 0] = 0.0
        return ({"samples": samples, "noise_mask": mask},)


NODE_CLASS_MAPPINGS = {
    "VideoInfinityTestConditioning": TestConditioning,
    "VideoInfinityTestImageLatent": TestImageLatent,
}
