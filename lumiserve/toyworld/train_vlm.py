"""Train the toy-world vision-language model: a real ``LlavaForConditionalGeneration`` from scratch on CPU.

CLIP vision tower (32x32 input, 8x8 patches -> 16 image tokens) + LLaVA MLP projector + a small Llama,
a byte-level BPE tokenizer trained in memory (toy words whole), and a ``LlavaProcessor`` with a chat
template. Trained on caption / colour / shape questions about fresh renders of the shared toy world,
with the loss on the answer tokens only. Deterministic: fixed seeds, one CPU thread.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import numpy as np
import torch
from PIL import Image, ImageFilter
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import (
    CLIPVisionConfig,
    LlamaConfig,
    LlavaConfig,
    LlavaForConditionalGeneration,
    LlavaProcessor,
    PreTrainedTokenizerFast,
)
from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

from lumiserve.toyworld.progress import make_progress, ticker
from lumiserve.toyworld.world import (
    BACKGROUNDS,
    EXTRA_QUESTIONS,
    POSITIONS,
    QUESTIONS,
    RES,
    all_prompts,
    prompt_of,
    render_scene,
    sample_extras,
    sample_scene,
)

# LLaVA-1.5 style, except that the assistant's answer starts on a new line after "ASSISTANT:", so that the
# generated text has no leading space: "<s>USER: <image>\n{question}\nASSISTANT:\n{answer}</s>\n".
CHAT_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}{{ m['role'].upper() }}:"
    "{% if m['role'] == 'assistant' %}{{ '\\n' }}{% else %} {% endif %}"
    "{% if m['content'] is string %}{{ m['content'] }}{% else %}{% for c in m['content'] %}"
    "{% if c['type'] == 'image' %}<image>\n{% elif c['type'] == 'text' %}{{ c['text'] }}{% endif %}"
    "{% endfor %}{% endif %}{% if m['role'] == 'assistant' %}{{ eos_token }}{% endif %}"
    "{{ '\\n' }}{% endfor %}"
    "{% if add_generation_prompt %}ASSISTANT:{{ '\\n' }}{% endif %}"
)
IMG = RES  # vision input side
PATCH = 8  # -> (32 / 8)^2 = 16 image tokens (CLS dropped: 'default' strategy)
KINDS = tuple(QUESTIONS)


@dataclass
class VlmTrainConfig:
    """Hyper-parameters of a VLM training run (defaults = the committed model)."""

    seed: int = 0
    steps: int = 8000
    batch: int = 32
    lr: float = 2e-3
    vision_dim: int = 64
    vision_layers: int = 3
    text_dim: int = 128
    text_layers: int = 2
    vocab: int = 512
    p_blur: float = 0.25  # augmentation: slight blur, so that generated (softer) images read the same
    p_upscaled: float = 0.25  # augmentation: rendered at 33..64 px, resized by the processor
    p_text_first: float = 0.2  # augmentation: question before the image in the user turn
    p_position: float = 0.0  # stretch (> 0: also ask "Where is the shape?"): share drawn for a position
    p_background: float = 0.0  # stretch (> 0: also ask for the background colour): share on a named one

    @property
    def extras(self) -> bool:
        """Whether the position / background questions are trained too."""
        return self.p_position > 0 or self.p_background > 0

    @property
    def kinds(self) -> tuple[str, ...]:
        """The question kinds trained."""
        return KINDS + tuple(EXTRA_QUESTIONS) if self.extras else KINDS

    @classmethod
    def quick(cls, seed: int = 0) -> VlmTrainConfig:
        """A few steps, for CI: the loss falls, the folder loads."""
        return cls(seed=seed, steps=30, batch=16)


@dataclass
class VlmTrainResult:
    """What a run produced: the folder, per-step losses, timings, parameter counts."""

    out: str
    config: VlmTrainConfig
    losses: list[float] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=dict)
    params: dict[str, int] = field(default_factory=dict)
    notes: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict:
        """JSON-friendly summary (without the per-step losses)."""
        return {"out": self.out, "config": asdict(self.config), "seconds": self.seconds,
                "params": self.params, "notes": self.notes}  # fmt: skip


def make_tokenizer(vocab: int = 512, extras: bool = False) -> PreTrainedTokenizerFast:
    """Byte-level BPE trained in memory on the toy-world conversations (answers become whole tokens)."""
    answers = [prompt_of(c, s) for c, s in all_prompts()] + [c for c, _ in all_prompts()[::3]]
    answers += [s for _, s in all_prompts()[:3]]
    questions = list(QUESTIONS.values())
    if extras:
        answers += [*POSITIONS.values(), *BACKGROUNDS]
        questions += list(EXTRA_QUESTIONS.values())
    corpus = [f"USER: <image>\n{q}\nASSISTANT:\n{a}\n" for q in questions for a in answers] * 20
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(corpus, trainers.BpeTrainer(
        vocab_size=vocab, special_tokens=["<unk>", "<s>", "</s>", "<pad>", "<image>"],
        show_progress=False, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    ))  # fmt: skip
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>", pad_token="<pad>",
        image_token="<image>", padding_side="left", chat_template=CHAT_TEMPLATE,
    )  # fmt: skip


def build(cfg: VlmTrainConfig) -> tuple[LlavaForConditionalGeneration, LlavaProcessor]:
    """A freshly initialised model and its processor (seed the RNG first)."""
    tok = make_tokenizer(cfg.vocab, cfg.extras)
    vision = CLIPVisionConfig(hidden_size=cfg.vision_dim, intermediate_size=4 * cfg.vision_dim,
                              num_hidden_layers=cfg.vision_layers, num_attention_heads=4, image_size=IMG,
                              patch_size=PATCH)  # fmt: skip
    text = LlamaConfig(
        vocab_size=len(tok), hidden_size=cfg.text_dim, intermediate_size=4 * cfg.text_dim,
        num_hidden_layers=cfg.text_layers, num_attention_heads=4, num_key_value_heads=2,
        max_position_embeddings=512, tie_word_embeddings=True,
        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
    )  # fmt: skip
    config = LlavaConfig(
        vision_config=vision, text_config=text, image_token_index=tok.image_token_id,
        vision_feature_select_strategy="default", vision_feature_layer=-1,
        image_seq_length=(IMG // PATCH) ** 2, tie_word_embeddings=True,
    )  # fmt: skip
    model = LlavaForConditionalGeneration(config)
    ip = CLIPImageProcessorPil(size={"shortest_edge": IMG}, crop_size={"height": IMG, "width": IMG})
    proc = LlavaProcessor(
        image_processor=ip, tokenizer=tok, patch_size=PATCH, chat_template=CHAT_TEMPLATE,
        vision_feature_select_strategy="default", num_additional_image_tokens=1,  # +1: CLS
    )  # fmt: skip
    gc = model.generation_config
    gc.bos_token_id, gc.eos_token_id, gc.pad_token_id = tok.bos_token_id, tok.eos_token_id, tok.pad_token_id
    gc.max_new_tokens = 16
    return model, proc


def messages(image: Image.Image, question: str, answer: str | None = None, text_first: bool = False) -> list:
    """One chat: the user turn (image + question), optionally the assistant's answer."""
    parts = [{"type": "image", "image": image}, {"type": "text", "text": question}]
    msgs: list[dict] = [{"role": "user", "content": parts[::-1] if text_first else parts}]
    if answer is not None:
        msgs.append({"role": "assistant", "content": [{"type": "text", "text": answer}]})
    return msgs


def training_sample(rng: np.random.Generator, cfg: VlmTrainConfig) -> tuple[Image.Image, str, str, bool]:
    """(image, question, answer, text_first) from a fresh render, with light augmentation."""
    kinds = cfg.kinds
    kind = kinds[int(rng.integers(len(kinds)))]
    if cfg.extras:
        position, background = sample_extras(rng, cfg.p_position, cfg.p_background)
        if kind == "position":  # asked about shapes clearly on one side only
            position = ("left", "right")[int(rng.integers(2))]
        scene = sample_scene(rng, None, None, position, background)
    else:
        scene = sample_scene(rng)
    size = int(rng.integers(RES + 1, 2 * RES + 1)) if rng.random() < cfg.p_upscaled else RES
    image = render_scene(scene, size)
    if rng.random() < cfg.p_blur:
        image = image.filter(ImageFilter.GaussianBlur(float(rng.uniform(0.3, 0.9)) * size / RES))
    question = QUESTIONS[kind] if kind in QUESTIONS else EXTRA_QUESTIONS[kind]
    return image, question, scene.answer(kind), bool(rng.random() < cfg.p_text_first)  # type: ignore[arg-type]


def make_batch(proc: LlavaProcessor, samples: list[tuple[Image.Image, str, str, bool]]) -> dict:
    """Full conversations through the chat template; labels only on the answer tokens and ``</s>``."""
    tok = proc.tokenizer
    full = [proc.apply_chat_template(messages(im, q, a, tf), tokenize=False) for im, q, a, tf in samples]
    prompts = [proc.apply_chat_template(messages(im, q, None, tf), tokenize=False, add_generation_prompt=True)
               for im, q, _, tf in samples]  # fmt: skip
    enc = proc(text=full, images=[s[0] for s in samples], padding=True, return_tensors="pt")  # left padding
    ids, att = enc["input_ids"], enc["attention_mask"]
    labels = torch.full_like(ids, -100)
    n_img = (IMG // PATCH) ** 2
    length = ids.shape[1]
    for i, prompt in enumerate(prompts):
        start = (
            length - int(att[i].sum()) + len(tok(prompt, add_special_tokens=False)["input_ids"]) + n_img - 1
        )
        ans = ids[i, start:]
        if ans[-2].item() != tok.eos_token_id:  # the template ends the answer with "</s>\n"
            raise RuntimeError(f"unexpected answer tokens: {tok.decode(ans)!r}")
        labels[i, start : length - 1] = ans[:-1]
    enc["labels"] = labels
    return dict(enc)


def nparams(module: torch.nn.Module) -> int:
    """Number of parameters."""
    return sum(p.numel() for p in module.parameters())


def train(
    out: str,
    cfg: VlmTrainConfig | None = None,
    progress: bool = True,
    log: Callable[[str], None] = print,
) -> VlmTrainResult:
    """Train the VLM and ``save_pretrained`` model + processor (safetensors) into ``out``."""
    cfg = cfg or VlmTrainConfig()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _train(out, cfg, progress, log)
    finally:
        torch.set_num_threads(threads)


def _train(out: str, cfg: VlmTrainConfig, progress: bool, log: Callable[[str], None]) -> VlmTrainResult:
    res = VlmTrainResult(out=out, config=cfg)
    torch.manual_seed(cfg.seed)
    model, proc = build(cfg)
    res.params = {
        "vision_tower": nparams(model.model.vision_tower),
        "projector": nparams(model.model.multi_modal_projector),
        "language_model": nparams(model.model.language_model),
        "total": nparams(model),
    }
    res.notes["vocab"] = len(proc.tokenizer)
    log(f"params {res.params}, vocab {len(proc.tokenizer)}")
    rng = np.random.default_rng(cfg.seed + 1)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=0.01, betas=(0.9, 0.98))
    warm = max(1, min(200, cfg.steps // 10))
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / warm) * 0.5 * (1 + math.cos(math.pi * min(1.0, s / cfg.steps)))
    )
    model.train()
    t0 = time.perf_counter()
    with make_progress(progress) as prog:
        tick = ticker(prog, prog.add_task("VLM", total=cfg.steps, loss=float("nan")), log)
        for _ in range(cfg.steps):
            batch = make_batch(proc, [training_sample(rng, cfg) for _ in range(cfg.batch)])
            loss = model(**batch).loss
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            sched.step()
            res.losses.append(loss.item())
            tick(res.losses[-1])
    res.seconds["total"] = time.perf_counter() - t0
    log(f"VLM: {cfg.steps} steps in {res.seconds['total']:.0f}s")
    model.eval()
    os.makedirs(out, exist_ok=True)
    model.save_pretrained(out, safe_serialization=True)
    proc.save_pretrained(out)
    log(f"saved {out}")
    return res
