"""The worker side: the worker process, its supervisor, the orders it takes between jobs, its labels."""
