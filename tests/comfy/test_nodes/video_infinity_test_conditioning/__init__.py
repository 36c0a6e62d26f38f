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
            }
        }

    RETURN_TYPES = ("CONDITIONING",)
    FUNCTION = "encode"
    CATEGORY = "testing"

    def encode(self, text, width):
        seed = int(hashlib.sha256(text.encode()).hexdigest()[:8], 16)
        embedding = torch.randn(1, 8, width, generator=torch.Generator().manual_seed(seed))
        return ([[embedding, {}]],)


NODE_CLASS_MAPPINGS = {"VideoInfinityTestConditioning": TestConditioning}
