"""Look inside models: lenses, attribution, patching, head detectors, sinks, probes, plots, viewer."""
