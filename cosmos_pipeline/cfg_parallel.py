"""CFG-parallel generation: the two forwards of a guided step on two GPUs at once.

diffusers has no context parallelism for the Cosmos transformer, but every classifier-free-guided
step runs two independent forwards (conditional and unconditional) of the same weights. A replica
of the transformer on a second device runs the unconditional one while the main device runs the
conditional one; the result comes back to the main device and the guidance combines them there.
Same weights, same kernels: the output equals the one-device result within bf16 noise (bitwise on
identical GPUs with deterministic kernels).
"""

import copy
from concurrent.futures import Future, ThreadPoolExecutor

import torch

CFG_PARALLEL_ATTRIBUTE = "_cosmos_cfg_parallel"  # where a pipeline keeps its replica


def cfg_parallel_device(setting: str, device_map: str | None, main_device: str) -> str | None:
    """The device for the replica: `auto` takes a second visible GPU when there is one.

    `off` and sharded pipelines (`device_map`) get none; an explicit device (`cuda:1`) is used as given.
    """
    if setting == "off" or device_map is not None:
        return None
    if setting != "auto":
        return setting
    if not main_device.startswith("cuda") or torch.cuda.device_count() < 2:
        return None
    main = torch.device(main_device).index or 0
    return f"cuda:{1 if main == 0 else 0}"


class CfgParallel:
    """A transformer replica on `device` that runs one forward in a worker thread per call.

    A thread (not a process): kernels run asynchronously on each device and PyTorch releases the
    GIL inside them, so the two forwards overlap on the GPUs while Python launches both.
    """

    def __init__(self, transformer: torch.nn.Module, device: str) -> None:
        self.device = torch.device(device)
        self.replica = copy.deepcopy(transformer).to(self.device)
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="cfg-parallel")

    def submit(self, back_to: torch.device, **inputs: torch.Tensor) -> "Future[torch.Tensor]":
        """Start `replica(**inputs)` on the replica's device; the future holds the output on `back_to`."""
        moved = {name: value.to(self.device, non_blocking=True) for name, value in inputs.items()}

        def run() -> torch.Tensor:
            with torch.no_grad():
                if self.device.type == "cuda":
                    torch.cuda.set_device(self.device)
                output = self.replica(**moved, return_dict=False)[0]
                return output.to(back_to, non_blocking=False)

        return self._pool.submit(run)


def attach(pipe, device: str) -> CfgParallel:
    """Give `pipe` a transformer replica on `device`; call before the acceleration plan is applied,
    which then applies the same transformer levers to both."""
    parallel = CfgParallel(pipe.transformer, device)
    pipe.__dict__[CFG_PARALLEL_ATTRIBUTE] = parallel
    return parallel
