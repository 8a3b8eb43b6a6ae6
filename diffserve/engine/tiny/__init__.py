"""Random-weight tiny model builders (demo and test assets, not the engine)."""
