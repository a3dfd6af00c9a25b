"""The ways of training, one folder each (its settings, its scenario, its parts), and their registries:
`settings.SETTINGS` (the config sections, torch-free) and `registry.SCENARIOS`/`registry.WRAPPERS`.
Nothing is imported here, so that reading a method's settings does not load torch."""
