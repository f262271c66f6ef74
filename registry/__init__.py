"""Registry stage: immutable, numbered LoRA adapter versions with aliases and model cards."""

from registry.model_card import render_model_card
from registry.store import Registry, RegistryError

__all__ = ["Registry", "RegistryError", "render_model_card"]
