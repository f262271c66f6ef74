"""Registry stage: immutable, numbered LoRA adapter versions with aliases and model cards,
on a local folder or any fsspec URL, plus the consumer API (resolve, load, predict)."""

from registry.consumer import Predictor, load, predict, resolve
from registry.model_card import render_model_card
from registry.store import Registry, RegistryError, RegistryUnavailable, parse_ref, verify_folder

__all__ = ["Predictor", "Registry", "RegistryError", "RegistryUnavailable", "load", "parse_ref", "predict", "render_model_card", "resolve",
           "verify_folder"]
