"""Training images/s of caplab's VGG and ResNet against the same architectures written in plain torch.nn.

The peer is what a user would write by hand: `nn.Conv2d` + `nn.BatchNorm2d` /
`nn.GroupNorm` + `nn.ReLU`, pre-activation residual blocks, global average
pooling and a linear classifier, with exactly caplab's shapes (the parameter
counts are checked equal). Both train with the same AdamW on the same
batches, alternating in rounds so that machine noise hits both alike.
Normalizers PyTorch has built in (batch, group, layer = one group, instance =
a group per channel, none) are timed against the peer; the others (FRN,
EvoNorm, weight normalization, scaled weight standardization, variance
normalization) against caplab's own BatchNorm model of the same shape, which
is the price of choosing them. torchvision's ResNet is not a peer here: its
CPU wheels do not import beside this PyTorch build.

    python benchmarks/vision_throughput.py                       # CPU, the default small shapes
    python benchmarks/vision_throughput.py --device cuda --channels-last --bf16
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F
from torch import nn

from caplab.models.convnets import VGG, ResNet, ResNetConfig, VGGConfig
from caplab.models.norms import NORMS

BUILT_IN = ("batch", "group", "layer", "instance", "none")


def torch_norm_act(kind: str, channels: int, groups: int) -> nn.Module:
    if kind == "none":
        return nn.ReLU()
    if kind == "batch":
        return nn.Sequential(nn.BatchNorm2d(channels), nn.ReLU())
    count = {"layer": 1, "instance": channels}.get(kind, min(groups, channels))
    return nn.Sequential(nn.GroupNorm(count, channels), nn.ReLU())


class PlainVGG(nn.Module):
    def __init__(self, cfg: VGGConfig) -> None:
        super().__init__()
        layers, c_in = [], cfg.in_channels
        per_stage = [cfg.depth // cfg.stages + (i < cfg.depth % cfg.stages) for i in range(cfg.stages)]
        for stage, count in enumerate(per_stage):
            c_out = cfg.width * 2 ** stage
            for j in range(count):
                layers += [nn.Conv2d(c_in, c_out, 3, 2 if stage and not j else 1, 1, bias=False),
                           torch_norm_act(cfg.norm, c_out, cfg.norm_groups)]
                c_in = c_out
        self.features = nn.Sequential(*layers)
        self.fc = nn.Linear(c_in, cfg.n_classes)

    def forward(self, x):
        return self.fc(self.features(x).mean((2, 3)))


class PlainBlock(nn.Module):
    def __init__(self, kind: str, groups: int, c_in: int, c_out: int, stride: int) -> None:
        super().__init__()
        self.a1, self.c1 = torch_norm_act(kind, c_in, groups), nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.a2, self.c2 = torch_norm_act(kind, c_out, groups), nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.proj = nn.Conv2d(c_in, c_out, 1, stride, 0, bias=False) if stride != 1 or c_in != c_out else None

    def forward(self, x):
        pre = self.a1(x)
        return (x if self.proj is None else self.proj(pre)) + self.c2(self.a2(self.c1(pre)))


class PlainResNet(nn.Module):
    def __init__(self, cfg: ResNetConfig) -> None:
        super().__init__()
        self.stem = nn.Conv2d(cfg.in_channels, cfg.width, 3, 1, 1, bias=False)
        blocks, c_in = [], cfg.width
        for stage in range(cfg.stages):
            c_out = cfg.width * 2 ** stage
            for j in range(cfg.blocks_per_stage):
                blocks.append(PlainBlock(cfg.norm, cfg.norm_groups, c_in, c_out, 2 if stage and not j else 1))
                c_in = c_out
        self.blocks = nn.Sequential(*blocks)
        self.final = torch_norm_act(cfg.norm, c_in, cfg.norm_groups)
        self.fc = nn.Linear(c_in, cfg.n_classes)

    def forward(self, x):
        return self.fc(self.final(self.blocks(self.stem(x))).mean((2, 3)))


def trainer(model: nn.Module, device, bf16: bool, channels_last: bool):
    model = model.to(device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)

    def step(images, labels):
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            loss = F.cross_entropy(model(images).float(), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return step


def timed(step, batches, device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for images, labels in batches:
        step(images, labels)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


def compare(name: str, ours: nn.Module, peer: nn.Module, batches, args, device) -> tuple[float, float]:
    """Median images/s of (ours, peer) over alternating rounds."""
    steps = [trainer(m, device, args.bf16, args.channels_last) for m in (ours, peer)]
    for step in steps:  # warm-up
        timed(step, batches[:2], device)
    times = ([], [])
    for _ in range(args.rounds):
        for i, step in enumerate(steps):
            times[i].append(timed(step, batches, device))
    images = len(batches) * batches[0][0].shape[0]
    return images / statistics.median(times[0]), images / statistics.median(times[1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--width", type=int, default=16)
    parser.add_argument("--steps", type=int, default=5, help="steps per timed round")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--bf16", action="store_true")
    parser.add_argument("--channels-last", action="store_true")
    parser.add_argument("--norms", default=",".join(NORMS))
    args = parser.parse_args()
    device = torch.device(args.device)
    torch.manual_seed(0)
    batches = [(torch.randn(args.batch, 3, args.image_size, args.image_size, device=device),
                torch.randint(10, (args.batch,), device=device)) for _ in range(args.steps)]
    if args.channels_last:
        batches = [(x.contiguous(memory_format=torch.channels_last), y) for x, y in batches]
    shape = dict(width=args.width, image_size=args.image_size, norm_groups=8)
    print(f"device {device}, batch {args.batch}, {args.image_size}x{args.image_size}, width {args.width}, "
          f"bf16 {args.bf16}, channels_last {args.channels_last}, threads {torch.get_num_threads()}")
    print(f"{'model':<8} {'norm':<11} {'caplab img/s':>13} {'peer img/s':>11} {'ratio':>6}  peer")
    for arch, make_cfg, ours_cls, peer_cls in (("vgg", lambda n: VGGConfig(depth=8, stages=3, norm=n, **shape), VGG, PlainVGG),
                                               ("resnet", lambda n: ResNetConfig(depth=20, norm=n, **shape), ResNet, PlainResNet)):
        for norm in args.norms.split(","):
            cfg = make_cfg(norm)
            ours = ours_cls(cfg)
            if norm in BUILT_IN:
                peer, label = peer_cls(cfg), f"plain torch.nn ({norm})"
                n_ours, n_peer = (sum(p.numel() for p in m.parameters()) for m in (ours, peer))
                assert n_ours == n_peer, f"{arch}/{norm}: {n_ours} vs {n_peer} parameters"
            else:
                peer, label = ours_cls(make_cfg("batch")), "caplab with BatchNorm"
            a, b = compare(f"{arch}/{norm}", ours, peer, batches, args, device)
            print(f"{arch:<8} {norm:<11} {a:>13,.0f} {b:>11,.0f} {a / b:>6.2f}  {label}", flush=True)


if __name__ == "__main__":
    main()
