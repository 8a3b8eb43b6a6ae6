"""The model registry and its file, asset entries and files, model sources, loading, the pipeline cache,
the schedulers, and the model families' specs (specs/: one per family, one list). Imports core only (and
tiny/ for the built-in models' limits)."""
