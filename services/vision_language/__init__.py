"""Vision-language service: LLaVA-style image-text-to-text models over gRPC (chat, captioning, VQA, OCR)."""
