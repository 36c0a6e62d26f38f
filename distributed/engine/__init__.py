"""The engine core: jobs, settings, frame layout, communication, the runner and the model-family seam.

It never imports the pool, the entry points or ComfyUI; model families plug in through engine/family.py.
"""
