"""Samplers that turn condition vectors into token ids (the MaskGIT family)."""

from sgdd.decoding.maskgit import Trajectory, decode, tokens_to_text
from sgdd.decoding.samplers import CONFIDENCES, SAMPLERS, Sampling, get_sampler
from sgdd.decoding.schedules import UNMASK_SCHEDULES, get_unmask_schedule, unmask_plan

__all__ = ["CONFIDENCES", "SAMPLERS", "UNMASK_SCHEDULES", "Sampling", "Trajectory", "decode", "get_sampler",
           "get_unmask_schedule", "tokens_to_text", "unmask_plan"]
