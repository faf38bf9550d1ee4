"""Model cards (README.md) for the toy-world folders, from ``train_info.json`` and measured accuracies."""

from __future__ import annotations

import json
import os

from lumiserve.toyworld.world import (
    BACKGROUNDS,
    BG_MAX,
    COLOUR_NAMES,
    EXTRA_QUESTIONS,
    FILL_JITTER,
    HALF_EXTENT,
    POSITIONS,
    QUESTIONS,
    RES,
    SHAPES,
)

WORLD = (
    f"Toy world (`lumiserve/toyworld/world.py`, shared by both models): one flat, anti-aliased shape "
    f"({', '.join(SHAPES)}) in one colour ({', '.join(COLOUR_NAMES)}; ±{FILL_JITTER} per channel) on a dark "
    f"background (every channel uniform in 0..{BG_MAX}), half-size {HALF_EXTENT[0]:.2f}–{HALF_EXTENT[1]:.2f} "
    f"of the side, random position, {RES}×{RES} px. Prompt / caption: `a {{colour}} {{shape}}`."
)


EVAL_COMMAND = "python -m lumiserve.toyworld.cli eval all"


def _extras_text(cfg: dict) -> list[str]:
    """Lines about the stretch phrases, when the run used them."""
    if not (cfg.get("p_position") or cfg.get("p_background")):
        return []
    return [
        f"Extras (stretch): {_pct(cfg.get('p_position', 0))} of the samples are drawn for a position "
        f"({', '.join(f'`{v}`' for v in POSITIONS.values())}) and {_pct(cfg.get('p_background', 0))} on a "
        f"named background ({', '.join(f'`on a {b} background`' for b in BACKGROUNDS)}).",
        "",
    ]


def _pct(x: float) -> str:
    return f"{100 * x:.1f} %"


def _load_info(folder: str) -> dict:
    path = os.path.join(folder, "train_info.json")
    if not os.path.exists(path):
        return {}
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def _common(info: dict) -> list[str]:
    cfg = info.get("config", {})
    sec = info.get("seconds", {})
    versions = ", ".join(f"{k} {v}" for k, v in info.get("versions", {}).items())
    return [
        "## Training",
        "",
        "Reproduce (from the repository root; seeded, one CPU thread: reruns of the trainer give "
        "byte-identical weights on the same software versions, as `tests/integration/"
        "test_toyworld_training.py` checks on short runs):",
        "",
        "```",
        f"PYTHONPATH=. {info.get('command', '?')}",
        "```",
        "",
        f"- seed: {cfg.get('seed', '?')}; hyper-parameters: `{json.dumps(cfg)}`",
        f"- training time: {', '.join(f'{k} {v:.0f} s' for k, v in sec.items())} "
        f"(one thread of a shared 2-core CPU)",
        f"- loss (mean of first / last 20 steps): {info.get('loss_first', float('nan')):.4f} → "
        f"{info.get('loss_last', float('nan')):.4f}",
        f"- software: {versions}",
        "",
    ]


def diffusion_card(folder: str, metrics: dict) -> str:
    """README.md text of the text-to-image folder."""
    info = _load_info(folder)
    p = info.get("params", {})
    notes = info.get("notes", {})
    cfg = info.get("config", {})
    d = metrics.get("diffusion", {})
    rt = metrics.get("roundtrip")
    lines = [
        "---",
        "library_name: diffusers",
        "pipeline_tag: text-to-image",
        "---",
        "# toyworld-sd",
        "",
        "A tiny Stable-Diffusion-1.x pipeline trained from scratch by lumiserve on its own toy world, so "
        "that a machine without network access serves meaningful, checkable images. It draws what the prompt "
        "says: `a red circle`, `a white triangle`, ...",
        "",
        WORLD,
        "",
        "## Architecture (`StableDiffusionPipeline`)",
        "",
        "| component | class | configuration | parameters |",
        "|---|---|---|---|",
        "| tokenizer | `CLIPTokenizer` | byte-level BPE, every toy word one token, "
        "`model_max_length` 16 | – |",
        f"| text encoder | `CLIPTextModel` | hidden 64, 2 layers, 4 heads | {p.get('text_encoder', 0):,} |",
        f"| VAE | `AutoencoderKL` | blocks (16, 32, 32), 4× down: 32×32×3 → 8×8×4, "
        f"scaling_factor {notes.get('scaling_factor', float('nan')):.4f} | {p.get('vae', 0):,} |",
        f"| UNet | `UNet2DConditionModel` | blocks (32, 64), cross-attention at "
        f"{'both levels' if cfg.get('cross_attn_both_levels') else 'the lower level'} + mid "
        f"| {p.get('unet', 0):,} |",
        "| scheduler | `DPMSolverMultistepScheduler` (DPM++ 2M) | SD-1.x scaled-linear betas, epsilon | – |",
        "",
        f"Total {sum(p.values()):,} parameters, safetensors. Native size {RES}×{RES}.",
        "",
        "Training: (1) VAE on reconstruction MSE + 1e-5 KL; (2) UNet + text encoder jointly with the "
        "epsilon (noise-prediction) loss on DDPM noise levels, 10 % empty prompts (for classifier-free "
        f"guidance), EMA {cfg.get('ema_decay', '?')} of the weights (saved). Data: "
        f"{cfg.get('n_per_class', '?')} renders per (colour, shape), batch {cfg.get('unet_batch', '?')}.",
        "",
        *_extras_text(cfg),
        *_common(info),
        "## Accuracy after reload",
        "",
    ]
    if d:
        lines += [
            f"`StableDiffusionPipeline.from_pretrained`, 15 prompts × {d['n'] // 15} seeds, "
            f"{d['scheduler']} {d['steps']} steps, guidance {d['guidance']}, {RES}×{RES}; read back by the "
            "checker (`lumiserve.toyworld.world.classify`):",
            "",
            f"- colour: {_pct(d['colour_acc'])}",
            f"- shape: {_pct(d['shape_acc'])}",
            f"- both: {_pct(d['both_acc'])}",
            f"- {d['ms_per_image']:.0f} ms per image (batches of 15, CPU)",
        ]
        x = d.get("extras")
        if x:
            lines += [
                f"- prompts with a position phrase (colour, shape and side right): {_pct(x['position_acc'])} "
                f"of {x['position_n']}",
                f"- prompts with a background phrase (colour, shape and background right): "
                f"{_pct(x['background_acc'])} of {x['background_n']}",
            ]
    if rt:
        lines.append(f"- round trip (captioned by `toyworld-llava`, exact match with the prompt): "
                     f"{_pct(rt['acc'])} of {rt['n']}")  # fmt: skip
    lines += [
        "",
        f"Measured with `PYTHONPATH=. {metrics.get('eval_command', EVAL_COMMAND)}`.",
        "",
        "## Use",
        "",
        "```python",
        "import torch",
        "from diffusers import StableDiffusionPipeline",
        "pipe = StableDiffusionPipeline.from_pretrained('models/toyworld-sd', use_safetensors=True)",
        "image = pipe('a red circle', height=32, width=32, num_inference_steps=25, guidance_scale=5.0,",
        "             generator=torch.Generator().manual_seed(0)).images[0]",
        "```",
        "",
        "Limitations: only the 15 prompts of the toy world at 32×32; other text or sizes give arbitrary "
        "images. Not a general-purpose model.",
        "",
    ]
    return "\n".join(lines)


def vlm_card(folder: str, metrics: dict) -> str:
    """README.md text of the vision-language folder."""
    info = _load_info(folder)
    p = info.get("params", {})
    cfg = info.get("config", {})
    v = metrics.get("vlm", {})
    rt = metrics.get("roundtrip")
    lines = [
        "---",
        "library_name: transformers",
        "pipeline_tag: image-text-to-text",
        "---",
        "# toyworld-llava",
        "",
        "A tiny LLaVA trained from scratch by lumiserve on its own toy world: it says what the toy-world "
        "diffusion model (`toyworld-sd`) draws.",
        "",
        WORLD,
        "",
        "Questions and answers (greedy decoding):",
        "",
        f"- `{QUESTIONS['caption']}` → `a red circle`",
        f"- `{QUESTIONS['colour']}` → `red`",
        f"- `{QUESTIONS['shape']}` → `circle`",
        "",
        "## Architecture (`LlavaForConditionalGeneration` + `LlavaProcessor`)",
        "",
        "| component | configuration | parameters |",
        "|---|---|---|",
        f"| vision tower `CLIPVisionModel` | {RES}×{RES} input, 8×8 patches → 16 image tokens, hidden "
        f"{cfg.get('vision_dim', '?')}, {cfg.get('vision_layers', '?')} layers "
        f"| {p.get('vision_tower', 0):,} |",
        f"| projector (LLaVA MLP) | GELU MLP | {p.get('projector', 0):,} |",
        f"| language model `LlamaForCausalLM` | hidden {cfg.get('text_dim', '?')}, "
        f"{cfg.get('text_layers', '?')} layers, 4 heads / 2 KV heads, tied embeddings "
        f"| {p.get('language_model', 0):,} |",
        f"| tokenizer | byte-level BPE trained on the toy conversations "
        f"({int(info.get('notes', {}).get('vocab', 0))} tokens), `<image>` token, chat template | – |",
        "",
        f"Total {p.get('total', 0):,} parameters, safetensors. Prompt format: "
        "`<s>USER: <image>\\n{question}\\nASSISTANT:\\n` (the processor's chat template; the answer "
        "follows on its own line, without a leading space, and ends with `</s>`).",
        "",
        "Training: fresh renders every step, one of the three questions each, loss on the answer tokens "
        "(and `</s>`) only; AdamW with warm-up + cosine decay. Augmentation: 25 % slightly blurred, 25 % "
        "rendered at 33–64 px (resized by the processor), 20 % question before the image.",
        "",
        *_extras_text(cfg),
        *(
            [f"Extra questions: {', '.join(f'`{q}`' for q in EXTRA_QUESTIONS.values())}", ""]
            if cfg.get("p_position") or cfg.get("p_background")
            else []
        ),
        *_common(info),
        "## Accuracy after reload",
        "",
    ]
    if v:
        lines += [
            f"`AutoModelForImageTextToText.from_pretrained` + `AutoProcessor`, {v['n']} fresh renders per "
            "question, greedy, exact match:",
            "",
            f"- caption: {_pct(v['caption_acc'])}",
            f"- colour: {_pct(v['colour_acc'])}",
            f"- shape: {_pct(v['shape_acc'])}",
            f"- {v['ms_per_answer']:.0f} ms per answer (batches of 50, CPU)",
        ]
        for kind in EXTRA_QUESTIONS:
            if f"{kind}_acc" in v:
                lines.append(f"- {kind} (stretch): {_pct(v[f'{kind}_acc'])}")
    if rt:
        lines.append(f"- round trip (captions of `toyworld-sd` images equal to their prompt): "
                     f"{_pct(rt['acc'])} of {rt['n']}")  # fmt: skip
    lines += [
        "",
        f"Measured with `PYTHONPATH=. {metrics.get('eval_command', EVAL_COMMAND)}`.",
        "",
        "## Use",
        "",
        "```python",
        "from PIL import Image",
        "from transformers import AutoModelForImageTextToText, AutoProcessor",
        "model = AutoModelForImageTextToText.from_pretrained('models/toyworld-llava', use_safetensors=True)",
        "proc = AutoProcessor.from_pretrained('models/toyworld-llava')",
        "msgs = [{'role': 'user', 'content': [{'type': 'image', 'image': Image.open('shape.png')},",
        "                                      {'type': 'text', 'text': 'What is in this image?'}]}]",
        "inputs = proc.apply_chat_template(msgs, add_generation_prompt=True, tokenize=True,",
        "                                  return_dict=True, return_tensors='pt')",
        "out = model.generate(**inputs, max_new_tokens=16, do_sample=False)",
        "print(proc.decode(out[0, inputs['input_ids'].shape[1]:], skip_special_tokens=True).strip())",
        "```",
        "",
        "Limitations: knows only the toy world (three questions, dark backgrounds); anything else gets a "
        "toy-world answer. Not a general-purpose model.",
        "",
    ]
    return "\n".join(lines)


def write_card(name: str, folder: str, metrics: dict) -> str:
    """Write ``folder/README.md`` for model ``name`` ("diffusion" or "vlm"); returns its path."""
    text = diffusion_card(folder, metrics) if name == "diffusion" else vlm_card(folder, metrics)
    path = os.path.join(folder, "README.md")
    with open(path, "w", encoding="utf-8") as f:
        f.write(text)
    return path
