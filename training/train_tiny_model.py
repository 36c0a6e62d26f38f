"""Trains the embedded tiny text-to-video model ("tiny-shapes-t2v") on procedural moving-shape clips.

Six stages, and two more tried but not shipped, each resumable from checkpoints under --work:

1. a per-frame AutoencoderKL (64x64 RGB <-> 4x8x8 latents);
2. a latent cache: every frame the data can contain (colour x shape x direction x position) encoded once, so a
   training clip is a lookup, not 16 encoder calls;
3. the decoder alone, fine-tuned on those cached latents (the encoder, hence the latents, stay fixed);
4. a UNet3D (VideoCrafter2 variant, fps embedding on) denoising 16-frame latent clips, conditioned
   per frame through `run_unet3d` -- the exact call the engine makes at inference;
5. the placement stage: the same UNet, with a spatial position embedding that the caption scales and the
   caption in its time embedding, on clips in which each direction travels its own lane, with v-prediction
   on a schedule whose last step is pure noise. There the caption alone says where the shape is, and the
   lane says which way it goes, so the direction word decides the motion (docs/4-quality.md, probes 19 to 23);
6. the open-caption stage: the placement stage continued at a lower rate with captions that leave attributes
   out more often, so that a colour the caption leaves open stays one colour over the whole video;
7. (off by default, `--wrap-steps`) the wrap stage: the same again with spatial convolutions that wrap
   around the canvas, as the shapes do, so a shape crossing an edge stays one shape to the network. It
   removed the flickers at wraps but lost the agreement on an open colour (docs/4-quality.md).
   `--wrap-from placement` wraps from the placement stage on instead, so the stages that learn the
   lanes and the open captions learn them on a canvas without edges.
8. (off by default, `--long-steps`) the long-video stage: the open-caption stage's data on clips of 64
   frames, run through the engine's own dual-scope attention with the settings the model recommends, so
   the model learns on what a long video shows each frame: its neighbours and a few global frames.

The text encoder is a 1-layer CLIPTextModel with a word-level tokenizer over the caption vocabulary.
In the shapes stage it stays at its seeded random initialisation: its outputs already differ per caption,
and freezing it lets all caption embeddings be computed once. The placement stage can train it with the UNet
(`--train-text-encoder`), so a word whose random embedding says little can be given a louder one.

Run from the repository root:

    python -m training.train_tiny_model            # fresh run, writes assets/tiny-shapes-t2v/
    python -m training.train_tiny_model --resume   # continue after an interruption
"""

from __future__ import annotations

import argparse
import copy
import json
import shutil
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL, DDIMScheduler
from transformers import CLIPTextModel, CLIPTokenizer

from distributed.engine.choices import MODEL_SETTINGS_FILE
from distributed.engine.comm import Communicator
from distributed.engine.context import TemporalContext
from distributed.engine.layout import FrameLayout
from distributed.engine.settings import DualScopeSettings
from distributed.models.unet3d.model import UNet3DVideoCrafterConditionModel, run_unet3d
from distributed.models.unet3d.patch import patch_unet
from support.tiny_models import (
    TOKENIZER_MAX_LENGTH,
    default_scheduler,
    save_pipeline,
    tiny_text_encoder,
    tiny_unet_config,
    tiny_vae,
    write_word_tokenizer,
)
from training import shapes_data as data

REPO = Path(__file__).resolve().parent.parent
DEFAULT_OUTPUT = REPO / "assets" / "tiny-shapes-t2v"
DEFAULT_WORK = REPO / "artifacts" / "tiny_train"
LATENT = data.SIZE // 8
TOP_LEVELS = 900  # the noise levels where a sample shows nearly nothing of the shape yet
# The placement stage of the shipped model: lanes, the caption's position embedding, zero terminal SNR.
PLACEMENT_STEPS = 1500
# The open-caption stage: the placement stage's data, with captions that leave attributes out more often.
OPEN_STEPS = 400
# The wrap stage (not in the shipped model): the same data again, with spatial convolutions that wrap
# around the canvas. 400 steps is the run measured in docs/4-quality.md.
WRAP_STEPS = 0
# The long-video stage (not in the shipped model): clips of LONG_FRAMES frames through the engine's
# dual-scope attention with the model's recommended settings, so the model learns to keep to what its
# global frames show, as it must when the video is longer than any clip it was trained on.
LONG_STEPS = 0
LONG_FRAMES = 64
LONG_BATCH = 2
# The stages in order, by the name `--wrap-from` gives them: convolutions wrap from the one named on.
STAGE_ORDER = ("unet", "placement", "open", "wrap", "long")
# What the exported folder recommends to the engine (its video_infinity.json, engine.choices): the size,
# sampler and guidance the demo model works best with, and the attention settings measured best for it
# (docs/4-quality.md, case g). The long-video stage trains with these attention settings.
RECOMMENDED = {
    "width": data.SIZE,
    "height": data.SIZE,
    "sampler": "ddim",
    "steps": 25,
    "cfg": 5.0,
    "fps": float(data.FPS),
    "attention": {"phase_bias": True, "phase_threshold": 0.0, "global_bias": 3.0},
}


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


# --- model definitions ---------------------------------------------------------------------------


def make_vae() -> AutoencoderKL:
    # Three downsamples: 64x64 -> 8x8. No attention in the mid block: plain shapes don't need it and
    # it is the most expensive part at this size.
    return tiny_vae(block_out_channels=(8, 16, 32, 32), sample_size=data.SIZE, mid_block_add_attention=False)


def make_unet(
    text_at_full_resolution: bool = False,
    phase_period: int | None = None,
    spatial_position: bool = False,
    caption_in_time: bool = False,
    caption_position: bool = False,
    circular_padding: bool = False,
) -> UNet3DVideoCrafterConditionModel:
    """The demo UNet, optionally with the frame-phase, spatial position and caption time embeddings, and
    convolutions that wrap around the canvas."""
    # Two levels (8x8, 4x4). Spatial and text cross-attention at 4x4 and in the mid block, where 16
    # tokens make it cheap; optionally also at 8x8, where the motion and the streak are drawn.
    top = "CrossAttn" if text_at_full_resolution else ""
    config = tiny_unet_config(
        sample_size=LATENT,
        down_block_types=(f"{top}DownBlock3D", "CrossAttnDownBlock3D"),
        up_block_types=("CrossAttnUpBlock3D", f"{top}UpBlock3D"),
        block_out_channels=(48, 96),
        layers_per_block=1,
        cross_attention_dim=32,
        attention_head_dim=8,
        norm_num_groups=8,
        fps_cond=True,
        frame_phase_period=phase_period,
        spatial_position=spatial_position,
        caption_in_time_embedding=caption_in_time,
        caption_position=caption_position,
        circular_padding=circular_padding,
    )
    return UNet3DVideoCrafterConditionModel(**config)


# --- checkpoints -----------------------------------------------------------------------------------


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    # Write then rename, so an interruption never leaves a truncated checkpoint behind.
    tmp = path.with_suffix(".tmp")
    torch.save(state, tmp)
    tmp.replace(path)


def load_checkpoint(path: Path) -> dict[str, Any] | None:
    return torch.load(path, map_location="cpu", weights_only=False) if path.exists() else None


def resume_parts(path: Path, resume: bool, label: str, **parts: Any) -> dict[str, Any] | None:
    """Loads each named part's state (model, optimiser, ...) from the stage's checkpoint, if resuming."""
    state = load_checkpoint(path) if resume else None
    if state is not None:
        for name, part in parts.items():
            part.load_state_dict(state[name])
        log(f"{label}: resumed at step {state['step']}")
    return state


def report_and_checkpoint(
    label: str, step: int, total: int, losses: list[float], path: Path, model: Any, optimiser: Any
) -> None:
    """Every 100 steps and at the end: logs the mean loss since the last report and checkpoints."""
    if step % 100 == 0 or step == total:
        log(f"{label} step {step}/{total} loss {np.mean(losses):.4f}")
        losses.clear()
        save_checkpoint(path, {"model": model.state_dict(), "optimiser": optimiser.state_dict(), "step": step})


# --- stage 1: VAE ------------------------------------------------------------------------------------


def random_frames(rng: np.random.Generator, count: int) -> torch.Tensor:
    """(count, 3, SIZE, SIZE) in [-1, 1]: random colour, shape, direction and (sub-pixel) position."""
    frames = []
    for _ in range(count):
        colour = str(rng.choice(list(data.COLOURS)))
        shape = str(rng.choice(data.SHAPES))
        direction = str(rng.choice(list(data.DIRECTIONS)))
        x, y = rng.uniform(0, data.SIZE, size=2)
        frames.append(data.render_frame(colour, shape, direction, float(x), float(y)))
    return torch.from_numpy(np.stack(frames)).permute(0, 3, 1, 2) * 2 - 1


def train_vae(args: argparse.Namespace, work: Path, deadline: float) -> AutoencoderKL:
    path = work / "vae.pt"
    torch.manual_seed(args.seed)
    vae = make_vae()
    optimiser = torch.optim.AdamW(vae.parameters(), lr=args.vae_lr, weight_decay=0.0)
    state = resume_parts(path, args.resume, "vae", model=vae, optimiser=optimiser)
    step = state["step"] if state is not None else 0
    losses: list[float] = []
    while step < args.vae_steps and time.time() < deadline:
        rng = np.random.default_rng([args.seed, 1, step])
        generator = torch.Generator().manual_seed(args.seed * 1_000_003 + step)
        frames = random_frames(rng, args.vae_batch)
        posterior = vae.encode(frames).latent_dist
        latents = posterior.mean + posterior.std * torch.randn(posterior.mean.shape, generator=generator)
        recon = vae.decode(latents).sample
        # L1 keeps edges sharp; the tiny KL term only keeps the latent scale in check.
        loss = F.l1_loss(recon, frames) + F.mse_loss(recon, frames) + args.vae_kl * posterior.kl().mean()
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
        step += 1
        losses.append(loss.item())
        report_and_checkpoint("vae", step, args.vae_steps, losses, path, vae, optimiser)
    vae.eval().requires_grad_(False)
    return vae


# --- stage 2: latent cache ---------------------------------------------------------------------------


@torch.no_grad()
def build_latent_cache(vae: AutoencoderKL, work: Path, resume: bool) -> tuple[torch.Tensor, float]:
    """(colours, shapes, directions, SIZE, SIZE, 4, 8, 8) posterior means for every whole-pixel
    position, and the scaling factor that brings them to unit standard deviation."""
    path = work / "latents.pt"
    if resume and path.exists():
        state = torch.load(path)
        check_cache_encoder(vae, state["latents"], path)
        return state["latents"], state["scaling_factor"]
    log("encoding every frame position")
    shape = (len(data.COLOURS), len(data.SHAPES), len(data.DIRECTIONS), data.SIZE, data.SIZE, 4, LATENT, LATENT)
    cache = torch.empty(shape)
    for ci, colour in enumerate(data.COLOURS):
        for si, kind in enumerate(data.SHAPES):
            for di, direction in enumerate(data.DIRECTIONS):
                for y in range(data.SIZE):
                    row = np.stack([data.render_frame(colour, kind, direction, x, y) for x in range(data.SIZE)])
                    pixels = torch.from_numpy(row).permute(0, 3, 1, 2) * 2 - 1
                    cache[ci, si, di, y] = vae.encode(pixels).latent_dist.mean
    scaling_factor = float(1.0 / cache.std())
    save_checkpoint(path, {"latents": cache, "scaling_factor": scaling_factor})
    log(f"latent cache done, std {cache.std():.4f} -> scaling factor {scaling_factor:.4f}")
    return cache, scaling_factor


def check_cache_encoder(vae: AutoencoderKL, cache: torch.Tensor, path: Path) -> None:
    """Refuses a cache that another VAE's encoder made (say, copied from another run's --work): the UNet would
    learn latents its decoder does not draw, and nothing else would notice."""
    colour, kind, direction, x, y = 1, 1, 2, 21, 37  # any cached frame
    frame = data.render_frame(list(data.COLOURS)[colour], data.SHAPES[kind], list(data.DIRECTIONS)[direction], x, y)
    pixels = torch.from_numpy(frame[None]).permute(0, 3, 1, 2) * 2 - 1
    with torch.no_grad():
        encoded = vae.encode(pixels).latent_dist.mean[0]
    cached = cache[colour, kind, direction, y, x]
    if not torch.allclose(encoded, cached, rtol=1e-3, atol=1e-4):
        raise RuntimeError(f"{path} was encoded by another VAE; delete it (or use another --work) and run again")


# --- stage 3: decoder refinement ------------------------------------------------------------------------


def train_decoder(
    args: argparse.Namespace, work: Path, deadline: float, vae: AutoencoderKL, cache: torch.Tensor
) -> AutoencoderKL:
    """Fine-tunes the decoder alone on the cached posterior means (the encoder and the latents stay fixed).

    Stage 1 decodes posterior samples, whose noise swamps the weaker latent channels, so its decoder
    ignores them and draws soft blobs. The diffusion model produces means, not samples; a decoder
    trained on means (plus a little noise, for robustness to imperfect denoising) can use every
    channel, which is what separates a circle from a square.
    """
    path = work / "decoder.pt"
    decoder = torch.nn.ModuleDict({"decoder": vae.decoder, "post_quant_conv": vae.post_quant_conv})
    decoder.requires_grad_(True).train()
    optimiser = torch.optim.AdamW(decoder.parameters(), lr=args.decoder_lr, weight_decay=0.0)
    state = resume_parts(path, args.resume, "decoder", model=decoder, optimiser=optimiser)
    step = state["step"] if state is not None else 0
    colours, directions = list(data.COLOURS), list(data.DIRECTIONS)
    losses: list[float] = []
    while step < args.decoder_steps and time.time() < deadline:
        rng = np.random.default_rng([args.seed, 4, step])
        generator = torch.Generator().manual_seed(args.seed * 3_000_017 + step)
        picks = [
            (*rng.integers((len(colours), len(data.SHAPES), len(directions))), *rng.integers(data.SIZE, size=2))
            for _ in range(args.vae_batch)
        ]
        latents = torch.stack([cache[c, s, d, int(y), int(x)] for c, s, d, x, y in picks])
        latents = latents + args.decoder_noise * latents.std() * torch.randn(latents.shape, generator=generator)
        target = np.stack(
            [data.render_frame(colours[c], data.SHAPES[s], directions[d], int(x), int(y)) for c, s, d, x, y in picks]
        )
        target = torch.from_numpy(target).permute(0, 3, 1, 2) * 2 - 1
        recon = vae.decode(latents).sample
        loss = F.l1_loss(recon, target) + F.mse_loss(recon, target)
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
        step += 1
        losses.append(loss.item())
        report_and_checkpoint("decoder", step, args.decoder_steps, losses, path, decoder, optimiser)
    vae.eval().requires_grad_(False)
    return vae


def clip_latents(cache: torch.Tensor, specs: list[data.ClipSpec], frames: int) -> torch.Tensor:
    """(B, 4, frames, 8, 8) unscaled latents of the given clips."""
    colours, directions = list(data.COLOURS), list(data.DIRECTIONS)
    clips = []
    for spec in specs:
        ci, si, di = colours.index(spec.colour), data.SHAPES.index(spec.shape), directions.index(spec.direction)
        positions = [spec.position(t) for t in range(frames)]
        clips.append(torch.stack([cache[ci, si, di, y, x] for x, y in positions], dim=1))
    return torch.stack(clips)


# --- text ---------------------------------------------------------------------------------------------


def build_text(work: Path, seed: int, start_from: Path | None = None) -> tuple[CLIPTokenizer, CLIPTextModel]:
    """The word tokenizer and the encoder: seeded random, or (start_from) an exported pipeline's."""
    folder = work / "tokenizer"
    if folder.exists():
        shutil.rmtree(folder)
    vocab_size = write_word_tokenizer(folder, data.vocabulary())
    if start_from is not None:
        encoder = CLIPTextModel.from_pretrained(start_from / "text_encoder")
    else:
        torch.manual_seed(seed + 7)
        encoder = tiny_text_encoder(vocab_size, hidden_size=32)
    return CLIPTokenizer.from_pretrained(folder), encoder.eval().requires_grad_(False)


def caption_ids(tokenizer: CLIPTokenizer, prompts: list[str]) -> torch.Tensor:
    # Padded to the full length like diffusers text-to-video pipelines do; (N, L).
    return tokenizer(
        prompts, padding="max_length", max_length=TOKENIZER_MAX_LENGTH, truncation=True, return_tensors="pt"
    ).input_ids


@torch.no_grad()
def encode_text(tokenizer: CLIPTokenizer, encoder: CLIPTextModel, prompts: list[str]) -> torch.Tensor:
    """(N, L, D) caption embeddings."""
    return encoder(caption_ids(tokenizer, prompts)).last_hidden_state


# --- stage 4: UNet ---------------------------------------------------------------------------------


def spoken_caption(spec: data.ClipSpec, rng: np.random.Generator, dropout: float) -> str:
    """The clip's caption with each attribute left out at random, so prompts may leave them open."""
    keep = rng.random(3) >= dropout
    return data.caption(
        spec.colour if keep[0] else None, spec.shape if keep[1] else None, spec.direction if keep[2] else None
    )


def ema_update(ema: torch.nn.Module, model: torch.nn.Module, decay: float) -> None:
    with torch.no_grad():
        for e, p in zip(ema.parameters(), model.parameters(), strict=True):
            e.lerp_(p, 1 - decay)


@torch.no_grad()
def sample_clips(
    unet: torch.nn.Module,
    scheduler: DDIMScheduler,
    cond: torch.Tensor,
    uncond: torch.Tensor,
    frames: int,
    seed: int,
    steps: int = 20,
    cfg: float = 7.0,
) -> torch.Tensor:
    """A small DDIM loop for monitoring progress during training only; (B, 4, F, 8, 8) scaled latents."""
    batch = cond.shape[0]
    generator = torch.Generator().manual_seed(seed)
    latents = torch.randn(batch, 4, frames, LATENT, LATENT, generator=generator)
    text = torch.cat([uncond.expand_as(cond), cond])[:, None].expand(-1, frames, -1, -1)
    scheduler.set_timesteps(steps)
    for t in scheduler.timesteps:
        out = run_unet3d(unet, torch.cat([latents, latents]), t, text, data.FPS)
        eps_uncond, eps_cond = out.chunk(2)
        latents = scheduler.step(eps_uncond + cfg * (eps_cond - eps_uncond), t, latents).prev_sample
    return latents


@torch.no_grad()
def evaluate(
    unet: torch.nn.Module,
    vae: AutoencoderKL,
    scaling_factor: float,
    tokenizer: CLIPTokenizer,
    encoder: CLIPTextModel,
    seed: int,
    count: int = 8,
    scheduler: DDIMScheduler | None = None,
) -> float:
    """Share of sampled 16-frame clips whose tracked colour, shape and direction match the caption."""
    rng = np.random.default_rng([seed, 3])
    captions = [str(c) for c in rng.choice(data.all_captions(), size=count, replace=False)]
    cond = encode_text(tokenizer, encoder, captions)
    uncond = encode_text(tokenizer, encoder, [""])
    latents = sample_clips(unet, scheduler or default_scheduler(), cond, uncond, 16, seed)
    hits = 0
    for caption, clip in zip(captions, latents, strict=True):
        pixels = vae.decode(clip.permute(1, 0, 2, 3) / scaling_factor).sample
        video = ((pixels.clamp(-1, 1) + 1) / 2).permute(0, 2, 3, 1).numpy()
        track = data.track_clip(video)
        hits += (track.colour, track.shape, track.direction) == data.parse_caption(caption)
    return hits / count


def export(
    output: Path,
    unet: torch.nn.Module,
    vae: AutoencoderKL,
    scaling_factor: float,
    encoder: CLIPTextModel,
    tokenizer_folder: Path,
    info: dict[str, Any],
    scheduler: DDIMScheduler | None = None,
) -> None:
    """Writes the pipeline folder (EMA UNet weights) next to `output`, then swaps it in."""
    staging = output.with_name(output.name + ".staging")
    if staging.exists():
        shutil.rmtree(staging)
    shutil.copytree(tokenizer_folder, staging / "tokenizer")
    vae.register_to_config(scaling_factor=scaling_factor)
    save_pipeline(staging, unet, vae, encoder, scheduler or default_scheduler())
    (staging / "training.json").write_text(json.dumps(info, indent=2) + "\n")
    (staging / MODEL_SETTINGS_FILE).write_text(json.dumps({"recommended": RECOMMENDED}, indent=2) + "\n")
    if output.exists():
        shutil.rmtree(output)
    staging.replace(output)


@dataclass(frozen=True)
class UNetStage:
    """One UNet training stage: the first learns the shapes on free trajectories; the second, the placement
    stage, on top of the first one's EMA weights, learns where the caption puts the shape (one lane per
    direction, or phase-locked trajectories with the frame-phase embedding)."""

    name: str  # checkpoint file stem
    steps: int
    lr: float
    warmup: int
    trajectories: str  # shapes_data.TRAJECTORIES
    phase_period: int | None
    spatial_position: bool
    high_noise_cap: float  # weights a step by min(1/SNR, cap) where that is above 1; 1 turns it off
    zero_terminal_snr: bool = False  # v-prediction on a schedule whose last step is pure noise
    min_timestep: int = 0  # trains only the noise levels from here up
    train_text: bool = False  # the text encoder learns with the UNet
    caption_in_time: bool = False  # the UNet's caption embedding (the token mean in the time embedding)
    caption_position: bool = False  # the UNet's caption gains on its position features
    top_share: float = 0.0  # share of each batch drawn from the levels from TOP_LEVELS up
    attribute_dropout: float = 0.1  # chance that a caption leaves out each attribute
    circular_padding: bool = False  # the UNet's spatial convolutions wrap around the canvas
    frames: tuple[int, ...] = ()  # frames per training clip, one length per step in turn (empty: --frames)
    batch: int | None = None  # clips per step (None: --batch)
    # Trains through the engine's dual-scope attention with these settings, as long videos are made (one
    # rank; exact mode computes the same on any number). None: the plain model's attention.
    dual_scope: DualScopeSettings | None = None


def wraps(args: argparse.Namespace, stage: str) -> bool:
    """Whether the stage's spatial convolutions wrap around the canvas (`--wrap-from`; by default only the
    wrap stage's do)."""
    return args.wrap_from is not None and STAGE_ORDER.index(stage) >= STAGE_ORDER.index(args.wrap_from)


def shapes_stage(args: argparse.Namespace) -> UNetStage:
    return UNetStage(
        "unet",
        args.steps,
        args.lr,
        args.warmup,
        "free",
        None,
        False,
        1.0,
        attribute_dropout=args.attribute_dropout,
        circular_padding=wraps(args, "unet"),
    )


def placement_stage(args: argparse.Namespace) -> UNetStage:
    return UNetStage(
        "unet_placement",
        args.placement_steps,
        args.placement_lr,
        100,
        args.trajectories,
        data.PERIOD if args.trajectories == "anchored" else None,
        True,
        args.high_noise_cap,
        args.zero_terminal_snr,
        args.min_timestep,
        args.train_text_encoder,
        args.caption_in_time_embedding,
        args.caption_position,
        args.top_share,
        args.attribute_dropout if args.placement_attribute_dropout is None else args.placement_attribute_dropout,
        circular_padding=wraps(args, "placement"),
    )


def open_stage(args: argparse.Namespace) -> UNetStage:
    """The placement stage's data and seeds, continued on its EMA weights with captions that leave each
    attribute out with probability 0.3: a caption naming only the direction ("a shape moving right") comes
    up seven times as often as at 0.1, and with it the frames' own colour memory (docs/4-quality.md)."""
    return replace(
        placement_stage(args),
        name="unet_open",
        steps=args.open_steps,
        lr=args.open_lr,
        attribute_dropout=args.open_attribute_dropout,
        circular_padding=wraps(args, "open"),
    )


def wrap_stage(args: argparse.Namespace) -> UNetStage:
    """The open-caption stage's data, continued on its EMA weights with spatial convolutions that wrap
    around the canvas, as the shapes do. With zero padding a shape crossing an edge is two half shapes to
    the network, and long videos lost it there: a colour flicker or a jump at the wrap (docs/4-quality.md)."""
    return replace(
        open_stage(args),
        name="unet_wrap",
        steps=args.wrap_steps,
        lr=args.wrap_lr,
        circular_padding=True,
    )


def long_stage(args: argparse.Namespace) -> UNetStage:
    """The open-caption stage's data and captions on clips as long as several workers' share of a video,
    through the engine's dual-scope attention with the settings the model recommends. On 16-frame clips every
    frame sees the whole clip; in a long video it sees its neighbours and the global frames only, and a colour
    the caption leaves open, a lane or a speed must be read from those. Starts from the previous stage's EMA
    weights."""
    return replace(
        open_stage(args),
        name="unet_long",
        steps=args.long_steps,
        lr=args.long_lr,
        circular_padding=wraps(args, "long"),
        frames=tuple(args.long_frames),
        batch=args.long_batch,
        dual_scope=DualScopeSettings.from_dict(RECOMMENDED["attention"]),
    )


def stage_scheduler(stage: UNetStage) -> DDIMScheduler:
    """The training and shipped schedule: the default, or (zero_terminal_snr) the same betas rescaled so the
    last step is pure noise, v-prediction and trailing timesteps, so the first sampling step sees no trace of
    the shape and only the caption (and the phase) can say where it is."""
    scheduler = default_scheduler()
    if not stage.zero_terminal_snr:
        return scheduler
    return DDIMScheduler.from_config(
        scheduler.config, rescale_betas_zero_snr=True, prediction_type="v_prediction", timestep_spacing="trailing"
    )


def loss_weights(snr: torch.Tensor, high_noise_cap: float) -> torch.Tensor:
    """Min-SNR weighting (gamma 5) stops the easy low-noise steps from dominating the gradient; the
    optional high-noise factor (an x0 loss, capped) lifts the steps where only the caption and the
    frame's phase tell where the shape is, which an epsilon loss barely registers."""
    weight = torch.clamp(snr, max=5.0) / snr
    return weight * torch.clamp(1.0 / snr, min=1.0, max=high_noise_cap)


def train_unet(
    args: argparse.Namespace,
    work: Path,
    deadline: float,
    vae: AutoencoderKL,
    cache: torch.Tensor,
    scaling_factor: float,
    stage: UNetStage,
    start_weights: dict[str, torch.Tensor] | None = None,
) -> dict[str, torch.Tensor]:
    """Runs one stage to its step count (or the deadline) and returns the EMA weights."""
    path = work / f"{stage.name}.pt"
    on_top = stage.trajectories != "free"  # the second stage, on the first one's weights
    start_text = Path(args.init_from) if args.init_from and on_top else None
    tokenizer, encoder = build_text(work, args.seed, start_text)
    captions = data.open_captions()
    ids = caption_ids(tokenizer, captions)
    empty_ids = caption_ids(tokenizer, [""])[0]
    with torch.no_grad():  # a frozen encoder's embeddings are computed once
        caption_embeddings = encoder(ids).last_hidden_state
        empty_embedding = encoder(empty_ids[None]).last_hidden_state[0]
    scheduler = stage_scheduler(stage)
    alphas = scheduler.alphas_cumprod

    torch.manual_seed(args.seed + 11)
    unet = make_unet(
        args.text_at_full_resolution,
        stage.phase_period,
        stage.spatial_position,
        stage.caption_in_time,
        stage.caption_position,
        stage.circular_padding,
    )
    if start_weights is not None:
        missing, unexpected = unet.load_state_dict(start_weights, strict=False)
        # New in this stage, and zero at the start.
        added = ("phase_embedding.", "position_embedding.", "caption_embedding.", "caption_position_gain.")
        if unexpected or any(not key.startswith(added) for key in missing):
            raise RuntimeError(f"{stage.name}: start weights do not fit ({missing=}, {unexpected=})")
    ema = copy.deepcopy(unet).requires_grad_(False)
    lengths, batch = stage.frames or (args.frames,), stage.batch or args.batch
    engine = None if stage.dual_scope is None else through_engine(unet, stage.dual_scope, lengths[0])
    encoder.requires_grad_(stage.train_text)
    ema_encoder = copy.deepcopy(encoder).requires_grad_(False)
    trained = [*unet.parameters(), *(encoder.parameters() if stage.train_text else [])]
    optimiser = torch.optim.AdamW(trained, lr=stage.lr, weight_decay=0.01)
    text_parts = {"encoder": encoder, "ema_encoder": ema_encoder} if stage.train_text else {}
    state = resume_parts(path, args.resume, stage.name, model=unet, ema=ema, optimiser=optimiser, **text_parts)
    step, history = (state["step"], state["history"]) if state is not None else (0, [])
    log(f"{stage.name}: {sum(p.numel() for p in unet.parameters()) / 1e6:.2f} M parameters")

    def checkpoint() -> None:
        save_checkpoint(
            path,
            {
                "model": unet.state_dict(),
                "ema": ema.state_dict(),
                "optimiser": optimiser.state_dict(),
                "step": step,
                "history": history,
            }
            | {name: part.state_dict() for name, part in text_parts.items()},
        )

    def ship(fidelity: float | None) -> None:
        info = {
            "seed": args.seed,
            "stage": stage.name,
            "unet_steps": args.steps,
            "placement_steps": args.placement_steps,
            "open_steps": args.open_steps,
            "wrap_steps": args.wrap_steps,
            "wrap_from": args.wrap_from,
            "long_steps": args.long_steps,
            "stage_step": step,
            "vae_steps": args.vae_steps,
            "decoder_steps": args.decoder_steps,
            "batch": batch,
            "frames": list(lengths),
            "dual_scope": None if stage.dual_scope is None else stage.dual_scope.to_dict(),
            "threads": args.threads,
            "high_noise_cap": args.high_noise_cap,
            "trajectories": stage.trajectories,
            "train_text_encoder": stage.train_text,
            "caption_in_time_embedding": stage.caption_in_time,
            "caption_position": stage.caption_position,
            "circular_padding": stage.circular_padding,
            "top_share": stage.top_share,
            "attribute_dropout": stage.attribute_dropout,
            "monitor_fidelity": fidelity,
            "command": "python -m training.train_tiny_model",
        }
        export(Path(args.output), ema, vae, scaling_factor, ema_encoder, work / "tokenizer", info, scheduler)
        log(f"exported {args.output} at {stage.name} step {step}")

    losses: list[float] = []
    started = time.time()
    stage_seed, noise_offset = (5, 500_000) if on_top else (2, 0)
    while step < stage.steps and time.time() < deadline:
        rng = np.random.default_rng([args.seed, stage_seed, step])
        generator = torch.Generator().manual_seed(args.seed * 7_000_003 + noise_offset + step)
        frames = lengths[step % len(lengths)]
        if engine is not None:
            engine.begin_job(FrameLayout(frames, 1), engine.settings)
        specs = [data.sample_spec(rng, stage.trajectories) for _ in range(batch)]
        latents = clip_latents(cache, specs, frames) * scaling_factor
        said = [spoken_caption(spec, rng, stage.attribute_dropout) for spec in specs]
        chosen = [captions.index(c) for c in said]
        dropped = torch.from_numpy(rng.random(batch) < args.uncond_prob)
        if stage.train_text:
            batch_ids = ids[chosen].clone()
            batch_ids[dropped] = empty_ids  # the unconditional branch that classifier-free guidance needs
            text = encoder(batch_ids).last_hidden_state
        else:
            text = caption_embeddings[chosen].clone()
            text[dropped] = empty_embedding
        last = scheduler.config.num_train_timesteps
        timesteps = torch.randint(stage.min_timestep, last, (batch,), generator=generator)
        if stage.top_share > 0:
            # Part of every batch from the top levels, where only the caption says where the shape is.
            top = round(stage.top_share * batch)
            timesteps[:top] = torch.randint(max(stage.min_timestep, TOP_LEVELS), last, (top,), generator=generator)
        noise = torch.randn(latents.shape, generator=generator)
        noisy = scheduler.add_noise(latents, noise, timesteps)
        frame_text = text[:, None].expand(-1, frames, -1, -1)
        prediction = predict_clips(unet, noisy, timesteps, frame_text, [spec.start for spec in specs])
        if stage.zero_terminal_snr:
            # A plain v loss: like an epsilon loss at low noise, like an x0 loss at high noise.
            target = scheduler.get_velocity(latents, noise, timesteps)
            weights = torch.ones(batch)
        else:
            target = noise
            snr = alphas[timesteps] / (1 - alphas[timesteps])
            weights = loss_weights(snr, stage.high_noise_cap)
        per_sample = F.mse_loss(prediction, target, reduction="none").mean(dim=(1, 2, 3, 4))
        loss = (weights * per_sample).mean()
        warmup = min(1.0, (step + 1) / stage.warmup)
        for group in optimiser.param_groups:
            group["lr"] = stage.lr * warmup
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(trained, 1.0)
        optimiser.step()
        step += 1
        decay = min(args.ema, (1 + step) / (10 + step))
        ema_update(ema, unet, decay)
        if stage.train_text:
            ema_update(ema_encoder, encoder, decay)
        losses.append(per_sample.mean().item())
        if step % 50 == 0:
            rate = (time.time() - started) / max(len(losses), 1)
            history.append({"step": step, "loss": float(np.mean(losses))})
            log(f"{stage.name} step {step}/{stage.steps} loss {np.mean(losses):.4f} ({rate:.2f} s/step)")
            losses.clear()
            started = time.time()
        if step % args.checkpoint_every == 0:
            checkpoint()
        if step % args.export_every == 0:
            fidelity = evaluate(ema, vae, scaling_factor, tokenizer, ema_encoder, args.seed, scheduler=scheduler)
            history.append({"step": step, "monitor_fidelity": fidelity})
            log(f"monitor: prompt fidelity of the EMA model {fidelity:.2f}")
            ship(fidelity)
            started = time.time()
    checkpoint()
    fidelity = evaluate(ema, vae, scaling_factor, tokenizer, ema_encoder, args.seed, scheduler=scheduler)
    history.append({"step": step, "monitor_fidelity": fidelity})
    log(f"{stage.name}: final monitor fidelity {fidelity:.2f} at step {step}")
    ship(fidelity)
    (work / (f"{stage.name}_history.json" if on_top else "history.json")).write_text(
        json.dumps(history, indent=1) + "\n"
    )
    return ema.state_dict()


def through_engine(unet: torch.nn.Module, settings: DualScopeSettings, frames: int) -> TemporalContext:
    """Patches the training UNet with the engine's layers (dual-scope attention, halo convolutions, frame
    GroupNorms) for clips of `frames` frames on one rank; gradients pass through them exactly as through the
    plain model's. The parameters stay the same objects in the same order, so the EMA copy made before
    (plain, as it ships) follows them by position. Returns the layers' context: `begin_job` on it sets
    another clip length."""
    if settings.phase_bias and settings.phase_threshold > 0:
        # The engine sets one timestep per call, and a batch holds clips at different levels.
        raise ValueError("the long-video stage trains with attention that is the same at every noise level")
    before = [id(p) for p in unet.parameters()]
    ctx = TemporalContext(Communicator.single(), settings)
    patch_unet(unet, ctx)
    ctx.begin_job(FrameLayout(frames, 1), settings)
    assert [id(p) for p in unet.parameters()] == before, "patching moved the UNet's parameters"
    return ctx


def predict_clips(
    unet: torch.nn.Module, noisy: torch.Tensor, timesteps: torch.Tensor, frame_text: torch.Tensor, starts: list[int]
) -> torch.Tensor:
    """The denoiser on a batch of clips, each with its frames' indices in its video."""
    frames = noisy.shape[2]
    index = torch.tensor(starts)[:, None] + torch.arange(frames)[None]
    return run_unet3d(unet, noisy, timesteps, frame_text, data.FPS, index)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output", default=str(DEFAULT_OUTPUT), help="pipeline folder to write")
    parser.add_argument("--work", default=str(DEFAULT_WORK), help="checkpoints and caches")
    parser.add_argument("--resume", action="store_true", help="continue from the checkpoints in --work")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--minutes", type=float, default=150.0, help="wall-time budget for this invocation")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--vae-steps", type=int, default=2000)
    parser.add_argument("--vae-batch", type=int, default=16)
    parser.add_argument("--vae-lr", type=float, default=2e-3)
    parser.add_argument("--vae-kl", type=float, default=1e-5)
    parser.add_argument("--decoder-steps", type=int, default=1000)
    parser.add_argument("--decoder-lr", type=float, default=1e-3)
    parser.add_argument("--decoder-noise", type=float, default=0.05, help="latent noise, relative to their std")
    parser.add_argument("--only-decoder", action="store_true", help="stop after the decoder refinement")
    parser.add_argument("--steps", type=int, default=4000, help="UNet optimiser steps")
    parser.add_argument("--batch", type=int, default=8, help="clips per UNet step")
    parser.add_argument("--frames", type=int, default=16, help="frames per training clip")
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--warmup", type=int, default=200)
    parser.add_argument("--ema", type=float, default=0.998)
    parser.add_argument("--uncond-prob", type=float, default=0.1, help="caption dropout for guidance")
    parser.add_argument(
        "--text-at-full-resolution", action="store_true", help="cross-attention at the 8x8 level as well"
    )
    parser.add_argument(
        "--attribute-dropout", type=float, default=0.1, help="chance that a caption leaves out each attribute"
    )
    parser.add_argument(
        "--placement-attribute-dropout",
        type=float,
        default=None,
        help="placement stage: the same chance (default: --attribute-dropout's)",
    )
    add_stage_arguments(
        parser, "placement", PLACEMENT_STEPS, 5e-4, "the placement stage, which ties the caption to where the shape is"
    )
    add_stage_arguments(parser, "open", OPEN_STEPS, 2e-4, "the open-caption stage after the placement stage")
    add_stage_arguments(
        parser,
        "wrap",
        WRAP_STEPS,
        2e-4,
        "the wrap stage (convolutions wrap around the canvas) after the open-caption stage; not in the shipped "
        "model, 400 was measured",
    )
    parser.add_argument(
        "--wrap-from",
        choices=STAGE_ORDER,
        default=None,
        help="the first stage whose spatial convolutions wrap around the canvas (default: only the wrap stage)",
    )
    add_stage_arguments(
        parser,
        "long",
        LONG_STEPS,
        2e-4,
        "the long-video stage (clips through the engine's dual-scope attention) after the others; not in the "
        "shipped model",
    )
    parser.add_argument(
        "--long-frames",
        type=int,
        nargs="+",
        default=[LONG_FRAMES],
        help="long-video stage: frames per clip; several lengths are used in turn, one per step",
    )
    parser.add_argument("--long-batch", type=int, default=LONG_BATCH, help="long-video stage: clips per step")
    parser.add_argument(
        "--open-attribute-dropout",
        type=float,
        default=0.3,
        help="open-caption stage: the chance that a caption leaves out each attribute",
    )
    parser.add_argument(
        "--high-noise-cap", type=float, default=10.0, help="placement stage: cap of an epsilon loss's high-noise weight"
    )
    parser.add_argument(
        "--zero-terminal-snr",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="placement stage: v-prediction on a schedule whose last step is pure noise (shipped with the model)",
    )
    parser.add_argument(
        "--min-timestep", type=int, default=0, help="placement stage: train only the noise levels from this one up"
    )
    parser.add_argument(
        "--train-text-encoder", action="store_true", help="placement stage: train the text encoder with the UNet"
    )
    parser.add_argument(
        "--trajectories",
        choices=[t for t in data.TRAJECTORIES if t != "free"],
        default="lanes",
        help="placement stage: one lane per direction, or phase-locked trajectories (with the frame-phase embedding)",
    )
    parser.add_argument(
        "--caption-in-time-embedding",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="placement stage: the UNet also gets the caption's token mean in its time embedding",
    )
    parser.add_argument(
        "--caption-position",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="placement stage: the caption's token mean also scales the UNet's position features",
    )
    parser.add_argument(
        "--top-share",
        type=float,
        default=0.5,
        help=f"placement stage: share of each batch drawn from noise levels {TOP_LEVELS} and up",
    )
    parser.add_argument(
        "--init-from",
        default=None,
        help="a pipeline folder whose VAE and UNet replace stages 1 to 4 (the later stages run on top of it)",
    )
    parser.add_argument("--checkpoint-every", type=int, default=100)
    parser.add_argument("--export-every", type=int, default=500)
    return parser.parse_args(argv)


def add_stage_arguments(parser: argparse.ArgumentParser, stage: str, steps: int, lr: float, what: str) -> None:
    """--STAGE-steps and --STAGE-lr of one of the later UNet stages."""
    parser.add_argument(f"--{stage}-steps", type=int, default=steps, help=f"steps of {what} (0: none)")
    parser.add_argument(f"--{stage}-lr", type=float, default=lr, help=f"learning rate of {what}")


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    deadline = time.time() + args.minutes * 60
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    if args.init_from:
        vae, start_weights = load_pipeline_parts(Path(args.init_from))
        cache, _ = build_latent_cache(vae, work, args.resume)
        scaling_factor = float(vae.config.scaling_factor)
    else:
        vae = train_vae(args, work, deadline)
        if time.time() >= deadline:
            log("time budget spent during the VAE stage; run again with --resume")
            return
        cache, scaling_factor = build_latent_cache(vae, work, args.resume)
        vae = train_decoder(args, work, deadline, vae, cache)
        if args.only_decoder or time.time() >= deadline:
            log("stopping after the decoder stage")
            return
        start_weights = train_unet(args, work, deadline, vae, cache, scaling_factor, shapes_stage(args))
    if args.placement_steps and time.time() < deadline:
        start_weights = train_unet(
            args, work, deadline, vae, cache, scaling_factor, placement_stage(args), start_weights
        )
    if args.open_steps and time.time() < deadline:
        start_weights = train_unet(args, work, deadline, vae, cache, scaling_factor, open_stage(args), start_weights)
    if args.wrap_steps and time.time() < deadline:
        start_weights = train_unet(args, work, deadline, vae, cache, scaling_factor, wrap_stage(args), start_weights)
    if args.long_steps and time.time() < deadline:
        train_unet(args, work, deadline, vae, cache, scaling_factor, long_stage(args), start_weights)
    log("done" if time.time() < deadline else "time budget spent; run again with --resume")


def load_pipeline_parts(folder: Path) -> tuple[AutoencoderKL, dict[str, torch.Tensor]]:
    """The VAE and the UNet weights of an exported pipeline folder."""
    vae = AutoencoderKL.from_pretrained(folder / "vae").eval().requires_grad_(False)
    unet = UNet3DVideoCrafterConditionModel.from_pretrained(folder / "unet")
    return vae, unet.state_dict()


if __name__ == "__main__":
    main()
