"""Per-request generation controls, one module each (scheduler, clip_skip, LoRA, embeddings, VAE,
IP-Adapter, tomesd, safety, prompt enhancement); base.py holds what they share, chain.py lists them."""
