"""The model registry and its file, asset entries and files, model sources, loading, the pipeline cache
and each family's capabilities. Imports core only (and tiny/ for the built-in models' limits)."""
