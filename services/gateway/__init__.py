"""The gateway: the one public endpoint. Auth, admission, routing by registry, streaming relay, metrics.

It serves the same DiffusionService, VisionLanguageService and ModelRegistryService as the backends
(one address, one set of stubs for clients) and never imports torch.
"""
