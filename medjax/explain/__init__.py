"""Attributions (why a model said what it said) and their faithfulness, as batched, jitted JAX programs.

    from medjax.explain.cam import gradcam, gradcampp              # class activation maps at a named layer
    from medjax.explain.gradients import saliency, smoothgrad, integrated_gradients, guided_backprop
    from medjax.explain.occlusion import occlusion
    from medjax.explain.faithfulness import deletion_insertion, randomization_check
    from medjax.explain.core import shard_over_data              # one program over the data mesh

Every method is `method(apply, variables, x, target, region=None, **options)` with `apply(variables, x) -> logits`
(e.g. `functools.partial(model.apply, train=False)`); see `medjax.explain.core`. This module imports nothing
heavy: `medjax explain --help` reads the method names from here.
"""

METHOD_NAMES = ("gradcam", "gradcampp", "saliency", "guided", "smoothgrad", "ig", "occlusion")
