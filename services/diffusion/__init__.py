"""The diffusion service: txt2img, img2img, inpainting and ControlNet with streamed progress."""
