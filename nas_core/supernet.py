"""The weight-sharing supernet (§4): one module holding the weights of every subnet.

How the choices share weights:

* **width / expansion** - channel slicing: a subnet uses the first ``c`` output channels
  (and the first ``c_in`` input channels) of the largest layer.
* **kernel** - the 5x5 kernels' centre 3x3 serves ``k=3`` (centre cropping, as OFA).
* **dual FFN** - unified and fused FFNs have *separate* weights (§4 "Dual feedforward
  network", Suppl. S2); only the active one runs.
* **MHSA** - weight entangled (AutoFormer): Q/K have fixed dims, so attention maps are shared;
  the value dim per head (``value_ratio * key_dim``) is sliced per head. Value channels are
  stored *j-major* (channel ``j * heads + h``), so every value ratio is a contiguous prefix:
  a plain slice, whose BatchNorm running statistics update in place. Extraction permutes
  them to timm's head-major layout (``h * d + j``).
* **ESHA** (extended space only) - one ESHA per width choice at every attention position:
  its grouped projection's groups change with the width, so width slices of one layer
  would not be the static layer; like the dual FFN, only the active one runs. The layer
  scale is sliced as the MHSA's.
* **activation** - GELU/ReLU switch per layer; no weights.
* **BatchNorm** - one set of statistics per layer, sliced like the channels. Evaluate an
  inherited subnet after recalibrating them (``nas_core.train.recalibrate_bn``).

``extract(arch)`` copies the active slices into a :class:`~nas_core.subnet.SubnetModel`
(no dynamic code left, exportable) and ``load_subnet(arch, model)`` does the inverse, which
is how timm's EfficientFormerV2 weights warm-start the supernet.
"""
from __future__ import annotations

import math
from typing import Iterator, Sequence

import torch
import torch.nn.functional as F
from timm.layers import drop_path
from torch import nn

from .search_space import ArchConfig, AttnConfig, BlockConfig, FFNConfig, SearchSpace
from .subnet import ESHA, LAYER_SCALE_INIT, SubnetModel, attention_bias_idxs, conv_padding, stage_resolutions

_ACTS = {"gelu": F.gelu, "relu": F.relu}


# --------------------------------------------------------------------------- weight transfer
# A transfer is a list of (static tensor, supernet tensor, per-dimension index tensors):
# read with advanced indexing for extraction, written the same way to load a subnet back.
Transfer = list[tuple[torch.Tensor, torch.Tensor, tuple[torch.Tensor, ...]]]


def _grid(indices: Sequence[torch.Tensor]) -> tuple[torch.Tensor, ...]:
    n = len(indices)
    return tuple(idx.view([-1 if i == d else 1 for i in range(n)]) for d, idx in enumerate(indices))


def _arange(n: int) -> torch.Tensor:
    return torch.arange(n)


def _kernel_index(kernel: int, kernel_max: int) -> torch.Tensor:
    offset = (kernel_max - kernel) // 2
    return torch.arange(offset, offset + kernel)


def value_channel_index(d: int, heads: int) -> torch.Tensor:
    """Supernet value channel feeding static channel ``h * d + j`` (it is ``j * heads + h``)."""
    return (torch.arange(d)[None, :] * heads + torch.arange(heads)[:, None]).reshape(-1)


@torch.no_grad()
def apply_transfer(pairs: Transfer, to_static: bool) -> None:
    for static, dynamic, indices in pairs:
        if not indices:  # scalars (num_batches_tracked)
            (static if to_static else dynamic).copy_(dynamic if to_static else static)
            continue
        if static.shape != tuple(len(i) for i in indices):
            raise ValueError(f"shape mismatch: static {tuple(static.shape)} vs slice "
                             f"{tuple(len(i) for i in indices)}")
        if to_static:
            static.copy_(dynamic[_grid(indices)])
        else:
            dynamic[_grid(indices)] = static.to(dynamic.dtype)


# --------------------------------------------------------------------------- dynamic layers
class DynamicConvNorm(nn.Module):
    """Conv -> BN (-> act) over a slice of the largest layer's channels and kernel."""

    def __init__(self, cin_max: int, cout_max: int, kernel_max: int = 1, stride: int = 1,
                 depthwise: bool = False, norm: bool = True):
        super().__init__()
        self.kernel_max, self.stride, self.depthwise = kernel_max, stride, depthwise
        self.conv = nn.Conv2d(cin_max, cout_max, kernel_max, stride, groups=cout_max if depthwise else 1)
        self.bn = nn.BatchNorm2d(cout_max) if norm else None

    def forward(self, x: torch.Tensor, cout: int, kernel: int | None = None, act: str | None = None):
        kernel = kernel or self.kernel_max
        w = self.conv.weight[:cout] if self.depthwise else self.conv.weight[:cout, : x.shape[1]]
        if kernel != self.kernel_max:
            o = (self.kernel_max - kernel) // 2
            w = w[:, :, o:o + kernel, o:o + kernel]
        x = F.conv2d(x, w, self.conv.bias[:cout], self.stride, conv_padding(kernel, self.stride),
                     groups=cout if self.depthwise else 1)
        if self.bn is not None:
            x = self._batch_norm(x, cout)
        return _ACTS[act](x) if act else x

    def _batch_norm(self, x: torch.Tensor, c: int) -> torch.Tensor:
        bn = self.bn
        momentum = bn.momentum
        if bn.training:
            bn.num_batches_tracked.add_(1)
            if momentum is None:  # cumulative average: used by BN recalibration
                momentum = 1.0 / float(bn.num_batches_tracked)
        # Slices of the running buffers are views, so batch_norm updates them in place.
        return F.batch_norm(x, bn.running_mean[:c], bn.running_var[:c], bn.weight[:c], bn.bias[:c],
                            bn.training, momentum or 0.0, bn.eps)

    def transfer(self, static: nn.Module, out_index: torch.Tensor, in_index: torch.Tensor | None,
                 kernel: int | None = None, prefix_conv: str = "conv", prefix_bn: str = "bn") -> Transfer:
        """Pairs for a static ``ConvNorm`` (or bare ``nn.Conv2d`` when ``norm=False``)."""
        conv = getattr(static, prefix_conv) if self.bn is not None else static
        k = _kernel_index(kernel or self.kernel_max, self.kernel_max)
        in_index = _arange(1) if self.depthwise else in_index
        pairs: Transfer = [(conv.weight, self.conv.weight, (out_index, in_index, k, k)),
                           (conv.bias, self.conv.bias, (out_index,))]
        if self.bn is not None:
            bn = getattr(static, prefix_bn)
            pairs += [(getattr(bn, n), getattr(self.bn, n), (out_index,))
                      for n in ("weight", "bias", "running_mean", "running_var")]
            pairs.append((bn.num_batches_tracked, self.bn.num_batches_tracked, ()))
        return pairs


class DynamicStem(nn.Module):
    def __init__(self, width_max: int):
        super().__init__()
        self.conv1 = DynamicConvNorm(3, width_max // 2, 3, 2)
        self.conv2 = DynamicConvNorm(width_max // 2, width_max, 3, 2)

    def forward(self, x, width: int, act: str):
        return self.conv2(self.conv1(x, width // 2, 3, act), width, 3, act)

    def transfer(self, static, width: int) -> Transfer:
        return (self.conv1.transfer(static.conv1, _arange(width // 2), _arange(3))
                + self.conv2.transfer(static.conv2, _arange(width), _arange(width // 2)))


class DynamicUnifiedFFN(nn.Module):
    def __init__(self, dim_max: int, expansion_max: int, kernel_max: int):
        super().__init__()
        hidden = dim_max * expansion_max
        self.fc1 = DynamicConvNorm(dim_max, hidden, 1)
        self.mid = DynamicConvNorm(hidden, hidden, kernel_max, depthwise=True)
        self.fc2 = DynamicConvNorm(hidden, dim_max, 1)
        self.gamma = nn.Parameter(LAYER_SCALE_INIT * torch.ones(dim_max))  # layer scale

    def forward(self, x, cfg: FFNConfig):
        dim, hidden = x.shape[1], x.shape[1] * cfg.expansion
        x = self.mid(self.fc1(x, hidden, 1, cfg.act), hidden, cfg.kernel, cfg.act)
        return self.fc2(x, dim, 1) * self.gamma[:dim].view(1, -1, 1, 1)

    def transfer(self, static_mlp, static_ls, dim: int, cfg: FFNConfig) -> Transfer:
        d, h = _arange(dim), _arange(dim * cfg.expansion)
        return (self.fc1.transfer(static_mlp.fc1, h, d) + self.mid.transfer(static_mlp.mid, h, None, cfg.kernel)
                + self.fc2.transfer(static_mlp.fc2, d, h) + [(static_ls.gamma, self.gamma, (d,))])


class DynamicFusedFFN(nn.Module):
    def __init__(self, dim_max: int, expansion_max: int, kernel_max: int):
        super().__init__()
        hidden = dim_max * expansion_max
        self.conv = DynamicConvNorm(dim_max, hidden, kernel_max)
        self.fc2 = DynamicConvNorm(hidden, dim_max, 1)
        self.gamma = nn.Parameter(LAYER_SCALE_INIT * torch.ones(dim_max))

    def forward(self, x, cfg: FFNConfig):
        dim = x.shape[1]
        x = self.conv(x, dim * cfg.expansion, cfg.kernel, cfg.act)
        return self.fc2(x, dim, 1) * self.gamma[:dim].view(1, -1, 1, 1)

    def transfer(self, static_mlp, static_ls, dim: int, cfg: FFNConfig) -> Transfer:
        d, h = _arange(dim), _arange(dim * cfg.expansion)
        return (self.conv.transfer(static_mlp.conv, h, d, cfg.kernel) + self.fc2.transfer(static_mlp.fc2, d, h)
                + [(static_ls.gamma, self.gamma, (d,))])


class DualFFN(nn.Module):
    """Separate unified and fused FFN weights; the architecture picks one per block."""

    def __init__(self, dim_max: int, expansion_max: int, kernel_max: int):
        super().__init__()
        self.unified = DynamicUnifiedFFN(dim_max, expansion_max, kernel_max)
        self.fused = DynamicFusedFFN(dim_max, expansion_max, kernel_max)

    def branch(self, cfg: FFNConfig) -> nn.Module:
        return self.unified if cfg.type == "unified" else self.fused

    def forward(self, x, cfg: FFNConfig):
        return self.branch(cfg)(x, cfg)


def resize_attention_bias_table(table: torch.Tensor, new_res: int) -> torch.Tensor:
    """An MHSA's attention-bias table for another token grid: ``(heads, r*r)`` ->
    ``(heads, new_res*new_res)``, resized bicubically as a ``heads``-channel r x r image of
    relative offsets (the table itself when the size matches). Used to extract or export a
    subnet at another resolution and to load timm weights trained at another one."""
    heads, n = table.shape
    res = int(round(math.sqrt(n)))
    if res == new_res:
        return table
    grid = table.reshape(1, heads, res, res)
    return F.interpolate(grid, size=(new_res, new_res), mode="bicubic", align_corners=False).reshape(heads, -1)


class DynamicAttention2d(nn.Module):
    """Weight-entangled EfficientFormerV2 MHSA (see module docstring for the value layout)."""

    def __init__(self, dim_max: int, resolution: int, stride: int | None, key_dim: int, num_heads: int,
                 value_ratio_max: int):
        super().__init__()
        self.key_dim, self.num_heads, self.scale = key_dim, num_heads, key_dim ** -0.5
        self.stride = stride
        self.resolution = math.ceil(resolution / stride) if stride else resolution
        self.N = self.resolution ** 2
        kh, dh_max = key_dim * num_heads, value_ratio_max * key_dim * num_heads
        self.stride_conv = DynamicConvNorm(dim_max, dim_max, 3, stride, depthwise=True) if stride else None
        self.q = DynamicConvNorm(dim_max, kh)
        self.k = DynamicConvNorm(dim_max, kh)
        self.v = DynamicConvNorm(dim_max, dh_max)
        self.v_local = DynamicConvNorm(dh_max, dh_max, 3, depthwise=True)
        self.talking_head1 = nn.Conv2d(num_heads, num_heads, 1)
        self.talking_head2 = nn.Conv2d(num_heads, num_heads, 1)
        self.proj = DynamicConvNorm(dh_max, dim_max)
        self.attention_biases = nn.Parameter(torch.zeros(num_heads, self.N))
        self.register_buffer("attention_bias_idxs", attention_bias_idxs(self.resolution, self.resolution),
                             persistent=False)
        self.gamma = nn.Parameter(LAYER_SCALE_INIT * torch.ones(dim_max))  # layer scale ls1

    def forward(self, x, cfg: AttnConfig):
        B, dim = x.shape[:2]
        heads, d = self.num_heads, cfg.value_ratio * self.key_dim
        if self.stride_conv is not None:
            x = self.stride_conv(x, dim, 3)
        q = self.q(x, heads * self.key_dim).reshape(B, heads, -1, self.N).permute(0, 1, 3, 2)
        k = self.k(x, heads * self.key_dim).reshape(B, heads, -1, self.N)
        v = self.v(x, d * heads)
        v_local = self.v_local(v, d * heads, 3)
        v = v.reshape(B, d, heads, self.N).permute(0, 2, 3, 1)  # j-major channels -> B,h,N,d
        attn = (q @ k) * self.scale + self.attention_biases[:, self.attention_bias_idxs]
        attn = self.talking_head2(self.talking_head1(attn).softmax(dim=-1))
        x = (attn @ v).permute(0, 3, 1, 2).reshape(B, d * heads, self.resolution, self.resolution) + v_local
        if self.stride:
            x = F.interpolate(x, scale_factor=self.stride, mode="bilinear", align_corners=False)
        x = self.proj(_ACTS[cfg.act](x), dim)
        return x * self.gamma[:dim].view(1, -1, 1, 1)

    def transfer(self, static, static_ls, dim: int, cfg: AttnConfig) -> Transfer:
        d_idx, kh = _arange(dim), _arange(self.num_heads * self.key_dim)
        val = value_channel_index(cfg.value_ratio * self.key_dim, self.num_heads)
        pairs = self.q.transfer(static.q, kh, d_idx) + self.k.transfer(static.k, kh, d_idx)
        pairs += self.v.transfer(static.v, val, d_idx) + self.v_local.transfer(static.v_local, val, None)
        pairs += self.proj.transfer(static.proj, d_idx, val)
        if self.stride_conv is not None:
            pairs += self.stride_conv.transfer(static.stride_conv, d_idx, None)
        for name in ("talking_head1", "talking_head2"):
            s, t = getattr(static, name), getattr(self, name)
            pairs += [(s.weight, t.weight, tuple(_arange(n) for n in t.weight.shape)),
                      (s.bias, t.bias, (_arange(self.num_heads),))]
        return pairs + [(static_ls.gamma, self.gamma, (d_idx,))]


class DynamicAttentionDownsample(nn.Module):
    """Embed 3: EfficientFormerV2's attention downsampling plus the 3x3 stride-2 conv branch."""

    def __init__(self, cin_max: int, cout_max: int, resolution: int, key_dim: int, num_heads: int,
                 value_ratio_max: int):
        super().__init__()
        self.key_dim, self.num_heads, self.scale = key_dim, num_heads, key_dim ** -0.5
        self.resolution, self.resolution2 = resolution, math.ceil(resolution / 2)
        self.N, self.N2 = resolution ** 2, self.resolution2 ** 2
        kh, dh_max = key_dim * num_heads, value_ratio_max * key_dim * num_heads
        self.conv = DynamicConvNorm(cin_max, cout_max, 3, 2)
        self.q_local = DynamicConvNorm(cin_max, cin_max, 3, 2, depthwise=True, norm=False)
        self.q_proj = DynamicConvNorm(cin_max, kh)
        self.k = DynamicConvNorm(cin_max, kh)
        self.v = DynamicConvNorm(cin_max, dh_max)
        self.v_local = DynamicConvNorm(dh_max, dh_max, 3, 2, depthwise=True)
        self.proj = DynamicConvNorm(dh_max, cout_max)
        self.attention_biases = nn.Parameter(torch.zeros(num_heads, self.N))
        self.register_buffer("attention_bias_idxs",
                             attention_bias_idxs(self.resolution2, resolution, query_step=2), persistent=False)

    def forward(self, x, cout: int, cfg: AttnConfig):
        B, cin = x.shape[:2]
        heads, d, kh = self.num_heads, cfg.value_ratio * self.key_dim, self.num_heads * self.key_dim
        q = self.q_proj(self.q_local(x, cin) + x[:, :, ::2, ::2], kh)
        q = q.reshape(B, heads, -1, self.N2).permute(0, 1, 3, 2)
        k = self.k(x, kh).reshape(B, heads, -1, self.N)
        v = self.v(x, d * heads)
        v_local = self.v_local(v, d * heads, 3)
        v = v.reshape(B, d, heads, self.N).permute(0, 2, 3, 1)
        attn = ((q @ k) * self.scale + self.attention_biases[:, self.attention_bias_idxs]).softmax(dim=-1)
        out = (attn @ v).permute(0, 3, 1, 2).reshape(B, d * heads, self.resolution2, self.resolution2) + v_local
        return self.conv(x, cout, 3) + self.proj(_ACTS[cfg.act](out), cout)

    def transfer(self, static, cin: int, cout: int, cfg: AttnConfig) -> Transfer:
        i_idx, o_idx, kh = _arange(cin), _arange(cout), _arange(self.num_heads * self.key_dim)
        val = value_channel_index(cfg.value_ratio * self.key_dim, self.num_heads)
        attn = static.attn
        return (self.conv.transfer(static.conv, o_idx, i_idx)
                + self.q_local.transfer(attn.q.local, i_idx, None)
                + self.q_proj.transfer(attn.q.proj, kh, i_idx)
                + self.k.transfer(attn.k, kh, i_idx)
                + self.v.transfer(attn.v, val, i_idx)
                + self.v_local.transfer(attn.v_local, val, None)
                + self.proj.transfer(attn.proj, o_idx, val))


class DynamicESHA(nn.Module):
    """The extended space's ESHA at one attention position: one module per width choice."""

    def __init__(self, widths: Sequence[int], sr: int):
        super().__init__()
        self.by_width = nn.ModuleDict({str(w): ESHA(w, sr=sr) for w in widths})
        self.gamma = nn.Parameter(LAYER_SCALE_INIT * torch.ones(max(widths)))  # layer scale ls1

    def forward(self, x, cfg: AttnConfig):
        dim = x.shape[1]
        return self.by_width[str(dim)].mix(x, _ACTS[cfg.act]) * self.gamma[:dim].view(1, -1, 1, 1)

    def transfer(self, static, static_ls, dim: int, cfg: AttnConfig) -> Transfer:
        dynamic = self.by_width[str(dim)]
        theirs = dict(static.named_parameters()) | dict(static.named_buffers())
        pairs: Transfer = [(theirs[name], tensor, tuple(_arange(n) for n in tensor.shape))
                           for name, tensor in [*dynamic.named_parameters(), *dynamic.named_buffers()]]
        return pairs + [(static_ls.gamma, self.gamma, (_arange(dim),))]


class DynamicBlock(nn.Module):
    """[optional MHSA (or ESHA)] + dual FFN, each a residual branch with layer scale and drop path."""

    def __init__(self, dim_max: int, space: SearchSpace, with_mhsa: bool, resolution: int,
                 stride: int | None, stage: int | None = None):
        super().__init__()
        spec = space.spec
        stage_spec = spec.stages[stage - 1] if stage else None
        self.token_mixer = (DynamicAttention2d(dim_max, resolution, stride, spec.mhsa_key_dim, spec.mhsa_heads,
                                               max(spec.value_ratios)) if with_mhsa else None)
        self.esha = (DynamicESHA(stage_spec.widths, spec.esha_sr_of(stage))
                     if with_mhsa and stage_spec is not None and "esha" in spec.attention_types else None)
        self.mlp = DualFFN(dim_max, max(spec.expansions), max(spec.kernels))

    def attention(self, cfg: AttnConfig) -> nn.Module:
        return self.esha if cfg.type == "esha" else self.token_mixer

    def forward(self, x, cfg: BlockConfig, ffn_drop: float = 0.0, mhsa_drop: float = 0.0):
        if cfg.mhsa is not None:
            x = x + drop_path(self.attention(cfg.mhsa)(x, cfg.mhsa), mhsa_drop, self.training)
        return x + drop_path(self.mlp(x, cfg.ffn), ffn_drop, self.training)

    def transfer(self, static, dim: int, cfg: BlockConfig) -> Transfer:
        pairs = self.mlp.branch(cfg.ffn).transfer(static.mlp, static.ls2, dim, cfg.ffn)
        if cfg.mhsa is not None:
            pairs += self.attention(cfg.mhsa).transfer(static.token_mixer, static.ls1, dim, cfg.mhsa)
        return pairs


class DynamicStage(nn.Module):
    def __init__(self, downsample: nn.Module | None, blocks: list[DynamicBlock]):
        super().__init__()
        self.downsample = downsample
        self.blocks = nn.ModuleList(blocks)


# --------------------------------------------------------------------------- the supernet
class Supernet(nn.Module):
    """Every subnet of a :class:`SearchSpace` in one module.

    >>> space = SearchSpace()
    >>> net = Supernet(space, num_classes=10, resolution=64)
    >>> arch = space.sample(seed=0)
    >>> net.set_active(arch)
    >>> net(torch.randn(2, 3, 64, 64)).shape
    torch.Size([2, 10])

    Drop path (training only, §4): the FFN of block ``j`` of a stage of depth ``D`` is dropped
    with probability ``ffn_drop_path * (j + 1) / D`` (the last FFN most often); every MHSA
    with the constant ``mhsa_drop_path``, so the number and position of MHSAs can be searched.
    """

    def __init__(self, space: SearchSpace | None = None, num_classes: int = 1000, resolution: int = 224,
                 distillation: bool = True, ffn_drop_path: float = 0.0, mhsa_drop_path: float = 0.0):
        super().__init__()
        if resolution % 32:
            raise ValueError(f"resolution must be a multiple of 32, got {resolution}")
        self.space = space or SearchSpace()
        spec = self.space.spec
        self.num_classes, self.resolution, self.distillation = num_classes, resolution, distillation
        self.ffn_drop_path, self.mhsa_drop_path = ffn_drop_path, mhsa_drop_path
        widths = [max(s.widths) for s in spec.stages]
        res = stage_resolutions(resolution, len(spec.stages))
        self.stem = DynamicStem(widths[0])
        stages = []
        for i, stage_spec in enumerate(spec.stages):
            down = None
            if i == 3:
                down = DynamicAttentionDownsample(widths[2], widths[3], res[2], spec.downsample_key_dim,
                                                  spec.mhsa_heads, max(spec.value_ratios))
            elif i > 0:
                down = DynamicConvNorm(widths[i - 1], widths[i], 3, 2)
            blocks = [DynamicBlock(widths[i], self.space, stage_spec.allows_mhsa, res[i], 2 if i == 2 else None,
                                   stage_spec.number) for _ in range(max(stage_spec.depths))]
            stages.append(DynamicStage(down, blocks))
        self.stages = nn.ModuleList(stages)
        self.norm = nn.BatchNorm2d(widths[-1])
        self.head = nn.Linear(widths[-1], num_classes)
        self.head_dist = nn.Linear(widths[-1], num_classes) if distillation else None
        self.distilled_training = False
        self.active_arch: ArchConfig = self.space.largest()
        self.apply(_init_weights)

    # ---- choosing a subnet
    def set_active(self, arch: ArchConfig) -> None:
        self.active_arch = self.space.validate(arch)

    # ---- forward
    def forward_features(self, x, arch: ArchConfig | None = None):
        arch = arch or self.active_arch
        x = self.stem(x, arch.stem_width, arch.stem_act)
        for i, (stage, cfg) in enumerate(zip(self.stages, arch.stages)):
            if i == 3:
                x = stage.downsample(x, cfg.width, arch.embed3_attn)
            elif i > 0:
                x = stage.downsample(x, cfg.width, 3)
            for j, block_cfg in enumerate(cfg.blocks):
                ffn_drop = self.ffn_drop_path * (j + 1) / cfg.depth
                x = stage.blocks[j](x, block_cfg, ffn_drop, self.mhsa_drop_path)
        return x

    def forward(self, x, arch: ArchConfig | None = None):
        x = self.forward_features(x, arch)
        c = x.shape[1]
        x = F.batch_norm(x, self.norm.running_mean[:c], self.norm.running_var[:c], self.norm.weight[:c],
                         self.norm.bias[:c], self.norm.training, self._norm_momentum(), self.norm.eps)
        x = x.mean((2, 3))
        cls = F.linear(x, self.head.weight[:, :c], self.head.bias)
        if self.head_dist is None:
            return cls
        dist = F.linear(x, self.head_dist.weight[:, :c], self.head_dist.bias)
        if self.distilled_training and self.training:
            return cls, dist
        return (cls + dist) / 2

    def _norm_momentum(self) -> float:
        if self.norm.training:
            self.norm.num_batches_tracked.add_(1)
            if self.norm.momentum is None:
                return 1.0 / float(self.norm.num_batches_tracked)
        return self.norm.momentum or 0.0

    # ---- subnet extraction and loading
    def _transfer(self, arch: ArchConfig, model: SubnetModel) -> Transfer:
        pairs = self.stem.transfer(model.stem, arch.stem_width)
        prev = arch.stem_width
        for i, (stage, cfg) in enumerate(zip(self.stages, arch.stages)):
            static_stage = model.stages[i]
            if i == 3:
                pairs += stage.downsample.transfer(static_stage.downsample, prev, cfg.width, arch.embed3_attn)
            elif i > 0:
                pairs += stage.downsample.transfer(static_stage.downsample.conv, _arange(cfg.width), _arange(prev))
            for j, block_cfg in enumerate(cfg.blocks):
                pairs += stage.blocks[j].transfer(static_stage.blocks[j], cfg.width, block_cfg)
            prev = cfg.width
        c = _arange(prev)
        pairs += [(getattr(model.norm, n), getattr(self.norm, n), (c,))
                  for n in ("weight", "bias", "running_mean", "running_var")]
        pairs.append((model.norm.num_batches_tracked, self.norm.num_batches_tracked, ()))
        classes = _arange(self.num_classes)
        heads = [("head", self.head)] + ([("head_dist", self.head_dist)] if self.head_dist is not None else [])
        for name, layer in heads:
            pairs += [(getattr(model, name).weight, layer.weight, (classes, c)),
                      (getattr(model, name).bias, layer.bias, (classes,))]
        return pairs

    def _attention_pairs(self, arch: ArchConfig, model: SubnetModel) -> Iterator[tuple[nn.Module, nn.Module]]:
        for i, (stage, cfg) in enumerate(zip(self.stages, arch.stages)):
            if i == 3:
                yield model.stages[3].downsample.attn, stage.downsample
            for j, block_cfg in enumerate(cfg.blocks):
                if block_cfg.mhsa is not None and block_cfg.mhsa.type == "mhsa":  # ESHA has no bias table
                    yield model.stages[i].blocks[j].token_mixer, stage.blocks[j].token_mixer

    @torch.no_grad()
    def extract(self, arch: ArchConfig | None = None, resolution: int | None = None) -> SubnetModel:
        """A standalone :class:`SubnetModel` with this subnet's weights copied (no slicing left).

        ``resolution`` other than the supernet's resizes the attention-bias tables bicubically
        (e.g. to export at 224 a subnet trained at a lower resolution).
        """
        arch = self.space.validate(arch or self.active_arch)
        resolution = resolution or self.resolution
        model = SubnetModel(arch, self.num_classes, resolution, self.distillation, spec=self.space.spec)
        apply_transfer(self._transfer(arch, model), to_static=True)
        for static_attn, dynamic_attn in self._attention_pairs(arch, model):
            res = int(round(math.sqrt(static_attn.attention_biases.shape[1])))
            static_attn.attention_biases.copy_(resize_attention_bias_table(dynamic_attn.attention_biases, res))
        model.train(self.training)
        return model

    @torch.no_grad()
    def load_subnet(self, arch: ArchConfig, model: SubnetModel) -> None:
        """Write a standalone subnet's weights into this supernet's slices (inverse of extract)."""
        arch = self.space.validate(arch)
        if model.resolution != self.resolution:
            raise ValueError(f"subnet built at resolution {model.resolution}, supernet at {self.resolution}")
        apply_transfer(self._transfer(arch, model), to_static=False)
        for static_attn, dynamic_attn in self._attention_pairs(arch, model):
            dynamic_attn.attention_biases.copy_(static_attn.attention_biases)


def load_timm_efficientformerv2(supernet: Supernet, state_dict: dict | nn.Module) -> ArchConfig:
    """Warm-start the supernet from timm ``efficientformerv2_s0`` weights.

    Accepts a timm model or its state dict (e.g. ``torch.load('efficientformerv2_s0.pth')``).
    The classifier is copied only when its shape matches (same class count); attention-bias
    tables are resized when the supernet runs at another resolution. Returns the S0 arch.
    """
    if isinstance(state_dict, nn.Module):
        state_dict = state_dict.state_dict()
    arch = supernet.space.preset("efficientformerv2_s0")
    model = supernet.extract(arch)  # starts from the supernet's own weights (and classifier)
    own = model.state_dict()
    incoming = {}
    for key, value in state_dict.items():
        if key not in own:
            raise KeyError(f"{key}: not a parameter of efficientformerv2_s0 (is this a timm S0 checkpoint?)")
        if key.endswith("attention_biases") and value.shape != own[key].shape:
            value = resize_attention_bias_table(value, int(round(math.sqrt(own[key].shape[1]))))
        if key.startswith(("head.", "head_dist.")) and value.shape != own[key].shape:
            continue  # another label set: keep the supernet's classifier
        incoming[key] = value
    missing = set(own) - set(incoming) - {k for k in own if k.startswith(("head.", "head_dist."))}
    if missing:
        raise KeyError(f"checkpoint lacks {len(missing)} S0 tensors, e.g. {sorted(missing)[:3]}")
    model.load_state_dict(incoming, strict=False)
    supernet.load_subnet(arch, model)
    return arch


def _init_weights(m: nn.Module) -> None:
    if isinstance(m, nn.Linear):
        nn.init.trunc_normal_(m.weight, std=0.02)
        nn.init.zeros_(m.bias)
