"""Standalone subnet modules: an :class:`ArchConfig` as an ordinary PyTorch model.

No dynamic slicing: every layer has exactly the shape the architecture asks for, so the
model exports to ONNX / OpenVINO like any hand-written network. Module and parameter names
mirror timm's ``EfficientFormerV2`` (``stem.conv1.conv``, ``stages.2.blocks.4.token_mixer.q.bn``,
``ls2.gamma``, ``head_dist`` ...), so the ``efficientformerv2_s0`` preset loads timm's state
dict unchanged. The fused FFN, which timm does not have, is ``mlp.conv`` (full kxk conv +
BN + act) then ``mlp.fc2`` (1x1 conv + BN).

The blocks are also the unit of the latency lookup table: :func:`build_block` builds any
one of them alone (see ``nas_core.block_catalog``).
"""
from __future__ import annotations

import math

import torch
from timm.layers import DropPath
from torch import nn

from .search_space import (ESHA_GROUPS, ESHA_QK_DIM, ESHA_VALUE_RATIO, ArchConfig, AttnConfig, FFNConfig, SpaceSpec,
                           projection_groups)

LAYER_SCALE_INIT = 1e-5


def make_act(name: str) -> nn.Module:
    if name == "gelu":
        return nn.GELU()  # exact erf GELU, as timm's EfficientFormerV2
    if name == "relu":
        return nn.ReLU()
    raise ValueError(f"unknown activation {name!r}; allowed: gelu, relu")


def conv_padding(kernel: int, stride: int) -> int:
    return ((stride - 1) + (kernel - 1)) // 2  # timm's get_padding for dilation 1


class ConvNorm(nn.Module):
    """Conv (with bias, as timm) -> BatchNorm -> optional activation.

    ``padding`` defaults to timm's; 0 gives a patch-wise conv (kernel = stride), as spatial
    reduction wants."""

    def __init__(self, cin: int, cout: int, kernel: int = 1, stride: int = 1, groups: int = 1,
                 act: str | None = None, padding: int | None = None):
        super().__init__()
        padding = conv_padding(kernel, stride) if padding is None else padding
        self.conv = nn.Conv2d(cin, cout, kernel, stride, padding, groups=groups, bias=True)
        self.bn = nn.BatchNorm2d(cout)
        self.act = make_act(act) if act else nn.Identity()

    def forward(self, x):
        return self.act(self.bn(self.conv(x)))


class LayerScale2d(nn.Module):
    def __init__(self, dim: int, init_value: float = LAYER_SCALE_INIT):
        super().__init__()
        self.gamma = nn.Parameter(init_value * torch.ones(dim))

    def forward(self, x):
        return x * self.gamma.view(1, -1, 1, 1)


class Stem(nn.Module):
    """Two 3x3 stride-2 convs (EfficientFormerV2's Stem4): 3 -> width/2 -> width."""

    def __init__(self, width: int, act: str):
        super().__init__()
        self.conv1 = ConvNorm(3, width // 2, 3, 2, act=act)
        self.conv2 = ConvNorm(width // 2, width, 3, 2, act=act)

    def forward(self, x):
        return self.conv2(self.conv1(x))


class UnifiedFFN(nn.Module):
    """1x1 expand -> depthwise kxk -> 1x1 project (timm's ConvMlpWithNorm, mid_conv=True)."""

    def __init__(self, dim: int, cfg: FFNConfig):
        super().__init__()
        hidden = dim * cfg.expansion
        self.fc1 = ConvNorm(dim, hidden, 1, act=cfg.act)
        self.mid = ConvNorm(hidden, hidden, cfg.kernel, groups=hidden, act=cfg.act)
        self.fc2 = ConvNorm(hidden, dim, 1)

    def forward(self, x):
        return self.fc2(self.mid(self.fc1(x)))


class FusedFFN(nn.Module):
    """Full kxk expand conv -> 1x1 project: more MACs, but compute-bound (§3)."""

    def __init__(self, dim: int, cfg: FFNConfig):
        super().__init__()
        hidden = dim * cfg.expansion
        self.conv = ConvNorm(dim, hidden, cfg.kernel, act=cfg.act)
        self.fc2 = ConvNorm(hidden, dim, 1)

    def forward(self, x):
        return self.fc2(self.conv(x))


def build_ffn(dim: int, cfg: FFNConfig) -> nn.Module:
    return UnifiedFFN(dim, cfg) if cfg.type == "unified" else FusedFFN(dim, cfg)


def attention_bias_idxs(query_res: int, key_res: int, query_step: int = 1) -> torch.Tensor:
    """|dy| * key_res + |dx| between every query and key position (row-major), as timm."""
    kpos = torch.stack(torch.meshgrid(torch.arange(key_res), torch.arange(key_res), indexing="ij")).flatten(1)
    qpos = torch.stack(torch.meshgrid(torch.arange(0, key_res, query_step)[:query_res],
                                      torch.arange(0, key_res, query_step)[:query_res],
                                      indexing="ij")).flatten(1)
    rel = (qpos[..., :, None] - kpos[..., None, :]).abs()
    return rel[0] * key_res + rel[1]


class Attention2d(nn.Module):
    """EfficientFormerV2's MHSA: talking heads, attention biases, local value conv.

    ``value_ratio`` sets the value dim per head (``value_ratio * key_dim``); Q/K are fixed.
    With ``stride=2`` (stage 3) attention runs at half resolution and is upsampled back.
    """

    def __init__(self, dim: int, resolution: int, cfg: AttnConfig, stride: int | None = None,
                 key_dim: int = 32, num_heads: int = 8):
        super().__init__()
        self.num_heads, self.key_dim = num_heads, key_dim
        self.scale = key_dim ** -0.5
        self.d = cfg.value_ratio * key_dim
        self.dh = self.d * num_heads
        if stride is not None:
            resolution = math.ceil(resolution / stride)
            self.stride_conv = ConvNorm(dim, dim, 3, stride, groups=dim)
            self.upsample = nn.Upsample(scale_factor=stride, mode="bilinear")
        else:
            self.stride_conv = None
            self.upsample = None
        self.resolution = resolution
        self.N = resolution * resolution
        kh = key_dim * num_heads
        self.q = ConvNorm(dim, kh)
        self.k = ConvNorm(dim, kh)
        self.v = ConvNorm(dim, self.dh)
        self.v_local = ConvNorm(self.dh, self.dh, 3, groups=self.dh)
        self.talking_head1 = nn.Conv2d(num_heads, num_heads, 1)
        self.talking_head2 = nn.Conv2d(num_heads, num_heads, 1)
        self.act = make_act(cfg.act)
        self.proj = ConvNorm(self.dh, dim)
        self.attention_biases = nn.Parameter(torch.zeros(num_heads, self.N))
        self.register_buffer("attention_bias_idxs", attention_bias_idxs(resolution, resolution), persistent=False)

    def forward(self, x):
        B = x.shape[0]
        if self.stride_conv is not None:
            x = self.stride_conv(x)
        q = self.q(x).reshape(B, self.num_heads, -1, self.N).permute(0, 1, 3, 2)
        k = self.k(x).reshape(B, self.num_heads, -1, self.N)
        v = self.v(x)
        v_local = self.v_local(v)
        v = v.reshape(B, self.num_heads, -1, self.N).permute(0, 1, 3, 2)
        attn = (q @ k) * self.scale + self.attention_biases[:, self.attention_bias_idxs]
        attn = self.talking_head2(self.talking_head1(attn).softmax(dim=-1))
        x = (attn @ v).transpose(2, 3).reshape(B, self.dh, self.resolution, self.resolution) + v_local
        if self.upsample is not None:
            x = self.upsample(x)
        return self.proj(self.act(x))


class ESHA(nn.Module):
    """Efficient Single Head Attention (MicroViT) [A5-A8].

    Q, K, V and the untouched channels U come out of one grouped 3x3 conv over the
    normalised input; one attention head over ``int(value_ratio * dim)`` channels mixes all
    tokens (K and V spatially reduced by ``sr``); the output is ``W_o . act([attended V, U])``.
    """

    def __init__(self, dim: int, qk_dim: int = ESHA_QK_DIM, value_ratio: float = ESHA_VALUE_RATIO, sr: int = 1,
                 groups: int = ESHA_GROUPS, act: str = "relu"):
        super().__init__()
        self.qk_dim, self.value_dim = qk_dim, int(dim * value_ratio)
        self.split = (qk_dim, qk_dim, self.value_dim, dim - self.value_dim)
        self.scale = qk_dim ** -0.5
        # One statistic over all channels and tokens, as SHViT's pre-norm (GroupNorm with one
        # group), but over the whole input, since ESHA projects all of it [A5].
        self.norm = nn.GroupNorm(1, dim)
        out = 2 * qk_dim + dim
        self.qkvu = ConvNorm(dim, out, 3, groups=projection_groups(dim, out, groups))
        if sr > 1:  # [A7] patch-wise depthwise reduction of K and V; Q keeps every token
            self.k_reduce = ConvNorm(qk_dim, qk_dim, sr, sr, groups=qk_dim, padding=0)
            self.v_reduce = ConvNorm(self.value_dim, self.value_dim, sr, sr, groups=self.value_dim, padding=0)
        else:
            self.k_reduce = self.v_reduce = nn.Identity()
        self.act = make_act(act)
        self.proj = ConvNorm(dim, dim, 1)  # [A8] W_o over attended V and U together

    def forward(self, x):
        return self.mix(x, self.act)

    def mix(self, x, act):
        """The attention with activation ``act`` (the supernet switches it per subnet)."""
        B, _, H, W = x.shape
        q, k, v, u = self.qkvu(self.norm(x)).split(self.split, dim=1)
        q, k, v = q.flatten(2), self.k_reduce(k).flatten(2), self.v_reduce(v).flatten(2)
        attn = ((q.transpose(1, 2) @ k) * self.scale).softmax(dim=-1)  # [B, tokens, reduced tokens]
        attended = (v @ attn.transpose(1, 2)).reshape(B, self.value_dim, H, W)
        return self.proj(act(torch.cat([attended, u], dim=1)))


class LocalGlobalQuery(nn.Module):
    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.pool = nn.AvgPool2d(1, 2, 0)
        self.local = nn.Conv2d(cin, cin, 3, 2, 1, groups=cin)
        self.proj = ConvNorm(cin, cout)

    def forward(self, x):
        return self.proj(self.local(x) + self.pool(x))


class Attention2dDownsample(nn.Module):
    """EfficientFormerV2's attention downsampling (queries at stride 2; no talking heads)."""

    def __init__(self, dim: int, out_dim: int, resolution: int, cfg: AttnConfig,
                 key_dim: int = 16, num_heads: int = 8):
        super().__init__()
        self.num_heads, self.key_dim = num_heads, key_dim
        self.scale = key_dim ** -0.5
        self.d = cfg.value_ratio * key_dim
        self.dh = self.d * num_heads
        self.resolution, self.resolution2 = resolution, math.ceil(resolution / 2)
        self.N, self.N2 = resolution ** 2, self.resolution2 ** 2
        kh = key_dim * num_heads
        self.q = LocalGlobalQuery(dim, kh)
        self.k = ConvNorm(dim, kh)
        self.v = ConvNorm(dim, self.dh)
        self.v_local = ConvNorm(self.dh, self.dh, 3, 2, groups=self.dh)
        self.act = make_act(cfg.act)
        self.proj = ConvNorm(self.dh, out_dim)
        self.attention_biases = nn.Parameter(torch.zeros(num_heads, self.N))
        self.register_buffer("attention_bias_idxs",
                             attention_bias_idxs(self.resolution2, resolution, query_step=2), persistent=False)

    def forward(self, x):
        B = x.shape[0]
        q = self.q(x).reshape(B, self.num_heads, -1, self.N2).permute(0, 1, 3, 2)
        k = self.k(x).reshape(B, self.num_heads, -1, self.N)
        v = self.v(x)
        v_local = self.v_local(v)
        v = v.reshape(B, self.num_heads, -1, self.N).permute(0, 1, 3, 2)
        attn = ((q @ k) * self.scale + self.attention_biases[:, self.attention_bias_idxs]).softmax(dim=-1)
        x = (attn @ v).transpose(2, 3).reshape(B, self.dh, self.resolution2, self.resolution2) + v_local
        return self.proj(self.act(x))


class Downsample(nn.Module):
    """Embedding between stages: 3x3 stride-2 conv (+ attention downsampling for embed 3)."""

    def __init__(self, cin: int, cout: int, resolution: int, attn: AttnConfig | None = None,
                 key_dim: int = 16, num_heads: int = 8):
        super().__init__()
        self.conv = ConvNorm(cin, cout, 3, 2)
        self.attn = (Attention2dDownsample(cin, cout, resolution, attn, key_dim, num_heads)
                     if attn is not None else None)

    def forward(self, x):
        out = self.conv(x)
        return out + self.attn(x) if self.attn is not None else out


def build_attention(dim: int, resolution: int, cfg: AttnConfig, stage: int, spec: SpaceSpec) -> nn.Module:
    """The token mixer of an attention position of stage 3 or 4: EfficientFormerV2's MHSA
    (stride 2 in stage 3) or, in the extended space, ESHA (K/V reduced by ``spec.esha_sr``)."""
    if cfg.type == "esha":
        return ESHA(dim, sr=spec.esha_sr_of(stage), act=cfg.act)
    return Attention2d(dim, resolution, cfg, 2 if stage == 3 else None, spec.mhsa_key_dim, spec.mhsa_heads)


class Block(nn.Module):
    """[optional MHSA] + FFN, each a residual branch with layer scale and drop path."""

    def __init__(self, dim: int, ffn: FFNConfig, mhsa: AttnConfig | None = None, resolution: int = 7,
                 stride: int | None = None, drop_path: float = 0.0, spec: SpaceSpec | None = None):
        super().__init__()
        spec = spec or SpaceSpec()
        if mhsa is not None:
            self.token_mixer = build_attention(dim, resolution, mhsa, 3 if stride else 4, spec)
            self.ls1 = LayerScale2d(dim)
            self.drop_path1 = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        else:
            self.token_mixer = self.ls1 = self.drop_path1 = None
        self.mlp = build_ffn(dim, ffn)
        self.ls2 = LayerScale2d(dim)
        self.drop_path2 = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, x):
        if self.token_mixer is not None:
            x = x + self.drop_path1(self.ls1(self.token_mixer(x)))
        return x + self.drop_path2(self.ls2(self.mlp(x)))


class Stage(nn.Module):
    def __init__(self, downsample: nn.Module, blocks: list[nn.Module]):
        super().__init__()
        self.downsample = downsample
        self.blocks = nn.Sequential(*blocks)

    def forward(self, x):
        return self.blocks(self.downsample(x))


class ClassifierHead(nn.Module):
    """BatchNorm -> global average pool -> classifier (+ distillation classifier)."""

    def __init__(self, dim: int, num_classes: int, distillation: bool = True):
        super().__init__()
        self.norm = nn.BatchNorm2d(dim)
        self.head = nn.Linear(dim, num_classes)
        self.head_dist = nn.Linear(dim, num_classes) if distillation else None

    def forward(self, x):
        x = self.norm(x).mean((2, 3))
        if self.head_dist is None:
            return self.head(x)
        return (self.head(x) + self.head_dist(x)) / 2


def stage_resolutions(resolution: int, num_stages: int = 4) -> list[int]:
    """Input feature-map size of each stage (after its downsample): r/4, r/8, r/16, r/32."""
    return [math.ceil(resolution / (4 * 2 ** i)) for i in range(num_stages)]


class SubnetModel(nn.Module):
    """An architecture of the search space as a plain network (timm EfficientFormerV2 layout).

    ``forward`` returns the averaged logits of ``head`` and ``head_dist`` (timm's inference
    output); with ``distilled_training`` on in train mode it returns both, for hard
    distillation. ``forward_features`` returns the last feature map, and
    ``forward_stages`` every stage's output (for detection backbones).
    """

    def __init__(self, arch: ArchConfig, num_classes: int = 1000, resolution: int = 224,
                 distillation: bool = True, drop_path_rate: float = 0.0, spec: SpaceSpec | None = None):
        super().__init__()
        if resolution % 32:
            raise ValueError(f"resolution must be a multiple of 32, got {resolution}")
        spec = spec or SpaceSpec()
        self.arch, self.num_classes, self.resolution = arch, num_classes, resolution
        self.stem = Stem(arch.stem_width, arch.stem_act)
        total = sum(arch.depths)
        rates = torch.linspace(0, drop_path_rate, total).tolist() if total else []
        stages, prev, k = [], arch.stem_width, 0
        for i, (stage, res) in enumerate(zip(arch.stages, stage_resolutions(resolution))):
            if i == 0:
                down = nn.Identity()
            else:
                down = Downsample(prev, stage.width, res * 2, arch.embed3_attn if i == 3 else None,
                                  spec.downsample_key_dim, spec.mhsa_heads)
            blocks = []
            for b in stage.blocks:
                blocks.append(Block(stage.width, b.ffn, b.mhsa, res, 2 if i == 2 else None, rates[k], spec))
                k += 1
            stages.append(Stage(down, blocks))
            prev = stage.width
        self.stages = nn.Sequential(*stages)
        self.num_features = prev
        head = ClassifierHead(prev, num_classes, distillation)
        # Flattened into the model (not a submodule) so the state dict keys match timm's.
        self.norm, self.head, self.head_dist = head.norm, head.head, head.head_dist
        self.distilled_training = False
        self.apply(_init_linear)

    def forward_features(self, x):
        return self.stages(self.stem(x))

    def forward_stages(self, x) -> list[torch.Tensor]:
        x = self.stem(x)
        outs = []
        for stage in self.stages:
            x = stage(x)
            outs.append(x)
        return outs

    def forward_head(self, x):
        x = self.norm(x).mean((2, 3))
        if self.head_dist is None:
            return self.head(x)
        cls, dist = self.head(x), self.head_dist(x)
        if self.distilled_training and self.training:
            return cls, dist
        return (cls + dist) / 2

    def forward(self, x):
        return self.forward_head(self.forward_features(x))

    def reset_classifier(self, num_classes: int) -> None:
        self.num_classes = num_classes
        self.head = nn.Linear(self.num_features, num_classes)
        if self.head_dist is not None:
            self.head_dist = nn.Linear(self.num_features, num_classes)
        self.head.apply(_init_linear)
        if self.head_dist is not None:
            self.head_dist.apply(_init_linear)


def _init_linear(m: nn.Module) -> None:
    if isinstance(m, nn.Linear):
        nn.init.trunc_normal_(m.weight, std=0.02)
        nn.init.zeros_(m.bias)
