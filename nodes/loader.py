"""Load Video Model: picks a pipeline folder (and an optional UNet override) found through folder_paths."""

from __future__ import annotations

from ..distributed.engine.choices import DTYPES
from . import model_paths
from .api import CATEGORY, VideoModel, io
from .validation import validate_node
from .values import ModelChoice


class LoadVideoModel(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        names = sorted(model_paths.pipelines())
        unets = [model_paths.NO_UNET, *sorted(model_paths.unet_overrides())]
        return io.Schema(
            node_id="VideoInfinityLoadModel",
            display_name="Load Video Model (Video-Infinity)",
            category=CATEGORY,
            description="Chooses a diffusers text-to-video pipeline (UNet3D family: VideoCrafter2 port, Zeroscope, "
            "ModelScope). Nothing is loaded here: the workers load it once and keep it warm.",
            inputs=[
                io.Combo.Input(
                    "model_name",
                    options=names,
                    default="tiny-shapes-t2v" if "tiny-shapes-t2v" in names else None,
                    tooltip="A pipeline folder (with model_index.json) under models/video_infinity, models/diffusers "
                    "or any extra_model_paths.yaml entry for video_infinity; the pack's demo model is listed last.",
                ),
                io.Combo.Input(
                    "unet_override",
                    options=unets,
                    default=model_paths.NO_UNET,
                    tooltip="Optional UNet that replaces the pipeline's own: a diffusers unet folder or a single "
                    ".safetensors file (for example the VideoCrafter2 port on top of the Zeroscope pipeline).",
                ),
                io.Combo.Input(
                    "dtype",
                    options=list(DTYPES),
                    default="fp16",
                    tooltip="Weight and compute precision on the workers. fp16/bf16 halve GPU memory; CPU workers "
                    "are fastest and safest in fp32.",
                ),
            ],
            outputs=[
                VideoModel.Output(display_name="model", tooltip="The model choice, for the Clip-Parallel Sampler.")
            ],
        )

    @classmethod
    def validate_inputs(cls, **values) -> bool:
        names = ("model_name", "unet_override", "dtype")
        if any(values.get(name) is None for name in names):
            return True  # fed by a link or missing (ComfyUI reports that): checked when it runs
        # The model lists are not checked as options here: choose() says where the files should be.
        return validate_node(cls, {}, lambda: choose(*(values[name] for name in names)))

    @classmethod
    def execute(cls, model_name: str, unet_override: str, dtype: str) -> io.NodeOutput:
        return io.NodeOutput(choose(model_name, unet_override, dtype))


def choose(model_name: str, unet_override: str, dtype: str) -> ModelChoice:
    """Resolves the names to paths; raises ValueError saying where the files should be."""
    pipelines = model_paths.pipelines()
    if model_name not in pipelines:
        raise ValueError(f"video model {model_name!r} was not found; {model_paths.where_to_put()}, then refresh (R)")
    unet = None
    if unet_override != model_paths.NO_UNET:
        unets = model_paths.unet_overrides()
        if unet_override not in unets:
            raise ValueError(
                f"UNet override {unet_override!r} was not found; put a diffusers unet folder or a .safetensors "
                f"file into one of: {', '.join(str(p) for p in model_paths.roots()[:-1])}"
            )
        unet = str(unets[unet_override])
    if dtype not in DTYPES:
        raise ValueError(f"dtype {dtype!r} is not one of {list(DTYPES)}")
    return ModelChoice(base=str(pipelines[model_name]), unet=unet, dtype=dtype, name=model_name)
