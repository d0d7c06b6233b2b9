"""Samplers by short name, built per call from the loaded model's scheduler config.

A fresh scheduler per pipeline call (``from_config``) means no scheduler state (step index, multistep
history) is ever shared between calls or threads, and every sampler inherits the model's noise schedule.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from diffusers import (
    DDIMScheduler,
    DPMSolverMultistepScheduler,
    EulerAncestralDiscreteScheduler,
    EulerDiscreteScheduler,
    HeunDiscreteScheduler,
    LCMScheduler,
    LMSDiscreteScheduler,
    PNDMScheduler,
    UniPCMultistepScheduler,
)
from diffusers.schedulers.scheduling_utils import SchedulerMixin

# name -> (class, extra kwargs applied on top of the model's config)
SCHEDULERS: dict[str, tuple[type[SchedulerMixin], dict[str, Any]]] = {
    "euler_a": (EulerAncestralDiscreteScheduler, {}),
    "euler": (EulerDiscreteScheduler, {}),
    "dpmpp_2m": (DPMSolverMultistepScheduler, {"algorithm_type": "dpmsolver++", "solver_order": 2}),
    "ddim": (DDIMScheduler, {}),
    "pndm": (PNDMScheduler, {"skip_prk_steps": True}),
    "lcm": (LCMScheduler, {}),
    "heun": (HeunDiscreteScheduler, {}),
    "lms": (LMSDiscreteScheduler, {}),
    "unipc": (UniPCMultistepScheduler, {}),
}



def _scipy_available() -> bool:
    import importlib.util

    return importlib.util.find_spec("scipy") is not None


# diffusers' LMS sampler integrates with scipy; without scipy installed it is not offered.
_NEEDS_SCIPY = {"lms"}
SCHEDULER_NAMES: tuple[str, ...] = tuple(n for n in SCHEDULERS if n not in _NEEDS_SCIPY or _scipy_available())

# The labels AUTOMATIC1111-style web UIs write into PNG "parameters" (PNDM is called PLMS there).
SAMPLER_LABELS: dict[str, str] = {
    "euler_a": "Euler a",
    "euler": "Euler",
    "dpmpp_2m": "DPM++ 2M",
    "ddim": "DDIM",
    "pndm": "PLMS",
    "lcm": "LCM",
    "heun": "Heun",
    "lms": "LMS",
    "unipc": "UniPC",
}

_LABEL_TO_NAME = {label.lower(): name for name, label in SAMPLER_LABELS.items()}


class UnknownSchedulerError(ValueError):
    """The scheduler name is not one of :data:`SCHEDULER_NAMES`; the message lists the choices."""


def resolve_scheduler_name(name: str) -> str:
    """Accept a short name (``euler_a``) or a web-UI label (``Euler a``); return the short name."""
    key = name.strip().lower()
    key = _LABEL_TO_NAME.get(key, key)
    if key in SCHEDULER_NAMES:
        return key
    if key in SCHEDULERS:
        raise UnknownSchedulerError(f"scheduler {name!r} needs scipy (pip install scipy); "
                                    f"or choose one of: {', '.join(SCHEDULER_NAMES)}")
    choices = ", ".join(SCHEDULER_NAMES)
    raise UnknownSchedulerError(f"unknown scheduler {name!r}; choose one of: {choices}")


def make_scheduler(name: str, base_config: Mapping[str, Any]) -> SchedulerMixin:
    """A new scheduler of kind *name* with the model's training noise schedule (*base_config*)."""
    cls, extra = SCHEDULERS[resolve_scheduler_name(name)]
    return cls.from_config(dict(base_config), **extra)
