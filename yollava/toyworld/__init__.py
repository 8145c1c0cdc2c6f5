"""A procedural toy world: seeded scenes of compositional subjects, a benchmark writer, a toy CLIP and a toy LLaVA.

Import the submodule you need (``world``, ``render``, ``benchmark``, ``clip``, ``toy_llava``): this
package imports nothing itself, so loading the toy LLaVA does not pull in the renderer or the planner.
"""
