"""Live previews on the sampler nodes: rank 0's first frame of the denoised estimate after each step, drawn by
ComfyUI's own previewer, so the user's preview method (none, latent2rgb, TAESD) applies as on core KSampler.
A UNet3D model whose latent colours no previewer knows has the frame decoded by its own VAE on rank 0."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..distributed.engine.choices import MODEL_SETTINGS_FILE

SD_VAE_SCALING = 0.18215  # Stable Diffusion's VAE, which VideoCrafter2, Zeroscope and ModelScope decode with
PREVIEW_FORMAT = "JPEG"


class LivePreview:
    """Turns a PreviewEvent's frame into what ComfyUI's progress bar shows. kind: what the workers are asked to
    send (engine.contract.PREVIEW_KINDS): "latent", drawn by `previewer`; or "pixels", already decoded."""

    def __init__(self, kind: str, previewer: Any = None, latent_format: Any = None):
        self.kind = kind
        self.previewer = previewer
        self.image_latents = getattr(latent_format, "latent_dimensions", 2) == 2  # no frame axis (SD's TAESD)

    def image(self, frame: Any) -> Any:
        """The preview of a (1, C, 1, h, w) frame (numpy): latents, or pixels in [-1, 1]."""
        import latent_preview
        import torch

        x0 = torch.from_numpy(frame)
        if self.kind == "pixels":
            picture = latent_preview.preview_to_image(x0[0, :, 0].movedim(0, -1))
            return (PREVIEW_FORMAT, picture, latent_preview.MAX_PREVIEW_RESOLUTION)
        return self.previewer.decode_latent_to_preview_image(PREVIEW_FORMAT, x0[:, :, 0] if self.image_latents else x0)


def previews_on() -> bool:
    """Whether the server shows live previews (ComfyUI's --preview-method; none by default)."""
    from comfy.cli_args import LatentPreviewMethod, args

    return args.preview_method != LatentPreviewMethod.NoPreviews


def live_preview(latent_format: Any) -> LivePreview | None:
    """Previews of latents in `latent_format` by ComfyUI's previewer; None when the server shows none."""
    import latent_preview
    import torch

    if latent_format is None:
        return None
    previewer = latent_preview.get_previewer(torch.device("cpu"), latent_format)
    return None if previewer is None else LivePreview("latent", previewer, latent_format)


def pipeline_preview(folder: str | Path) -> LivePreview | None:
    """Previews for a UNet3D pipeline folder: by ComfyUI's previewer where its latent colours are known,
    else decoded by the model's VAE on rank 0; None when the server shows none."""
    if not previews_on():
        return None
    return live_preview(pipeline_latent_format(folder)) or LivePreview("pixels")


def pipeline_latent_format(folder: str | Path) -> Any | None:
    """The latent format of a UNet3D pipeline folder: SD 1.5's for Stable Diffusion's VAE; for another VAE the
    colour factors its video_infinity.json names ({"preview": {"latent_rgb_factors": [[r, g, b], ...],
    "latent_rgb_factors_bias": [r, g, b]}}, one row per latent channel); None when neither says."""
    import comfy.latent_formats

    try:
        vae = json.loads((Path(folder) / "vae" / "config.json").read_text())
    except (OSError, ValueError):
        return None
    if vae.get("latent_channels") == 4 and abs(float(vae.get("scaling_factor", 0.0)) - SD_VAE_SCALING) < 1e-6:
        return comfy.latent_formats.SD15()
    try:
        preview = json.loads((Path(folder) / MODEL_SETTINGS_FILE).read_text()).get("preview") or {}
    except (OSError, ValueError, AttributeError):
        return None
    factors = preview.get("latent_rgb_factors")
    if not isinstance(factors, list) or len(factors) != vae.get("latent_channels"):
        return None
    latent_format = comfy.latent_formats.LatentFormat()
    latent_format.latent_channels = len(factors)
    latent_format.latent_rgb_factors = factors
    latent_format.latent_rgb_factors_bias = preview.get("latent_rgb_factors_bias")
    return latent_format
