"""Tiny random-weight models of the real architectures, built offline in a few seconds.

They prove code paths (loading, scheduling, streaming), not output quality: SD-1.x (text-to-image,
a 9-channel inpainting UNet, a ControlNet), LLaVA 1.5 and LLaVA-NeXT (any-res). Everything is saved
with save_pretrained (safetensors) and loaded back by the services through from_pretrained.
Never commit what these build: a folder saved with transformers 5 loads differently under 4.
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch

from lumiserve.toyworld.world import byte_alphabet  # GPT-2/CLIP bytes_to_unicode

# ---------------------------------------------------------------- Stable Diffusion 1.x


def make_tiny_clip_tokenizer(folder: Path, merges: tuple[str, ...] = ("t h", "th e</w>", "c a", "ca t</w>")):
    """Byte-level BPE vocab (256 bytes + their '</w>' forms + merges + 2 specials): any text tokenizes."""
    from transformers import CLIPTokenizer

    chars = byte_alphabet()
    tokens = chars + [c + "</w>" for c in chars] + [m.replace(" ", "") for m in merges]
    tokens += ["<|startoftext|>", "<|endoftext|>"]
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(tokens)}))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")  # CLIP skips line 1
    return CLIPTokenizer.from_pretrained(folder, model_max_length=77)  # the pipeline pads to this


def _tiny_unet(in_channels: int = 4):
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel(
        sample_size=32,
        in_channels=in_channels,
        out_channels=4,
        layers_per_block=2,
        block_out_channels=(32, 64),
        cross_attention_dim=32,
        attention_head_dim=8,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
    )


def clip_text_config(tokenizer, hidden: int = 32, intermediate: int = 37, layers: int = 5, heads: int = 4):
    """A CLIP text encoder config for the tiny tokenizer: by default the tiny SD family's (SD-1.x and the
    tests' SDXL); the SD-1.5-sized model passes SD 1.5's sizes."""
    from transformers import CLIPTextConfig

    return CLIPTextConfig(
        vocab_size=1000,
        hidden_size=hidden,
        intermediate_size=intermediate,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        max_position_embeddings=77,
        projection_dim=hidden,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )


def tiny_vae():
    """A 4-block VAE: the real 8x latent scale at a few MB."""
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        latent_channels=4,
        layers_per_block=1,
        block_out_channels=(32, 64, 64, 64),
        sample_size=256,
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
    )


def build_tiny_sd(out_dir: Path, seed: int = 0, inpainting: bool = False):
    """SD-1.x pipeline with a 4-block VAE (the real 8x latent scale), ~11 MB. `inpainting` = 9-ch UNet."""
    from transformers import CLIPTextModel

    torch.manual_seed(seed)
    with tempfile.TemporaryDirectory() as tmp:
        tokenizer = make_tiny_clip_tokenizer(Path(tmp))
    text_encoder = CLIPTextModel(clip_text_config(tokenizer)).eval()
    vae = tiny_vae()
    return _save_sd(out_dir, tokenizer, text_encoder, vae, _tiny_unet(9 if inpainting else 4))


def build_sd15_sized(out_dir: Path, seed: int = 0, dtype: torch.dtype = torch.float16):
    """An SD-1.5-sized pipeline with random weights: the real UNet (860 M parameters), VAE and CLIP text
    encoder sizes, saved in `dtype` (1.9 GB in fp16), for speed checks on a GPU (DESIGN §5). Only the
    tokenizer stays tiny, which changes nothing the denoising loop does."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextModel

    torch.manual_seed(seed)
    with tempfile.TemporaryDirectory() as tmp:
        tokenizer = make_tiny_clip_tokenizer(Path(tmp))
    text_config = clip_text_config(tokenizer, hidden=768, intermediate=3072, layers=12, heads=12)
    vae = AutoencoderKL(
        block_out_channels=(128, 256, 512, 512),
        layers_per_block=2,
        latent_channels=4,
        sample_size=512,
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
    )
    unet = UNet2DConditionModel(sample_size=64, cross_attention_dim=768, attention_head_dim=8)  # SD 1.5's
    text_encoder = CLIPTextModel(text_config).eval()
    return _save_sd(out_dir, tokenizer, text_encoder.to(dtype), vae.to(dtype), unet.to(dtype))


def _save_sd(out_dir: Path, tokenizer, text_encoder, vae, unet):
    """An SD-1.x pipeline of these parts (inpainting when the UNet takes 9 channels), saved."""
    from diffusers import EulerDiscreteScheduler, StableDiffusionInpaintPipeline, StableDiffusionPipeline

    scheduler = EulerDiscreteScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", steps_offset=1
    )
    inpainting = unet.config.in_channels == 9
    pipeline_class = StableDiffusionInpaintPipeline if inpainting else StableDiffusionPipeline
    pipe = pipeline_class(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.save_pretrained(out_dir)
    return pipe


def build_tiny_controlnet(out_dir: Path, seed: int = 0):
    """A ControlNet matching the tiny SD UNet (conditioning embedding sized for the 8x VAE)."""
    from diffusers import ControlNetModel

    torch.manual_seed(seed)
    controlnet = ControlNetModel.from_unet(_tiny_unet(), conditioning_embedding_out_channels=(8, 16, 16, 16))
    controlnet.save_pretrained(out_dir)
    return controlnet


# ---------------------------------------------------------------- LLaVA / LLaVA-NeXT

VLM_CHAT_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}{{ m['role'].upper() }}: "
    "{% if m['content'] is string %}{{ m['content'] }}{% else %}{% for c in m['content'] %}"
    "{% if c['type'] == 'image' %}<image>\n{% elif c['type'] == 'text' %}{{ c['text'] }}{% endif %}"
    "{% endfor %}{% endif %}{% if m['role'] == 'assistant' %}{{ eos_token }}{% endif %}{{ '\\n' }}{% endfor %}"  # noqa: E501
    "{% if add_generation_prompt %}ASSISTANT:{% endif %}"
)
VLM_IMAGE_SIZE, VLM_PATCH = 32, 8  # 32x32 vision input, 8x8 patches -> 16 image tokens per tile


def _vlm_tokenizer(vocab_size: int = 512):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    corpus = [
        "USER: What is in this image? ASSISTANT: A cat sitting on a red mat.",
        "The quick brown fox jumps over the lazy dog 0123456789.",
    ] * 50
    tok.train_from_iterator(
        corpus,
        trainers.BpeTrainer(
            vocab_size=vocab_size,
            special_tokens=["<unk>", "<s>", "</s>", "<pad>", "<image>"],
            show_progress=False,
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        ),
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        pad_token="<pad>",
        image_token="<image>",
        padding_side="left",
        chat_template=VLM_CHAT_TEMPLATE,
    )


def _vlm_configs(tokenizer) -> dict:
    from transformers import CLIPVisionConfig, LlamaConfig

    vision = CLIPVisionConfig(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        image_size=VLM_IMAGE_SIZE,
        patch_size=VLM_PATCH,
    )
    text = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=4096,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    return dict(
        vision_config=vision,
        text_config=text,
        image_token_index=tokenizer.image_token_id,
        vision_feature_select_strategy="default",
        vision_feature_layer=-1,
    )


def _save_vlm(model, processor, tokenizer, out_dir: Path):
    config = model.generation_config
    config.bos_token_id, config.eos_token_id = tokenizer.bos_token_id, tokenizer.eos_token_id
    config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(out_dir)
    processor.save_pretrained(out_dir)
    return model.eval(), processor


def build_tiny_llava(out_dir: Path, seed: int = 0):
    """LLaVA 1.5 architecture: CLIP vision tower, MLP projector, Llama. ~650 KB."""
    from transformers import LlavaConfig, LlavaForConditionalGeneration, LlavaProcessor
    from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

    torch.manual_seed(seed)
    tokenizer = _vlm_tokenizer()
    tokens_per_image = (VLM_IMAGE_SIZE // VLM_PATCH) ** 2
    model = LlavaForConditionalGeneration(
        LlavaConfig(**_vlm_configs(tokenizer), image_seq_length=tokens_per_image)
    )
    image_processor = CLIPImageProcessorPil(
        size={"shortest_edge": VLM_IMAGE_SIZE}, crop_size={"height": VLM_IMAGE_SIZE, "width": VLM_IMAGE_SIZE}
    )
    processor = LlavaProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        patch_size=VLM_PATCH,
        chat_template=VLM_CHAT_TEMPLATE,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,  # +1 = CLS
    )
    return _save_vlm(model, processor, tokenizer, out_dir)


def build_tiny_llava_next(out_dir: Path, seed: int = 0):
    """LLaVA-NeXT (1.6) architecture with an any-res grid of 1x2, 2x1 and 2x2 tiles."""
    from transformers import LlavaNextConfig, LlavaNextForConditionalGeneration, LlavaNextProcessor
    from transformers.models.llava_next.image_processing_pil_llava_next import LlavaNextImageProcessorPil

    torch.manual_seed(seed)
    tokenizer = _vlm_tokenizer()
    size = VLM_IMAGE_SIZE
    pinpoints = [
        [size, 2 * size],
        [2 * size, size],
        [2 * size, 2 * size],
    ]  # (h, w) like 336x672, 672x336, ...
    model = LlavaNextForConditionalGeneration(
        LlavaNextConfig(**_vlm_configs(tokenizer), image_grid_pinpoints=pinpoints)
    )
    image_processor = LlavaNextImageProcessorPil(
        size={"shortest_edge": size},
        crop_size={"height": size, "width": size},
        image_grid_pinpoints=pinpoints,
    )
    processor = LlavaNextProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        patch_size=VLM_PATCH,
        chat_template=VLM_CHAT_TEMPLATE,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,
    )
    return _save_vlm(model, processor, tokenizer, out_dir)


# ---------------------------------------------------------------- all of them


@dataclass(frozen=True)
class TinyModels:
    """Folders of the tiny models, ready for from_pretrained."""

    sd: Path
    sd_inpaint: Path
    controlnet: Path
    llava: Path
    llava_next: Path


def build_all(root: Path, seed: int = 0) -> TinyModels:
    """Builds every tiny model under `root` (about 2 s, 40 MB)."""
    models = TinyModels(
        root / "tiny-sd",
        root / "tiny-sd-inpaint",
        root / "tiny-controlnet",
        root / "tiny-llava",
        root / "tiny-llava-next",
    )
    build_tiny_sd(models.sd, seed)
    build_tiny_sd(models.sd_inpaint, seed, inpainting=True)
    build_tiny_controlnet(models.controlnet, seed)
    build_tiny_llava(models.llava, seed)
    build_tiny_llava_next(models.llava_next, seed)
    return models
