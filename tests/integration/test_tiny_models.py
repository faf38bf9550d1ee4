"""The offline test bed: every tiny model loads through the same from_pretrained path the services use."""

import torch


def test_tiny_sd_family_loads_with_auto_pipelines(tiny_models):
    from diffusers import AutoPipelineForInpainting, AutoPipelineForText2Image, ControlNetModel

    pipe = AutoPipelineForText2Image.from_pretrained(tiny_models.sd, use_safetensors=True)
    pipe.set_progress_bar_config(disable=True)
    image = pipe(
        "a red circle", height=64, width=64, num_inference_steps=2, generator=torch.Generator().manual_seed(0)
    ).images[0]
    assert image.size == (64, 64)
    inpaint = AutoPipelineForInpainting.from_pretrained(tiny_models.sd_inpaint, use_safetensors=True)
    assert inpaint.unet.config.in_channels == 9
    controlnet = ControlNetModel.from_pretrained(tiny_models.controlnet, use_safetensors=True)
    assert controlnet.config.cross_attention_dim == pipe.unet.config.cross_attention_dim


def test_tiny_llava_and_llava_next_generate(tiny_models):
    from PIL import Image
    from transformers import AutoModelForImageTextToText, AutoProcessor

    for folder, architecture in [
        (tiny_models.llava, "LlavaForConditionalGeneration"),
        (tiny_models.llava_next, "LlavaNextForConditionalGeneration"),
    ]:
        model = AutoModelForImageTextToText.from_pretrained(folder, use_safetensors=True)
        processor = AutoProcessor.from_pretrained(folder)
        assert type(model).__name__ == architecture
        messages = [
            {
                "role": "user",
                "content": [
                    {"type": "image", "image": Image.new("RGB", (48, 96), "red")},
                    {"type": "text", "text": "What is this?"},
                ],
            }
        ]
        inputs = processor.apply_chat_template(
            messages, add_generation_prompt=True, tokenize=True, return_dict=True, return_tensors="pt"
        )
        output = model.generate(**inputs, max_new_tokens=4, min_new_tokens=4, do_sample=False)
        assert output.shape[1] == inputs["input_ids"].shape[1] + 4
