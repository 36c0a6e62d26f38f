"""Which caption words does the demo model use? Denoising error with the true caption against captions
with one word swapped, per noise level.

A word the UNet relies on raises the error when it is wrong; a word it ignores leaves the error where
it was. This answers in a minute what generating and tracking clips answers in many, and it says at
which noise levels a word matters. Real training clips are noised with the same noise for every caption.

    python -m training.word_use                       # the shipped model
    python -m training.word_use --model PIPELINE_FOLDER --clips 64
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL, DDIMScheduler

from distributed.engine.job import ModelSpec
from distributed.models.unet3d.loader import LoadedPipeline, load_pipeline
from distributed.models.unet3d.model import run_unet3d
from training import shapes_data as data
from training.train_tiny_model import DEFAULT_OUTPUT as DEFAULT_MODEL
from training.train_tiny_model import encode_text

DEFAULT_TIMESTEPS = (999, 950, 850, 750, 650, 550, 450, 350, 250, 150, 50)
OPPOSITE = {"left": "right", "right": "left", "up": "down", "down": "up"}
OTHER_AXIS = {"left": "up", "right": "down", "up": "left", "down": "right"}


def _next_colour(colour: str) -> str:
    names = list(data.COLOURS)
    return names[(names.index(colour) + 1) % len(names)]


def _other_shape(shape: str) -> str:
    return data.SHAPES[(data.SHAPES.index(shape) + 1) % len(data.SHAPES)]


# Each variant turns a clip's spec into the caption it is scored with.
VARIANTS: dict[str, Callable[[data.ClipSpec], str]] = {
    "true caption": lambda s: s.caption,
    "opposite direction": lambda s: data.caption(s.colour, s.shape, OPPOSITE[s.direction]),
    "other axis": lambda s: data.caption(s.colour, s.shape, OTHER_AXIS[s.direction]),
    "no direction": lambda s: data.caption(s.colour, s.shape, None),
    "other colour": lambda s: data.caption(_next_colour(s.colour), s.shape, s.direction),
    "other shape": lambda s: data.caption(s.colour, _other_shape(s.shape), s.direction),
}


PHASE_VARIANT = "phase half a period off"


def load_model(folder: Path) -> LoadedPipeline:
    """The pipeline folder as the engine loads it (fp32, CPU)."""
    return load_pipeline(ModelSpec(base=str(folder)))


def trained_trajectories(folder: Path, model: LoadedPipeline) -> str:
    """The trajectories of the model's last training stage (shapes_data.TRAJECTORIES)."""
    info = folder / "training.json"
    recorded = json.loads(info.read_text()).get("trajectories") if info.exists() else None
    anchored = getattr(model.unet, "frame_phase_period", None) is not None
    return recorded or ("anchored" if anchored else "free")


@torch.no_grad()
def encode_clips(vae: AutoencoderKL, clips: np.ndarray) -> torch.Tensor:
    """(B, T, H, W, 3) in [0, 1] -> (B, 4, T, h, w) scaled latents (posterior means)."""
    batch, frames = clips.shape[:2]
    pixels = torch.from_numpy(clips.reshape(batch * frames, *clips.shape[2:])).permute(0, 3, 1, 2) * 2 - 1
    latents = vae.encode(pixels).latent_dist.mean * vae.config.scaling_factor
    return latents.reshape(batch, frames, *latents.shape[1:]).permute(0, 2, 1, 3, 4)


@torch.no_grad()
def denoising_errors(
    model: LoadedPipeline, clips: int, seed: int, timesteps: tuple[int, ...], trajectories: str, batch: int = 8
) -> dict[str, list[float]]:
    """Mean MSE of the model's prediction (epsilon or v, as its scheduler says) per caption variant, one
    value per timestep, on clips of the model's own training data."""
    anchored = getattr(model.unet, "frame_phase_period", None) is not None
    specs, pixels = data.sample_clips(seed, clips, frames=16, trajectories=trajectories)
    latents = encode_clips(model.vae, pixels)
    index = torch.tensor([spec.start for spec in specs])[:, None] + torch.arange(latents.shape[2])[None]
    # The phase variant: the true caption, with every frame's place in the video half a period off.
    shifts = {name: 0 for name in VARIANTS} | ({PHASE_VARIANT: data.PERIOD // 2} if anchored else {})
    texts = {
        name: encode_text(model.tokenizer, model.text_encoder, [variant(s) for s in specs])
        for name, variant in VARIANTS.items()
    }
    scheduler = DDIMScheduler.from_config(model.scheduler_config)
    generator = torch.Generator().manual_seed(seed)
    errors: dict[str, list[float]] = {name: [] for name in shifts}
    for t in timesteps:
        noise = torch.randn(latents.shape, generator=generator)
        steps = torch.full((clips,), t)
        noisy = scheduler.add_noise(latents, noise, steps)
        velocity = scheduler.config.prediction_type == "v_prediction"
        target = scheduler.get_velocity(latents, noise, steps) if velocity else noise
        for name, shift in shifts.items():
            text = texts[name if name in texts else "true caption"]
            frame_text = text[:, None].expand(-1, latents.shape[2], -1, -1)
            losses = [
                F.mse_loss(
                    run_unet3d(
                        model.unet,
                        noisy[i : i + batch],
                        steps[i : i + batch],
                        frame_text[i : i + batch],
                        data.FPS,
                        index[i : i + batch] + shift,
                    ),
                    target[i : i + batch],
                    reduction="none",
                ).mean(dim=(1, 2, 3, 4))
                for i in range(0, clips, batch)
            ]
            errors[name].append(torch.cat(losses).mean().item())
    return errors


def print_table(errors: dict[str, list[float]], timesteps: tuple[int, ...]) -> None:
    """Error with the true caption, then each swapped word's extra error in percent of it."""
    true = np.asarray(errors["true caption"])
    others = [name for name in errors if name != "true caption"]
    print("extra denoising error when one caption word is wrong, % of the error with the true caption")
    print(f"{'timestep':>8} {'true caption':>13} " + " ".join(f"{name:>18}" for name in others))
    for row, t in enumerate(timesteps):
        extra = [100 * (errors[name][row] / true[row] - 1) for name in others]
        print(f"{t:>8} {true[row]:>13.5f} " + " ".join(f"{value:>+17.1f}%" for value in extra))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, default=DEFAULT_MODEL, help="pipeline folder")
    parser.add_argument("--clips", type=int, default=32)
    parser.add_argument("--seed", type=int, default=99)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model = load_model(args.model)
    trajectories = trained_trajectories(args.model, model)
    errors = denoising_errors(model, args.clips, args.seed, DEFAULT_TIMESTEPS, trajectories)
    print_table(errors, DEFAULT_TIMESTEPS)


if __name__ == "__main__":
    main()
