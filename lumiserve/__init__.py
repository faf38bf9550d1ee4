"""lumiserve: gRPC serving for diffusion and vision-language models."""
