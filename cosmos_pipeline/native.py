"""Native Cosmos-Predict2.5 checkpoints as diffusers variants: post-trained weights and LoRA adapters.

NVIDIA's trainer writes DCP folders (`checkpoints/iter_N/model/` with `.metadata` and `*.distcp`), and its
`scripts/convert_distcp_to_pt.py` turns one into `model.pt` (keys `net.*` and `net_ema.*`),
`model_ema_fp32.pt` and `model_ema_bf16.pt` (the EMA weights renamed `net.*`); the released checkpoints
(`base/{pre-trained,post-trained,distilled}/<uuid>_ema_bf16.pt`) have the same keys. Only the transformer
differs between variants, so a native checkpoint becomes a `CosmosTransformer3DModel` by the key renames of
diffusers' `scripts/convert_cosmos_to_diffusers.py` (its Cosmos 2.0 rules, which it reuses for 2.5), with
the config of the base model's transformer; text encoder, VAE, tokenizer and scheduler come from the base.

A conversion costs a full read of the checkpoint (GBs), so its result is saved once as a diffusers folder
keyed by the checkpoint's content hash, and every later load is a plain `from_pretrained`. The hash itself
is remembered by (path, size, mtime), so a second load does not read the checkpoint at all.
"""

import functools
import hashlib
import io
import json
import os
import re
import shutil
import tempfile
import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import torch

from cosmos_pipeline.errors import InputError

# Bump when the conversion changes, so stale converted folders are rebuilt rather than reused.
CONVERSION_VERSION = "1"

# Substring renames, applied in this order to each key once `net.` is stripped (diffusers'
# TRANSFORMER_KEYS_RENAME_DICT_COSMOS_2_0; no tensor is reshaped).
RENAMES: tuple[tuple[str, str], ...] = (
    ("t_embedder.1", "time_embed.t_embedder"),
    ("t_embedding_norm", "time_embed.norm"),
    ("blocks", "transformer_blocks"),
    ("adaln_modulation_self_attn.1", "norm1.linear_1"),
    ("adaln_modulation_self_attn.2", "norm1.linear_2"),
    ("adaln_modulation_cross_attn.1", "norm2.linear_1"),
    ("adaln_modulation_cross_attn.2", "norm2.linear_2"),
    ("adaln_modulation_mlp.1", "norm3.linear_1"),
    ("adaln_modulation_mlp.2", "norm3.linear_2"),
    ("self_attn", "attn1"),
    ("cross_attn", "attn2"),
    ("q_proj", "to_q"),
    ("k_proj", "to_k"),
    ("v_proj", "to_v"),
    ("output_proj", "to_out.0"),
    ("q_norm", "norm_q"),
    ("k_norm", "norm_k"),
    ("mlp.layer1", "ff.net.0.proj"),
    ("mlp.layer2", "ff.net.2"),
    ("x_embedder.proj.1", "patch_embed.proj"),
    ("final_layer.adaln_modulation.1", "norm_out.linear_1"),
    ("final_layer.adaln_modulation.2", "norm_out.linear_2"),
    ("final_layer.linear", "proj_out"),
)
# Training counters, the RoPE tables (recomputed by diffusers) and Transformer Engine's extra state.
DROPPED_PREFIXES = ("accum_", "pos_embedder.")
DROPPED_SUFFIX = "_extra_state"
EMA, REGULAR = "net_ema.", "net."
# NVIDIA's LoRA runs wrap the network with peft's `get_peft_model`: `net.base_model.model.<key>`, and
# each adapted linear holds `base_layer.weight`, `lora_A.default.weight` and `lora_B.default.weight`.
PEFT_PREFIX = "base_model.model."
LORA_KEY = re.compile(r"\.lora_([AB])\.default\.weight$")

# Sizes NVIDIA releases, by (layers, hidden size); each one's hub model provides its other components.
RELEASED_SIZES = {(28, 2048): "2B", (36, 5120): "14B"}
LORA_WEIGHT_NAME = "pytorch_lora_weights.safetensors"


class NativeCheckpointError(InputError):
    """A native checkpoint that cannot be used as asked: unreadable, foreign, or of another size."""


@dataclass(frozen=True)
class NativeSize:
    """The transformer's shape as read off a checkpoint's tensors."""

    num_layers: int
    hidden_size: int
    head_dim: int

    @property
    def hub_model(self) -> str | None:
        """NVIDIA's hub model of this size, if it is a released one."""
        name = RELEASED_SIZES.get((self.num_layers, self.hidden_size))
        return None if name is None else f"nvidia/Cosmos-Predict2.5-{name}"

    def describe(self) -> str:
        name = RELEASED_SIZES.get((self.num_layers, self.hidden_size), "an unreleased size")
        return f"{self.num_layers} layers, hidden size {self.hidden_size} ({name})"


# ----------------------------------------------------------------------------- reading


def is_native_checkpoint(location: str | Path) -> bool:
    """A `.pt` file, or a DCP folder (or the `iter_N` folder holding its `model/`): NVIDIA's formats."""
    path = Path(location).expanduser()
    if path.is_file():
        return path.suffix == ".pt"
    return (path / ".metadata").is_file() or (path / "model" / ".metadata").is_file()


def _dcp_folder(path: Path) -> Path:
    return path if (path / ".metadata").is_file() else path / "model"


class NativeCheckpoint:
    """The tensors of a `.pt` file or a DCP folder, with their shapes known before any is read."""

    def __init__(self, location: str | Path) -> None:
        self.path = Path(location).expanduser().resolve()
        if not is_native_checkpoint(self.path):
            raise NativeCheckpointError(
                f"{self.path} is not a native Cosmos checkpoint: expected a .pt file (model_ema_bf16.pt, "
                "model_ema_fp32.pt or model.pt) or a DCP folder holding .metadata and *.distcp files"
            )

    @functools.cached_property
    def _pt(self) -> dict[str, torch.Tensor]:
        return _load_pt(self.path)

    @functools.cached_property
    def shapes(self) -> dict[str, tuple[int, ...]]:
        """Every tensor's shape (a `.pt` file is memory-mapped; a DCP folder's metadata is read)."""
        if self.path.is_file():
            return {k: tuple(v.shape) for k, v in self._pt.items() if isinstance(v, torch.Tensor)}
        return _dcp_shapes(_dcp_folder(self.path))

    def files(self) -> list[Path]:
        """What the content hash covers."""
        if self.path.is_file():
            return [self.path]
        return sorted(p for p in _dcp_folder(self.path).iterdir() if p.is_file())

    def load(self, keys: Iterable[str]) -> dict[str, torch.Tensor]:
        """The tensors under `keys` (a DCP folder reads only those)."""
        keys = list(keys)
        if self.path.is_file():
            return {k: self._pt[k] for k in keys}
        from torch.distributed.checkpoint import FileSystemReader
        from torch.distributed.checkpoint import load as dcp_load

        reader = FileSystemReader(str(_dcp_folder(self.path)))
        metadata = reader.read_metadata().state_dict_metadata
        state = {k: torch.empty(metadata[k].size, dtype=metadata[k].properties.dtype) for k in keys}
        try:
            with warnings.catch_warnings():  # "assuming the intent is to load in a single process": it is
                warnings.filterwarnings("ignore", message="torch.distributed is disabled")
                dcp_load(state, storage_reader=reader, no_dist=True)
        except Exception as error:
            raise NativeCheckpointError(
                f"could not read the DCP checkpoint {self.path} ({type(error).__name__}: {error}); "
                "check that every *.distcp file of the run was copied"
            ) from error
        return state


def _load_pt(path: Path) -> dict[str, torch.Tensor]:
    """Tensors only (`weights_only=True`), memory-mapped where the file format allows it.

    Transformer Engine wrote its `_extra_state` (dropped later) as an `io.BytesIO` in older versions; a
    byte buffer runs no code, so it is the one non-tensor type allowed in.
    """
    try:
        with torch.serialization.safe_globals([io.BytesIO]):
            try:
                state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
            except RuntimeError as error:  # files in the legacy (non-zip) format cannot be memory-mapped
                if "mmap" not in str(error):
                    raise
                state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        lines = str(error).splitlines() or [""]
        detail = next((line for line in lines if "Unsupported global" in line), lines[0])[:300]
        raise NativeCheckpointError(
            f"could not read {path} as a PyTorch checkpoint with weights_only=True ({type(error).__name__}: "
            f"{detail}). Is the file complete (compare its size with the source), and written by torch.save "
            "(e.g. NVIDIA's convert_distcp_to_pt.py)?"
        ) from error
    if not isinstance(state, dict):
        raise NativeCheckpointError(
            f"{path} holds a {type(state).__name__}, not a state dict: not a native Cosmos checkpoint"
        )
    return state


def _dcp_shapes(folder: Path) -> dict[str, tuple[int, ...]]:
    from torch.distributed.checkpoint import FileSystemReader
    from torch.distributed.checkpoint.metadata import TensorStorageMetadata

    try:
        metadata = FileSystemReader(str(folder)).read_metadata()
    except Exception as error:
        raise NativeCheckpointError(
            f"could not read the DCP metadata of {folder} ({type(error).__name__}: {error}); "
            "is the folder a complete copy of a checkpoint's model/ folder?"
        ) from error
    return {
        key: tuple(entry.size)
        for key, entry in metadata.state_dict_metadata.items()
        if isinstance(entry, TensorStorageMetadata)
    }


# ----------------------------------------------------------------------------- key mapping


def diffusers_key(native_key: str) -> str:
    """The `CosmosTransformer3DModel` key of a native key (network prefix already stripped)."""
    key = native_key.removeprefix(PEFT_PREFIX)
    for old, new in RENAMES:
        key = key.replace(old, new)
    return key


def _is_dropped(key: str) -> bool:
    return key.startswith(DROPPED_PREFIXES) or key.endswith(DROPPED_SUFFIX)


def network_keys(shapes: dict[str, tuple[int, ...]], path: Path) -> dict[str, str]:
    """Full checkpoint key -> key inside the network, for the weights inference uses (EMA when present).

    Other networks of a distillation run (`net_fake_score.*`, `net_discriminator_head.*`) are skipped;
    anything else is not a Cosmos checkpoint.
    """
    prefix = EMA if any(k.startswith(EMA) for k in shapes) else REGULAR
    foreign = [k for k in shapes if not k.startswith("net")]
    if foreign or not any(k.startswith(prefix) for k in shapes):
        raise NativeCheckpointError(
            f"{path} is not a native Cosmos-Predict2.5 checkpoint: its keys should start with 'net.' or "
            f"'net_ema.', found {', '.join(sorted(foreign or shapes)[:5])}. Pass a file written by "
            "NVIDIA's trainer or scripts/convert_distcp_to_pt.py (a diffusers folder is passed as is)."
        )
    return {k: k.removeprefix(prefix) for k in shapes if k.startswith(prefix)}


def native_size(shapes: dict[str, tuple[int, ...]], path: Path) -> NativeSize:
    """Layers, hidden size and head size, from the tensor shapes (network prefix already stripped)."""
    stripped = {k.removeprefix(PEFT_PREFIX).replace(".base_layer.", "."): v for k, v in shapes.items()}
    layers = {int(m.group(1)) for k in stripped if (m := re.match(r"blocks\.(\d+)\.", k))}
    try:
        hidden = stripped["x_embedder.proj.1.weight"][0]
        head_dim = stripped["blocks.0.self_attn.q_norm.weight"][0]
    except KeyError as error:
        raise NativeCheckpointError(
            f"{path} has no {error.args[0]!r} tensor: not a Cosmos-Predict2.5 DiT checkpoint"
        ) from error
    return NativeSize(num_layers=len(layers), hidden_size=hidden, head_dim=head_dim)


def checkpoint_size(checkpoint: str | Path) -> NativeSize:
    native = NativeCheckpoint(checkpoint)
    keys = network_keys(native.shapes, native.path)
    return native_size({inner: native.shapes[full] for full, inner in keys.items()}, native.path)


def base_model_for(checkpoint: str | Path) -> str:
    """The hub model whose text encoder, VAE and transformer config a checkpoint of this size uses."""
    size = checkpoint_size(checkpoint)
    if size.hub_model is None:
        raise NativeCheckpointError(
            f"{checkpoint} has {size.describe()}: neither the 2B (28 layers, 2048) nor the 14B (36, 5120), "
            "so there is no default base model. Pass --base_model_id with the model it was trained from."
        )
    return size.hub_model


# ----------------------------------------------------------------------------- cache


def cache_root() -> Path:
    """`native/` beside the embedded model's cache, under `COSMOS_CACHE_DIR` when set."""
    from cosmos_pipeline.tiny import embedded_cache_dir

    return embedded_cache_dir().parent / "native"


def _hash_files(files: list[Path], root: Path) -> str:
    digest = hashlib.sha256()
    for path in files:
        digest.update(f"{path.relative_to(root)}\0{path.stat().st_size}\0".encode())
        with path.open("rb") as handle:
            while chunk := handle.read(16 * 2**20):
                digest.update(chunk)
    return digest.hexdigest()


def content_hash(native: NativeCheckpoint) -> str:
    """SHA-256 over the checkpoint's bytes, remembered by (path, size, mtime) of each of its files."""
    files = native.files()
    root = native.path if native.path.is_dir() else native.path.parent
    stamp = [[str(p), p.stat().st_size, p.stat().st_mtime_ns] for p in files]
    record = cache_root() / "hashes" / f"{hashlib.sha256(str(native.path).encode()).hexdigest()[:32]}.json"
    if record.is_file():
        saved = json.loads(record.read_text())
        if saved.get("stamp") == stamp:
            return saved["sha256"]
    digest = _hash_files(files, root)
    _write_atomically(record, json.dumps({"stamp": stamp, "sha256": digest}))
    return digest


def _write_atomically(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    with os.fdopen(handle, "w") as file:
        file.write(text)
    os.replace(temp, path)


def _cached_folder(name: str, marker: str, build: Callable[[Path], None]) -> Path:
    """`cache_root()/name`, built once by `build(staging)`; of concurrent builders, one wins the rename."""
    target = cache_root() / name
    if (target / marker).exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{name}.", dir=target.parent))
    try:
        build(staging)
        try:
            staging.rename(target)
        except OSError:  # another process finished first; its folder holds the same conversion
            if not (target / marker).exists():
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


# ----------------------------------------------------------------------------- transformer


def base_transformer_config(base_location: str, revision: str | None = None) -> dict:
    """The base model's transformer config: what a checkpoint's weights do not say (RoPE scale, ...)."""
    from diffusers import CosmosTransformer3DModel

    config = CosmosTransformer3DModel.load_config(base_location, subfolder="transformer", revision=revision)
    return {k: v for k, v in config.items() if not k.startswith("_")}


def _convert_transformer(native: NativeCheckpoint, config: dict, staging: Path) -> None:
    from accelerate import init_empty_weights
    from diffusers import CosmosTransformer3DModel

    keys = network_keys(native.shapes, native.path)
    if any(".lora_" in k for k in keys.values()):
        raise NativeCheckpointError(
            f"{native.path} is a LoRA run's checkpoint (lora_A/lora_B weights beside the frozen base "
            "weights): pass it as --lora_path, with --model_id the model it was trained on"
        )
    size = native_size({inner: native.shapes[full] for full, inner in keys.items()}, native.path)
    with init_empty_weights():
        model = CosmosTransformer3DModel.from_config(config)
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    base_size = NativeSize(
        model.config.num_layers,
        model.config.num_attention_heads * model.config.attention_head_dim,
        model.config.attention_head_dim,
    )
    if size != base_size:
        hint = size.hub_model or "the model it was trained from"
        raise NativeCheckpointError(
            f"{native.path} has {size.describe()} but the base model's transformer has "
            f"{base_size.describe()}: pass --base_model_id with a base of the checkpoint's size ({hint})"
        )
    mapping = {diffusers_key(inner): full for full, inner in keys.items() if not _is_dropped(inner)}
    missing, unexpected = sorted(expected.keys() - mapping), sorted(mapping.keys() - expected)
    if missing or unexpected:
        raise NativeCheckpointError(
            f"{native.path} does not match CosmosTransformer3DModel: "
            + "; ".join(
                f"{label} {len(names)} keys ({', '.join(names[:4])}{', ...' if len(names) > 4 else ''})"
                for label, names in (("missing", missing), ("unexpected", unexpected))
                if names
            )
            + ". It is not a Cosmos-Predict2.5 checkpoint, or one of another architecture than its base."
        )
    wrong = [k for k in expected if native.shapes[mapping[k]] != expected[k]]
    if wrong:
        key = wrong[0]
        raise NativeCheckpointError(
            f"{native.path}: {len(wrong)} tensors have other shapes than the base model's config, e.g. "
            f"{mapping[key]} is {native.shapes[mapping[key]]} where {key} is {expected[key]}. "
            "Pass --base_model_id with the model this checkpoint was trained from."
        )
    tensors = native.load(mapping.values())
    model.load_state_dict({k: tensors[full] for k, full in mapping.items()}, strict=True, assign=True)
    model.save_pretrained(staging, safe_serialization=True)


def converted_transformer_dir(
    checkpoint: str | Path, base_location: str, base_revision: str | None = None
) -> Path:
    """A diffusers folder of the checkpoint's transformer (config of the base's), converted on first use."""
    native = NativeCheckpoint(checkpoint)
    config = base_transformer_config(base_location, base_revision)
    key = f"{CONVERSION_VERSION}|{content_hash(native)}|{json.dumps(config, sort_keys=True)}"
    name = f"transformer-{hashlib.sha256(key.encode()).hexdigest()[:24]}"
    return _cached_folder(name, "config.json", lambda staging: _convert_transformer(native, config, staging))


def native_transformer(
    checkpoint: str | Path,
    base_location: str,
    base_revision: str | None = None,
    dtype: torch.dtype = torch.bfloat16,
):
    """The checkpoint's `CosmosTransformer3DModel`, for `Cosmos2_5_PredictBasePipeline.from_pretrained(
    base_location, transformer=...)`."""
    from diffusers import CosmosTransformer3DModel

    folder = converted_transformer_dir(checkpoint, base_location, base_revision)
    return CosmosTransformer3DModel.from_pretrained(folder, dtype=dtype)


# ----------------------------------------------------------------------------- LoRA


def _convert_lora(native: NativeCheckpoint, alpha: float | None, staging: Path) -> None:
    from diffusers import Cosmos2_5_PredictBasePipeline

    keys = network_keys(native.shapes, native.path)
    lora = {}
    for full, inner in keys.items():
        if ".lora_magnitude_vector" in inner:
            raise NativeCheckpointError(f"{native.path} is a DoRA adapter ({full}); only LoRA is supported")
        if LORA_KEY.search(inner):
            lora[LORA_KEY.sub(r".lora_\1.weight", diffusers_key(inner))] = full
    if not lora:
        raise NativeCheckpointError(
            f"{native.path} holds no lora_A/lora_B weights: not a LoRA checkpoint. A full post-trained "
            "checkpoint is passed as --model_id instead."
        )
    ranks = {native.shapes[full][0] for key, full in lora.items() if ".lora_A." in key}
    if len(ranks) != 1:
        raise NativeCheckpointError(f"{native.path} mixes LoRA ranks {sorted(ranks)}; one rank is supported")
    rank = ranks.pop()
    tensors = native.load(lora.values())
    metadata = {  # diffusers builds the peft LoraConfig from this; the scale is lora_alpha / r
        "r": rank,
        "lora_alpha": rank if alpha is None else alpha,  # NVIDIA's files do not record alpha; default r
        "target_modules": sorted({key.split(".lora_")[0] for key in lora}),
    }
    Cosmos2_5_PredictBasePipeline.save_lora_weights(
        staging,
        transformer_lora_layers={key: tensors[full].contiguous() for key, full in lora.items()},
        weight_name=LORA_WEIGHT_NAME,
        transformer_lora_adapter_metadata=metadata,
    )


def converted_lora_dir(checkpoint: str | Path, alpha: float | None = None) -> Path:
    """A diffusers LoRA folder (for `pipe.load_lora_weights`) from a native LoRA run's checkpoint.

    `alpha`: the run's `lora_alpha` when it differs from its rank (the scale is alpha / rank).
    """
    native = NativeCheckpoint(checkpoint)
    key = f"{CONVERSION_VERSION}|{content_hash(native)}|{alpha}"
    name = f"lora-{hashlib.sha256(key.encode()).hexdigest()[:24]}"
    return _cached_folder(name, LORA_WEIGHT_NAME, lambda staging: _convert_lora(native, alpha, staging))
