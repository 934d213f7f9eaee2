"""MicroViT (Setyawan et al., "MicroViT: A Vision Transformer with Low Complexity Self Attention
for Edge Device", ``shared/papers/microvit.txt``) built from the project's layers.

MicroViT is not in timm. Its paper lost its equations in the text we have, so the network is
reconstructed from what survives (Table I, the prose of §III, the ablation of Table V) and
from SHViT's single-head attention, which the paper cites as [17] and refines. Every choice
the text does not pin down is an assumption, written ``[A<n>]`` next to the code it shapes:

==== ===========================================================================================
A1   The stem's four 3x3 stride-2 convs widen 3 -> C/8 -> C/4 -> C/2 -> C (SHViT's 16x stem);
     Table I ends each with GELU, so the last one has it too (SHViT's has none).
A2   Stages 1-2 mix tokens with a residual 3x3 depthwise conv (Table I "DWConv"), stage 3 with
     a residual ESHA; each block then has a residual FFN (Eq. 4-5, MetaFormer). No layer
     scale: the paper names none, and its BatchNorms are meant to fold into the convs.
A3   The FFN is 1x1 expand (x2, GELU) -> 1x1 project, each with BatchNorm (Eq. 6, "a
     sequence of point-wise convolutions" with one activation).
A4   A patch embedding (between stages) is a separable conv - 3x3 depthwise stride 2 (GELU),
     then 1x1 to the new width - and a residual FFN ("a sequence of separable convolutions
     and a residual FFN"), followed by one residual depthwise conv + residual FFN at the new
     width, as SHViT's downsampling does. Without that last pair S1 and S3 fall 15 % and 10 %
     short of Table I's parameter counts; with it they land within 5 %.
A5   ESHA projects the whole (GroupNorm-normalised) input with one 3x3 convolution in 32
     groups (Eq. 1: "kernel-based group convolution", "32 groups") into Q, K (16 channels
     each, Table I "QK"), V (a fraction r of the channels) and U, the untouched rest, so
     Q/K/V/U together have ``2 * 16 + C`` channels. Table V supports this: dropping the
     groups adds 9.4 M parameters and 0.155 GMACs to S2, exactly a dense 3x3 conv from 448
     to 480 channels in its five ESHA blocks at 4x4 tokens.
A6   r = 0.215 (SHViT's optimum 1/4.67, which the paper adopts "as discussed in [17]"),
     floored: 320 -> 68 and 448 -> 96 channels, SHViT-S1/S2's partial dims.
A7   Spatial reduction (Table I "SR", Eq. 2's prose: "reduced in K and V using DWConv"): K
     and V pass a depthwise conv with kernel = stride = SR (+ BatchNorm); Q keeps every
     token. SR is Table I's (2, 2, 1 for S1-S3). (Table V calls SR=2 an ablation of S2;
     we follow Table I, the model definition.)
A8   Single head: softmax(Q^T K / sqrt(16)) weighs V; the attended V and U are
     concatenated, activated (ReLU, "such as ReLU as the commonly used", Eq. 3) and mixed
     by a 1x1 conv + BatchNorm over all channels (Eq. 3's W_o).
A9   The head is BatchNorm -> global average pool -> linear (Table I "Avg Pool, FC"), one
     classifier (no distillation head).
==== ===========================================================================================

Published figures (Table I/II, 224x224): S1 6.4 M / 0.231 G, S2 10.0 M / 0.345 G, S3 16.7 M /
0.580 G ("FLOPs" there are multiply-accumulates). S2's own ablation (Table V) gives its
baseline 11.0 M / 0.343 G, so Table II's 10.0 M is at odds with the paper's own S2; see
``MICROVIT_CONFIGS``.

Models are timm-style: configurations are data (:data:`MICROVIT_CONFIGS`), and
:func:`create_microvit` builds one by name. The attention itself, :class:`~nas_core.subnet.ESHA`,
lives with the search space's other layers, which can use it too (``SpaceSpec.attention_types``).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from timm.layers import DropPath
from torch import nn

from .search_space import ESHA_GROUPS, ESHA_QK_DIM, ESHA_VALUE_RATIO
from .subnet import ESHA, ClassifierHead, ConvNorm, Stage


# --------------------------------------------------------------------------- configurations as data
@dataclass(frozen=True)
class Published:
    """A model's row in the MicroViT paper (Table II): params, MACs at 224x224, top-1."""

    params: float
    macs: float
    top1: float


@dataclass(frozen=True)
class MicroViTConfig:
    widths: tuple[int, int, int]
    depths: tuple[int, int, int]
    attn_sr: int  # spatial reduction of K and V in stage 3 [A7]
    qk_dim: int = ESHA_QK_DIM
    value_ratio: float = ESHA_VALUE_RATIO
    groups: int = ESHA_GROUPS
    ffn_expansion: int = 2
    act: str = "gelu"
    attn_act: str = "relu"  # [A8]
    published: Published | None = None


MICROVIT_CONFIGS: dict[str, MicroViTConfig] = {
    "microvit_s1": MicroViTConfig((128, 256, 320), (2, 5, 5), attn_sr=2, published=Published(6.4e6, 0.231e9, 72.6)),
    # Table II's 10.0 M disagrees with Table V's 11.0 M for this same model (see the module
    # docstring); the widths and depths here are Table I's.
    "microvit_s2": MicroViTConfig((128, 320, 448), (2, 7, 5), attn_sr=2, published=Published(10.0e6, 0.345e9, 74.6)),
    "microvit_s3": MicroViTConfig((192, 384, 512), (3, 6, 6), attn_sr=1, published=Published(16.7e6, 0.580e9, 77.1)),
}


# --------------------------------------------------------------------------- layers
class PointwiseFFN(nn.Module):
    """1x1 expand (act) -> 1x1 project [A3]."""

    def __init__(self, dim: int, expansion: int, act: str):
        super().__init__()
        self.fc1 = ConvNorm(dim, dim * expansion, 1, act=act)
        self.fc2 = ConvNorm(dim * expansion, dim, 1)

    def forward(self, x):
        return self.fc2(self.fc1(x))


class Residual(nn.Module):
    def __init__(self, branch: nn.Module, drop_path: float = 0.0):
        super().__init__()
        self.branch = branch
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, x):
        return x + self.drop_path(self.branch(x))


def depthwise_mixer(dim: int) -> nn.Module:
    """The conv token mixer of stages 1-2 (and after a patch embedding): 3x3 depthwise + BN [A2]."""
    return ConvNorm(dim, dim, 3, groups=dim)


class MetaFormerBlock(nn.Module):
    """Residual token mixer, then residual FFN (Eq. 4-5)."""

    def __init__(self, token_mixer: nn.Module, mlp: nn.Module, drop_path: float = 0.0):
        super().__init__()
        self.token_mixer = Residual(token_mixer, drop_path)
        self.mlp = Residual(mlp, drop_path)

    def forward(self, x):
        return self.mlp(self.token_mixer(x))


class PatchEmbed(nn.Module):
    """Separable conv (3x3 depthwise stride 2, 1x1) + residual FFN, then one conv block at the
    new width [A4]."""

    def __init__(self, cin: int, cout: int, cfg: MicroViTConfig):
        super().__init__()
        self.dw = ConvNorm(cin, cin, 3, 2, groups=cin, act=cfg.act)
        self.pw = ConvNorm(cin, cout, 1)
        self.mlp = Residual(PointwiseFFN(cout, cfg.ffn_expansion, cfg.act))
        self.post = MetaFormerBlock(depthwise_mixer(cout), PointwiseFFN(cout, cfg.ffn_expansion, cfg.act))

    def forward(self, x):
        return self.post(self.mlp(self.pw(self.dw(x))))


class Stem16(nn.Module):
    """Four 3x3 stride-2 convs, 3 -> C/8 -> C/4 -> C/2 -> C [A1]."""

    def __init__(self, width: int, act: str):
        super().__init__()
        widths = [3, width // 8, width // 4, width // 2, width]
        self.convs = nn.Sequential(*(ConvNorm(a, b, 3, 2, act=act) for a, b in zip(widths, widths[1:])))

    def forward(self, x):
        return self.convs(x)


# --------------------------------------------------------------------------- the network
class MicroViT(nn.Module):
    """Stem (16x) -> conv stage -> embed -> conv stage -> embed -> ESHA stage -> head."""

    def __init__(self, cfg: MicroViTConfig, num_classes: int = 1000, drop_path_rate: float = 0.0):
        super().__init__()
        self.cfg, self.num_classes = cfg, num_classes
        self.stem = Stem16(cfg.widths[0], cfg.act)
        rates = torch.linspace(0, drop_path_rate, sum(cfg.depths)).tolist()
        stages, prev, k = [], cfg.widths[0], 0
        for i, (width, depth) in enumerate(zip(cfg.widths, cfg.depths)):
            downsample = nn.Identity() if i == 0 else PatchEmbed(prev, width, cfg)
            blocks = []
            for _ in range(depth):
                mixer = (ESHA(width, cfg.qk_dim, cfg.value_ratio, cfg.attn_sr, cfg.groups, cfg.attn_act)
                         if i == len(cfg.widths) - 1 else depthwise_mixer(width))
                blocks.append(MetaFormerBlock(mixer, PointwiseFFN(width, cfg.ffn_expansion, cfg.act), rates[k]))
                k += 1
            stages.append(Stage(downsample, blocks))
            prev = width
        self.stages = nn.Sequential(*stages)
        self.num_features = prev
        self.head = ClassifierHead(prev, num_classes, distillation=False)  # [A9]
        self.apply(_init_linear)

    def forward_features(self, x):
        return self.stages(self.stem(x))

    def forward_stages(self, x) -> list[torch.Tensor]:
        x, outs = self.stem(x), []
        for stage in self.stages:
            x = stage(x)
            outs.append(x)
        return outs

    def forward(self, x):
        return self.head(self.forward_features(x))

    def reset_classifier(self, num_classes: int) -> None:
        self.num_classes = num_classes
        self.head = ClassifierHead(self.num_features, num_classes, distillation=False)
        self.head.apply(_init_linear)


def _init_linear(m: nn.Module) -> None:
    if isinstance(m, nn.Linear):
        nn.init.trunc_normal_(m.weight, std=0.02)
        nn.init.zeros_(m.bias)


# --------------------------------------------------------------------------- registry
def is_microvit(name: str) -> bool:
    return name in MICROVIT_CONFIGS


def create_microvit(name: str, num_classes: int = 1000, drop_path_rate: float = 0.0) -> MicroViT:
    """``microvit_s1`` / ``microvit_s2`` / ``microvit_s3`` (random weights: none are published)."""
    try:
        cfg = MICROVIT_CONFIGS[name]
    except KeyError:
        raise KeyError(f"unknown MicroViT {name!r}; known: {', '.join(MICROVIT_CONFIGS)}") from None
    return MicroViT(cfg, num_classes=num_classes, drop_path_rate=drop_path_rate)
