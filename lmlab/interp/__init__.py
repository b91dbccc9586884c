"""Look inside models: activation cache, lenses, attribution, patching, head detectors, sinks, probes, plots, viewer."""

from lmlab.interp.activation_cache import ActivationCache, act_name, hook_name, run_with_cache

__all__ = ["ActivationCache", "act_name", "hook_name", "run_with_cache"]
