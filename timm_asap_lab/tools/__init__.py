"""Tools on top of the plugin: layer and model benchmarks, conversion coverage, paired timing ratios."""
