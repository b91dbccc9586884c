"""Look inside models: activation cache, TransformerLens-style `HookedLM`, lenses, attribution, patching, head detectors, sinks, probes, plots, viewer."""

from lmlab.interp.activation_cache import ActivationCache, act_name, hook_name, run_with_cache
from lmlab.interp.hooked_lm import HookedLM

__all__ = ["ActivationCache", "HookedLM", "act_name", "hook_name", "run_with_cache"]
