"""The Worker Pool node's device text, checked against this machine before anything starts."""

from __future__ import annotations


def resolve(text: str) -> list[str]:
    """One device string per worker; raises the engine's InvalidSettingsError (a ValueError) with the fix."""
    from ..distributed.pool.config import PoolConfig

    return PoolConfig(devices=text).local_devices()
