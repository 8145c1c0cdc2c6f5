"""A procedural toy world: seeded scenes of compositional subjects, a benchmark writer and a toy CLIP."""

from yollava.toyworld.benchmark import generate_benchmark, plan_benchmark
from yollava.toyworld.render import render_scene
from yollava.toyworld.world import Scene, Subject, caption, describe_subject, vocabulary

__all__ = [
    "Scene",
    "Subject",
    "caption",
    "describe_subject",
    "generate_benchmark",
    "plan_benchmark",
    "render_scene",
    "vocabulary",
]
