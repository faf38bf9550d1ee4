"""The model cache with real tiny pipelines: memory budget, LRU eviction, pinning, from_pipe sharing."""

from __future__ import annotations

import pytest
from prometheus_client import CollectorRegistry

from services.common.errors import FailedPrecondition, NotFound, ResourceExhausted
from services.diffusion.devices import detect_device
from services.diffusion.metrics import DiffusionMetrics
from services.diffusion.model_cache import ModelCache
from services.diffusion.settings import ModelConfig

# numpy 2 deprecations raised inside diffusers' schedulers: not ours to fix
pytestmark = [
    pytest.mark.filterwarnings("ignore::DeprecationWarning:diffusers"),
    pytest.mark.filterwarnings("ignore:Should have t:UserWarning:torchsde"),  # torchsde float rounding
    pytest.mark.filterwarnings("ignore:__array_wrap__ must accept context:DeprecationWarning"),
]


def make_cache(tiny_models, budget: int, pin_first: bool = False) -> ModelCache:
    catalog = [ModelConfig(id, str(tiny_models.sd), pin=pin_first and id == "a") for id in ("a", "b", "c")]
    controlnets = [ModelConfig("edges", str(tiny_models.controlnet))]
    return ModelCache(
        detect_device("cpu"), budget, catalog, controlnets, DiffusionMetrics(CollectorRegistry())
    )


@pytest.fixture(scope="module")
def model_bytes(tiny_models) -> int:
    cache = make_cache(tiny_models, 10**12)
    return cache.load("a")[0].memory_bytes


def test_least_recently_used_model_is_evicted(tiny_models, model_bytes):
    cache = make_cache(tiny_models, int(model_bytes * 2.5))
    cache.load("a")
    cache.load("b")
    with cache.use("a"):  # a is now more recently used than b
        pass
    _, evicted = cache.load("c")
    assert evicted == ["b"]
    assert sorted(cache.loaded_ids()) == ["a", "c"]
    assert cache.used_bytes <= cache.budget_bytes


def test_pinned_and_busy_models_stay(tiny_models, model_bytes):
    cache = make_cache(tiny_models, int(model_bytes * 1.5), pin_first=True)
    cache.load("a")
    with pytest.raises(ResourceExhausted, match="does not fit"):
        cache.load("b")  # only room for one, and "a" is pinned
    assert cache.loaded_ids() == ["a"]
    failed = [s for s in cache.statuses() if s.state == "failed"]
    assert [s.config.id for s in failed] == ["b"]


def test_model_in_use_is_not_evicted(tiny_models, model_bytes):
    cache = make_cache(tiny_models, int(model_bytes * 1.5))
    with cache.use("a"), pytest.raises(ResourceExhausted):
        cache.load("b")
    assert cache.load("b")[1] == ["a"]  # once idle it may go


def test_task_pipelines_share_the_loaded_weights(tiny_models):
    cache = make_cache(tiny_models, 10**12)
    entry = cache.load("a")[0]
    base = entry.pipe
    for task in ("img2img", "inpaint"):
        pipe = cache.pipeline_for(entry, task)
        assert pipe.unet is base.unet and pipe.vae is base.vae and pipe.text_encoder is base.text_encoder
        assert cache.pipeline_for(entry, task) is pipe  # made once
    controlled = cache.pipeline_for(entry, "txt2img", ("edges",))
    assert controlled.unet is base.unet and type(controlled).__name__ == "StableDiffusionControlNetPipeline"
    assert cache.pipeline_for(entry, "img2img", ("edges",)).controlnet is controlled.controlnet  # cached once
    with pytest.raises(NotFound):
        cache.pipeline_for(entry, "txt2img", ("unknown",))


def test_unknown_model_is_not_found(tiny_models):
    with pytest.raises(NotFound):
        make_cache(tiny_models, 10**12).load("zzz")


def test_memory_options_apply_and_offload_needs_an_accelerator(tiny_models):
    sliced = ModelConfig(
        "sliced", str(tiny_models.sd), attention_slicing=True, vae_slicing=True, vae_tiling=True
    )
    offloaded = ModelConfig("offloaded", str(tiny_models.sd), offload="model")
    cache = ModelCache(
        detect_device("cpu"), 10**12, [sliced, offloaded], [], DiffusionMetrics(CollectorRegistry())
    )
    entry = cache.load("sliced")[0]
    assert entry.pipe.vae.use_slicing and entry.pipe.vae.use_tiling
    image = entry.pipe(prompt="x", height=64, width=64, num_inference_steps=1).images[0]
    assert image.size == (64, 64)
    with pytest.raises(FailedPrecondition, match="needs an accelerator"):
        cache.load("offloaded")


def test_model_found_too_big_after_loading_is_dropped(tiny_models, model_bytes, monkeypatch):
    """Repo ids have no size estimate: the budget is checked again once the weights are in memory."""
    monkeypatch.setattr("services.diffusion.model_cache._estimate_bytes", lambda config, dtype: 0)
    cache = make_cache(tiny_models, int(model_bytes * 0.5))
    with pytest.raises(ResourceExhausted, match="does not fit"):
        cache.load("a")
    assert cache.loaded_ids() == [] and cache.used_bytes == 0
