"""The Video-Infinity engine: clip-parallel generation with dual-scope temporal attention.

Runs without ComfyUI. Modules import each other relatively only, so the package works under any name
(worker processes load it under a unique one).
"""
