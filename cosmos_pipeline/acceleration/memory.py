"""Where the pipeline's components live: text-encoder offload to pinned host memory, whole-model CPU
offload, and tiled VAE decoding when free memory is short."""

import contextlib
from collections.abc import Iterator

import torch
from torch import nn

from cosmos_pipeline.acceleration.options import AccelerationPlan
from cosmos_pipeline.acceleration.plan import decode_bytes, vision_tower


class TextEncoderOffload:
    """The text encoder's weights wait in pinned host memory and visit the GPU only to encode.

    Weights never change at inference, so leaving the GPU needs no copy back: the GPU tensors are
    dropped and the host copies kept. The vision tower stays on the host: Cosmos feeds the encoder
    text only.
    """

    def __init__(self, text_encoder: nn.Module, device: torch.device) -> None:
        self.device = device
        text_encoder.to("cpu")
        visual = vision_tower(text_encoder)
        skip = set() if visual is None else {id(t) for t in (*visual.parameters(), *visual.buffers())}
        self._tensors: list[tuple[torch.Tensor, torch.Tensor]] = []
        for tensor in (*text_encoder.parameters(), *text_encoder.buffers()):
            if id(tensor) in skip:
                continue
            with contextlib.suppress(RuntimeError):  # no pinnable memory: pageable copies still work
                tensor.data = tensor.data.pin_memory()
            self._tensors.append((tensor, tensor.data))

    def load(self) -> None:
        for tensor, host in self._tensors:
            tensor.data = host.to(self.device, non_blocking=True)

    def unload(self) -> None:
        for tensor, host in self._tensors:
            tensor.data = host

    def restore(self, device: torch.device) -> None:
        """Back to an ordinary module on `device`."""
        self.unload()
        for tensor, host in self._tensors:
            tensor.data = host.to(device)


@contextlib.contextmanager
def text_encoder_on_device(pipe) -> Iterator[None]:
    """The text encoder on the GPU for the duration (a no-op unless it is offloaded)."""
    offload: TextEncoderOffload | None = pipe.__dict__.get("_cosmos_text_encoder_offload")
    if offload is None:
        yield
        return
    offload.load()
    try:
        yield
    finally:
        offload.unload()


def available_bytes(device: torch.device, budget: int | None) -> int:
    """Memory a new allocation can get: free on the card plus PyTorch's cached blocks, within the budget."""
    free, total = torch.cuda.mem_get_info(device)
    allocated = torch.cuda.memory_allocated(device)
    cached = torch.cuda.memory_reserved(device) - allocated
    return min(free + cached, (budget or total) - allocated)


def use_tiled_decode(
    plan: AccelerationPlan, device: torch.device, height: int, width: int, num_frames: int
) -> bool:
    if plan.vae_tiling != "auto":
        return plan.vae_tiling == "on"
    if device.type != "cuda":
        return False
    return available_bytes(device, plan.memory_budget_bytes) < decode_bytes(height, width, num_frames)


@contextlib.contextmanager
def vae_tiling(vae: nn.Module, enabled: bool) -> Iterator[None]:
    """Tiled decoding for the duration, if `enabled` and the VAE was not tiling already."""
    switch = enabled and not getattr(vae, "use_tiling", False)
    if switch:
        vae.enable_tiling()
    try:
        yield
    finally:
        if switch:
            vae.disable_tiling()


def place(pipe, previous: AccelerationPlan | None, offload: str, device: torch.device) -> None:
    """Put the components where the offload plan wants them, undoing the previous plan's placement."""
    state: TextEncoderOffload | None = pipe.__dict__.pop("_cosmos_text_encoder_offload", None)
    if state is not None:
        state.restore(torch.device("cpu"))
    if previous is not None and previous.offload == "model":
        pipe.remove_all_hooks()
    if offload == "none":
        pipe.to(device)
    elif offload == "text_encoder":
        for name, component in pipe.components.items():
            if isinstance(component, nn.Module) and name != "text_encoder":
                component.to(device)
        pipe.__dict__["_cosmos_text_encoder_offload"] = TextEncoderOffload(pipe.text_encoder, device)
    else:
        pipe.enable_model_cpu_offload(device=device)
