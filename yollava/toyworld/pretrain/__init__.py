"""Building the toy LLaVA (``scripts/pretrain_toy.py``; docs/toyworld.md): never imported by ``--model toy`` at run time.

Modules, in the order a run uses them: ``config`` (the recipe as data), ``vocabulary`` (the
tokenizer), ``fresh`` (the starting model), ``scenes`` (streams, banks, patch labels), ``answers``
and ``mix`` (the data mix), ``batches`` (samples to a loss), ``loop`` (the one training loop and
schedule), ``tower`` (dense vision stage), ``circuit`` (the compiled comparison circuit),
``stages`` (a run's stages in order), ``quality`` (held-out gates).
"""
