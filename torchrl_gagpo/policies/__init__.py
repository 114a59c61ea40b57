"""LM policies: the tiny in-process model and the admissible-action chooser."""

from .choose import AdmissibleActionPolicy
from .tiny import CHATML_TEMPLATE, DEFAULT_CORPUS, configure_generation, make_tiny_model, make_tiny_tokenizer

__all__ = [
    "AdmissibleActionPolicy",
    "CHATML_TEMPLATE", "DEFAULT_CORPUS", "configure_generation", "make_tiny_model", "make_tiny_tokenizer"]
