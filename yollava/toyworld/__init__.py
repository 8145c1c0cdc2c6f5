"""A procedural toy world: seeded scenes of compositional subjects, a benchmark writer and a toy CLIP."""
