"""Training of LLM agents with GAGPO and its baselines: the loop and its run utilities."""

from __future__ import annotations
