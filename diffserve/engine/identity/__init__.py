"""Flux PuLID's identity stack: the injection, its config, the embedders (antelopev2, face parsing,
EVA-CLIP) and face finding."""
