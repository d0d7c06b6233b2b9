"""Everything diffusion: request validation, model loading, the worker with its fair queue and batching.

This package never imports ``bot``: it can be used (and tested) without Discord.
"""
