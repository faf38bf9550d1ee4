"""The model registry: catalog of models, variants and per-hardware artifacts; live instances; watch."""
