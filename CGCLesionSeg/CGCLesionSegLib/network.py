"""The CGC segmentation network (paper §3.1, §3.3, §4.3): residual 3-D encoder with three
down-samplings, the cross-granularity contrastive (CGC) module on the bottleneck, and a decoder with
skip connections that up-samples the *enhanced* bottleneck to one lesion logit per voxel.

Tensors are ``(B, C, Z, Y, X)``. Sizes a user writes (crop, mini-patch) are ``x × y × z`` and are
converted once, here, with :func:`CGCLesionSegLib.config.xyz_to_zyx`.

Paths (each can be switched off in :class:`NetConfig`):

* **coarse** (§3.3.1): residual block + 1×1×1 conv on the bottleneck ``z`` → coarse logit on the
  bottleneck grid; ``p = sigmoid(coarse)`` splits ``z`` into lesion ``p⊗z`` and normal ``(1−p)⊗z``
  features, which are fused back into the features the decoder up-samples (see ``fusion``).
* **fine** (§3.3.2): ``z`` cut into mini-patches (default 6×6×4 voxels of the bottleneck grid), each
  averaged and embedded by a small MLP projection head (our choice: the paper names none); the
  supervised contrastive loss lives in :mod:`CGCLesionSegLib.losses`. The head is only run by
  :meth:`CGCNet.forward`; :meth:`CGCNet.segment_logits` skips it (it does not change the logits).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Optional, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from .config import xyz_to_zyx

#: The encoder down-samples 3 times by 2 in every axis (192×192×64 → 24×24×8).
DOWNSAMPLE_FACTOR = 8
#: Inputs are zero-padded to at least this many voxels per axis (bottleneck ≥ 2 cells).
MIN_INPUT_SIZE = 16

FUSIONS = ("concat_residual", "concat", "none")
NORMS = ("instance", "group", "batch", "none")


@dataclass(frozen=True)
class NetConfig:
    """Architecture of :class:`CGCNet` (stored in every checkpoint, so a model rebuilds from the file).

    ``widths``: channels at full resolution, /2, /4 and /8 (the bottleneck). ``blocks``: residual
    blocks at each of those four levels (after the stem / after each stride-2 down-sampling conv).
    ``decoder_width``: channels of the single 3×3×3 conv the decoder runs at full resolution.

    Default sizing, measured before choosing (``segment_logits`` on one 4-channel 128×128×128 window,
    ``torch.set_num_threads(2)``, eval + inference_mode, median of 5 interleaved runs on the shared
    2-core box, 2026-11-28; numbers are indicative because other jobs were running):

    ====================================================  ======  =======
    widths / blocks / decoder_width / norm                params  forward
    ====================================================  ======  =======
    (8,16,32,64) / (0,1,1,2) / 8 / instance               0.93 M  0.79 s
    (8,16,32,64) / (0,1,1,1) / 8 / instance               0.71 M  0.73 s
    (8,16,32,64) / (0,1,1,2) / 8 / none                   0.93 M  0.68 s
    **(8,24,48,96) / (0,1,1,2) / 8 / instance** (default) 2.08 M  0.99 s
    (16,32,64,128) / (0,1,1,2) / 16 / instance            3.71 M  1.74 s
    (8,16,32,64) / (1,1,1,2) / 8 / instance               0.93 M  1.03 s
    ====================================================  ======  =======

    Full-resolution layers dominate CPU time (they touch every voxel: a residual block there costs
    +30 %, doubling the full-resolution width +75 %), so the default keeps full resolution to the
    stem conv (8 channels) and one 8-channel decoder conv, and spends parameters at /4 and /8 where
    voxels are 64–512× fewer (widening those levels 1.5× costs only +25 %). One whole brain box of
    140×170×140 in a single window took 4.6 s (larger windows are slower per voxel on this CPU, so
    128³ windows are the better tiling): a full case with 8 overlapping 128³ windows is ≈ 8 s on
    2 cores, inside the 20 s inference budget. Training memory at 192×192×64, batch 2: see
    docs/BENCHMARKS.md "train".

    ``fusion`` — how ``p⊗z`` and ``(1−p)⊗z`` enter the decoder (the paper leaves it open):
    ``"concat_residual"`` (default): ``z + conv1×1([p⊗z, (1−p)⊗z])`` — the decoder sees both parts
    as separate channels, and the residual keeps ``z`` itself available when ``p`` saturates early;
    ``"concat"``: ``conv1×1([p⊗z, (1−p)⊗z])`` only; ``"none"``: the decoder sees ``z`` (the coarse
    path then only shapes the encoder through its loss). Without the coarse path ``fusion`` is moot.
    """

    in_channels: int = 4
    widths: tuple[int, int, int, int] = (8, 24, 48, 96)
    blocks: tuple[int, int, int, int] = (0, 1, 1, 2)
    decoder_width: int = 8
    norm: str = "instance"
    coarse: bool = True
    fine: bool = True
    fusion: str = "concat_residual"
    patch_size_xyz: tuple[int, int, int] = (6, 6, 4)
    projection_dim: int = 64

    def __post_init__(self) -> None:
        if int(self.in_channels) < 1:
            raise ValueError(f"NetConfig.in_channels must be >= 1, got {self.in_channels}")
        if len(self.widths) != 4 or any(int(w) < 1 for w in self.widths):
            raise ValueError(f"NetConfig.widths must be 4 positive integers (full, /2, /4, /8), got {self.widths}")
        if len(self.blocks) != 4 or any(int(b) < 0 for b in self.blocks):
            raise ValueError(f"NetConfig.blocks must be 4 non-negative integers, got {self.blocks}")
        if int(self.decoder_width) < 1:
            raise ValueError(f"NetConfig.decoder_width must be >= 1, got {self.decoder_width}")
        if self.norm not in NORMS:
            raise ValueError(f"NetConfig.norm must be one of {NORMS}, got {self.norm!r}")
        if self.fusion not in FUSIONS:
            raise ValueError(f"NetConfig.fusion must be one of {FUSIONS}, got {self.fusion!r}")
        if len(self.patch_size_xyz) != 3 or any(int(v) < 1 for v in self.patch_size_xyz):
            raise ValueError(f"NetConfig.patch_size_xyz must be three positive integers x y z, got {self.patch_size_xyz}")
        if int(self.projection_dim) < 1:
            raise ValueError(f"NetConfig.projection_dim must be >= 1, got {self.projection_dim}")
        # Normalise to plain ints/tuples so that equality and checkpoints round-trip exactly.
        for name in ("widths", "blocks", "patch_size_xyz"):
            object.__setattr__(self, name, tuple(int(v) for v in getattr(self, name)))
        for name in ("in_channels", "decoder_width", "projection_dim"):
            object.__setattr__(self, name, int(getattr(self, name)))
        object.__setattr__(self, "coarse", bool(self.coarse))
        object.__setattr__(self, "fine", bool(self.fine))

    @property
    def patch_size_zyx(self) -> tuple[int, int, int]:
        """Mini-patch size on the bottleneck grid as ``(z, y, x)``."""
        return xyz_to_zyx(self.patch_size_xyz)


def _norm(kind: str, channels: int) -> nn.Module:
    if kind == "instance":
        return nn.InstanceNorm3d(channels, affine=True)
    if kind == "group":
        return nn.GroupNorm(min(8, channels), channels)
    if kind == "batch":
        return nn.BatchNorm3d(channels)
    return nn.Identity()


class ConvNormAct(nn.Sequential):
    def __init__(self, cin: int, cout: int, norm: str, kernel: int = 3, stride: int = 1) -> None:
        super().__init__(nn.Conv3d(cin, cout, kernel, stride=stride, padding=kernel // 2, bias=norm == "none"),
                         _norm(norm, cout), nn.LeakyReLU(0.01, inplace=True))


class ResBlock(nn.Module):
    """conv-norm-act, conv-norm, + identity, act (channels unchanged)."""

    def __init__(self, channels: int, norm: str) -> None:
        super().__init__()
        self.conv1 = ConvNormAct(channels, channels, norm)
        self.conv2 = nn.Conv3d(channels, channels, 3, padding=1, bias=norm == "none")
        self.norm2 = _norm(norm, channels)
        self.act = nn.LeakyReLU(0.01, inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(x + self.norm2(self.conv2(self.conv1(x))))


def pad_to_multiple(x: torch.Tensor, multiple: int,
                    min_size: int = 0) -> tuple[torch.Tensor, tuple[int, int, int]]:
    """Zero-pad the last three axes of ``(B, C, Z, Y, X)`` at their end up to a multiple of ``multiple``
    (and to at least ``min_size``).

    Zero is the background value of normalised images (and of P), so padding adds no fake contrast.
    Returns the padded tensor and the original ``(Z, Y, X)``.
    """
    size = tuple(int(s) for s in x.shape[-3:])
    pads = [max(-(-s // multiple) * multiple, min_size) - s for s in size]
    if any(pads):
        x = F.pad(x, (0, pads[2], 0, pads[1], 0, pads[0]))
    return x, size  # type: ignore[return-value]


def bottleneck_pad(x: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int, int]]:
    """The padding the network applies: a multiple of 8 and at least 16 voxels per axis (so the
    bottleneck has ≥ 2 cells per axis: instance norm needs more than one element)."""
    return pad_to_multiple(x, DOWNSAMPLE_FACTOR, MIN_INPUT_SIZE)


def downsample_to_bottleneck(prob: torch.Tensor) -> torch.Tensor:
    """P ``(B, 1, Z, Y, X)`` → its mean over each bottleneck cell ``(B, 1, ⌈Z/8⌉, ⌈Y/8⌉, ⌈X/8⌉)``
    (at least 2 per axis).

    Pads like the network does, so the result lies exactly on ``coarse_logits``' grid.
    """
    padded, _ = bottleneck_pad(prob)
    return F.avg_pool3d(padded, DOWNSAMPLE_FACTOR)


def patch_pool(t: torch.Tensor, patch_zyx: tuple[int, int, int]) -> torch.Tensor:
    """Mean of ``(B, C, z, y, x)`` over mini-patches → ``(B, N, C)`` with N patches in (z, y, x) order.

    When the grid is not a multiple of the patch, the last patch along an axis is smaller (only real
    cells are averaged), so odd input sizes still work. The same function pools features and the
    patch labels, so both always agree on the patch layout.
    """
    b, c = t.shape[:2]
    grid = t.shape[-3:]
    pads = [(-g) % p for g, p in zip(grid, patch_zyx)]
    if any(pads):
        ones = torch.ones((1, 1) + tuple(grid), dtype=t.dtype, device=t.device)
        pt = F.pad(t, (0, pads[2], 0, pads[1], 0, pads[0]))
        po = F.pad(ones, (0, pads[2], 0, pads[1], 0, pads[0]))
        sums = F.avg_pool3d(pt, patch_zyx)
        counts = F.avg_pool3d(po, patch_zyx)
        pooled = sums / counts
    else:
        pooled = F.avg_pool3d(t, patch_zyx)
    return pooled.reshape(b, c, -1).transpose(1, 2)


class CGCNet(nn.Module):
    """Residual 3-D encoder–decoder with the CGC module. See :class:`NetConfig`.

    ``forward(x)`` with ``x`` ``(B, C, Z, Y, X)`` (any size; zero-padded internally to a multiple of 8,
    at least 16, and cropped back) returns a dict:

    * ``"logits"`` ``(B, 1, Z, Y, X)``: lesion logit per voxel at input size;
    * ``"coarse_logits"`` ``(B, 1, ⌈Z/8⌉, ⌈Y/8⌉, ⌈X/8⌉)`` (≥ 2 per axis) on the padded bottleneck grid
      (:func:`downsample_to_bottleneck` maps P onto it), or ``None``
      when the coarse path is off;
    * ``"embeddings"`` ``(B, N, projection_dim)`` one un-normalised embedding per mini-patch
      (patches in (z, y, x) raster order, see :func:`patch_pool`), or ``None`` when the fine path is off.
    """

    def __init__(self, config: NetConfig = NetConfig()) -> None:
        super().__init__()
        self.config = config
        w, nb, norm = config.widths, config.blocks, config.norm
        self.stem = ConvNormAct(config.in_channels, w[0], norm)
        self.enc0 = nn.Sequential(*[ResBlock(w[0], norm) for _ in range(nb[0])])
        self.down = nn.ModuleList(ConvNormAct(w[i], w[i + 1], norm, stride=2) for i in range(3))
        self.enc = nn.ModuleList(nn.Sequential(*[ResBlock(w[i + 1], norm) for _ in range(nb[i + 1])])
                                 for i in range(3))
        bott = w[3]
        if config.coarse:
            self.coarse_block = ResBlock(bott, norm)
            self.coarse_head = nn.Conv3d(bott, 1, 1)
            if config.fusion != "none":
                self.fuse = nn.Conv3d(2 * bott, bott, 1)
        if config.fine:
            # Shallow MLP projection head on patch-averaged bottleneck features (SimCLR-style).
            self.projection = nn.Sequential(nn.Linear(bott, bott), nn.ReLU(inplace=True),
                                            nn.Linear(bott, config.projection_dim))
        # Decoder: /8 → /4 → /2 run a conv on [upsampled, skip]; full resolution is kept cheap (one
        # conv of decoder_width channels) because it touches every voxel.
        self.up_convs = nn.ModuleList([ConvNormAct(w[3] + w[2], w[2], norm),
                                       ConvNormAct(w[2] + w[1], w[1], norm)])
        self.full_reduce = nn.Conv3d(w[1], config.decoder_width, 1)
        self.full_conv = ConvNormAct(config.decoder_width + w[0], config.decoder_width, norm)
        self.head = nn.Conv3d(config.decoder_width, 1, 1)

    # -- pieces ---------------------------------------------------------------------------------
    def _encode(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        s0 = self.enc0(self.stem(x))
        skips = [s0]
        h = s0
        for down, enc in zip(self.down, self.enc):
            h = enc(down(h))
            skips.append(h)
        return h, skips[:3]

    def _enhance(self, z: torch.Tensor) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
        """Coarse path: coarse logit and the enhanced bottleneck the decoder up-samples."""
        if not self.config.coarse:
            return z, None
        coarse = self.coarse_head(self.coarse_block(z))
        if self.config.fusion == "none":
            return z, coarse
        p = torch.sigmoid(coarse)
        parts = self.fuse(torch.cat([p * z, (1.0 - p) * z], dim=1))
        enhanced = z + parts if self.config.fusion == "concat_residual" else parts
        return enhanced, coarse

    def _decode(self, h: torch.Tensor, skips: list[torch.Tensor]) -> torch.Tensor:
        for conv, skip in zip(self.up_convs, (skips[2], skips[1])):
            h = F.interpolate(h, size=skip.shape[-3:], mode="trilinear", align_corners=False)
            h = conv(torch.cat([h, skip], dim=1))
        # Reduce channels *before* up-sampling to full resolution: cheaper on every voxel.
        h = F.interpolate(self.full_reduce(h), size=skips[0].shape[-3:], mode="trilinear", align_corners=False)
        h = self.full_conv(torch.cat([h, skips[0]], dim=1))
        return self.head(h)

    def embed_patches(self, z: torch.Tensor) -> torch.Tensor:
        """Bottleneck ``(B, C, z, y, x)`` → patch embeddings ``(B, N, projection_dim)``."""
        return self.projection(patch_pool(z, self.config.patch_size_zyx))

    # -- public ---------------------------------------------------------------------------------
    def _check_input(self, x: torch.Tensor) -> None:
        if x.ndim != 5 or x.shape[1] != self.config.in_channels:
            raise ValueError(f"CGCNet expects (B, {self.config.in_channels}, Z, Y, X), got {tuple(x.shape)}")

    def forward(self, x: torch.Tensor) -> dict:
        self._check_input(x)
        xp, size = bottleneck_pad(x)
        z, skips = self._encode(xp)
        enhanced, coarse = self._enhance(z)
        logits = self._decode(enhanced, skips)[..., :size[0], :size[1], :size[2]]
        embeddings = self.embed_patches(z) if self.config.fine else None
        return {"logits": logits, "coarse_logits": coarse, "embeddings": embeddings}

    def segment_logits(self, x: torch.Tensor) -> torch.Tensor:
        """Lesion logits ``(B, 1, Z, Y, X)`` only — the inference path (no projection head)."""
        self._check_input(x)
        xp, size = bottleneck_pad(x)
        z, skips = self._encode(xp)
        enhanced, _ = self._enhance(z)
        return self._decode(enhanced, skips)[..., :size[0], :size[1], :size[2]]


def count_parameters(net: nn.Module) -> int:
    return sum(p.numel() for p in net.parameters())


def logit_of_mean_probability(logits: Iterable[torch.Tensor]) -> torch.Tensor:
    """Logits of the mean of ``sigmoid(logits)`` over several predictions of one ``(B, 1, Z, Y, X)`` batch,
    in float32: probabilities, not logits, are averaged, so one confident prediction cannot outvote the
    others, and a sigmoid of the result gives that mean back (to float32 rounding near 0 and 1)."""
    total, n = None, 0
    for lg in logits:
        prob = torch.sigmoid(lg.float())
        total, n = (prob if total is None else total + prob), n + 1
    return torch.logit(total / n, eps=1e-7)


class CGCEnsemble(nn.Module):
    """Several :class:`CGCNet` of one configuration (e.g. the same recipe trained with different seeds) as one
    inference model: :meth:`segment_logits` returns the logit of the **mean of the members' probabilities**.

    Probabilities, not logits, are averaged (as test-time mirroring does), so one confident member cannot
    outvote the others. The sliding window's Gaussian blending and the resampling back to the input grid are
    linear in the probabilities, so the whole-case map equals the mean of the members' whole-case maps (to
    float32 rounding): what protocol cgc-v28 measured. Inference only: training continues one member.
    """

    def __init__(self, members: Sequence[CGCNet]) -> None:
        super().__init__()
        members = list(members)
        if len(members) < 2:
            raise ValueError(f"an ensemble needs at least 2 members, got {len(members)}")
        if any(m.config != members[0].config for m in members[1:]):
            raise ValueError("ensemble members must share one network configuration")
        self.members = nn.ModuleList(members)
        self.config = members[0].config

    def segment_logits(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, C, Z, Y, X)`` → logits ``(B, 1, Z, Y, X)`` of the members' mean probability (float32)."""
        return logit_of_mean_probability(m.segment_logits(x) for m in self.members)

    def forward(self, x: torch.Tensor) -> dict:
        """Only the lesion logits (``"coarse_logits"`` and ``"embeddings"`` are None): an ensemble is not trained."""
        return {"logits": self.segment_logits(x), "coarse_logits": None, "embeddings": None}
