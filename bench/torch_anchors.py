"""Anchors in plain PyTorch: timm models (eager, torch.compile) and the CIFAR ResNets of
akamaster/pytorch_resnet_cifar10 (the PyTorch models ANCHORS.md's CIFAR numbers come from).

No Keras here: this runs in its own process. The step is the usual PyTorch loop: autocast
bf16 and channels_last on a GPU (as the anchors were measured), SGD with momentum 0.9.
"""

import resource
import time

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


class Skipped(Exception):
    """A case that cannot run here; the message says why."""


# === akamaster CIFAR ResNet (He et al. 2015, option A shortcuts) ===
class _BasicBlock(nn.Module):
    def __init__(self, in_planes, planes, stride=1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.pad = planes // 4 if (stride != 1 or in_planes != planes) else 0

    def shortcut(self, x):
        if not self.pad:
            return x
        return F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, self.pad, self.pad))

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class CifarResNet(nn.Module):
    def __init__(self, depth=56, num_classes=10):
        super().__init__()
        n = (depth - 2) // 6
        self.conv1 = nn.Conv2d(3, 16, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        blocks, in_planes = [], 16
        for planes, stride in ((16, 1), (32, 2), (64, 2)):
            for i in range(n):
                blocks.append(_BasicBlock(in_planes, planes, stride if i == 0 else 1))
                in_planes = planes
        self.blocks = nn.Sequential(*blocks)
        self.linear = nn.Linear(64, num_classes)
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.kaiming_normal_(m.weight)

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.blocks(out)
        return self.linear(torch.flatten(F.adaptive_avg_pool2d(out, 1), 1))


def build(case):
    if case["kind"] == "torch_cifar":
        return CifarResNet(case["depth"], case["num_classes"])
    try:
        import timm
    except ImportError as err:
        raise Skipped(f"timm is not installed ({err})") from None
    return timm.create_model(case["model"], num_classes=case["num_classes"], **case.get("args", {}))


def device_name():
    return f"cuda:{torch.cuda.get_device_name(0)}" if torch.cuda.is_available() else "cpu"


def torch_profile(run, steps):
    """The top ops of one window of `steps` steps, by device time (CPU time on a CPU)."""
    cuda = torch.cuda.is_available()
    activities = [torch.profiler.ProfilerActivity.CPU] + ([torch.profiler.ProfilerActivity.CUDA] if cuda else [])
    with torch.profiler.profile(activities=activities) as prof:
        run(steps)
    for key in (("device_time_total", "cuda_time_total") if cuda else ("cpu_time_total",)):
        try:
            return prof.key_averages().table(sort_by=key, row_limit=20, max_name_column_width=48)
        except (KeyError, AttributeError, ValueError):  # the key's name changed across torch versions
            continue
    return prof.key_averages().table(row_limit=20)


class AnchorRunner:
    """One plain-PyTorch training step of `case`, ready to run: `run(n)` takes n steps and
    returns the last loss (the same interface as the Keras workers' runners, so a Keras worker
    can time an anchor in alternation with a zoo case, see bench.keras_cases.run_case)."""

    def __init__(self, case):
        cuda = torch.cuda.is_available()
        if case.get("compile") and not cuda and not case.get("compile_on_cpu"):
            raise Skipped("torch.compile anchors run on a GPU only (compile time on a 2-core CPU)")
        self.cuda = cuda
        self.device = device = torch.device("cuda" if cuda else "cpu")
        torch.manual_seed(0)
        model = build(case).to(device)
        self.channels_last = cuda and len(case["input_shape"]) == 3
        if self.channels_last:
            model = model.to(memory_format=torch.channels_last)
        model.train()
        self.params = int(sum(p.numel() for p in model.parameters() if p.requires_grad))
        self.model = torch.compile(model) if case.get("compile") else model
        self.opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
        rng = np.random.default_rng(0)
        h, w, c = case["input_shape"]
        x = torch.from_numpy(rng.standard_normal((case["batch"], c, h, w)).astype("float32")).to(device)
        self.x = x.contiguous(memory_format=torch.channels_last) if self.channels_last else x
        self.y = torch.from_numpy(rng.integers(0, case["num_classes"], case["batch"])).to(device)
        self.use_bf16 = case["precision"] == "bf16"

    def step(self):
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.use_bf16):
            loss = F.cross_entropy(self.model(self.x), self.y)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        return loss

    def run(self, n):
        loss = None
        for _ in range(n):
            loss = self.step()
        if self.cuda:
            torch.cuda.synchronize()
        return float(loss.detach())

    def close(self):
        pass


def run_case(case, warmup, steps, windows, profile=False):
    runner = AnchorRunner(case)
    cuda, run, params, channels_last = runner.cuda, runner.run, runner.params, runner.channels_last

    if cuda:
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    loss = run(max(1, warmup))
    warm_s = time.perf_counter() - start
    times = []
    for _ in range(windows):
        start = time.perf_counter()
        loss = run(steps)
        times.append((time.perf_counter() - start) / steps)
    step_s = min(times)  # best window: on a shared machine other jobs only ever add time
    profile_table = None
    if profile:
        profile_table = torch_profile(run, steps)
    if cuda:
        peak, kind = int(torch.cuda.max_memory_allocated()), "torch.cuda.max_memory_allocated (this case)"
    else:
        peak, kind = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024, "process max RSS so far (CPU)"
    return {
        "images_per_s": case["batch"] / step_s,
        "ms_per_step": 1000 * step_s,
        "ms_per_step_median": 1000 * float(np.median(times)),
        "ms_per_step_windows": [round(1000 * t, 3) for t in times],
        "compile_s": round(warm_s, 2) if case.get("compile") else 0.0,
        "final_loss": loss,
        "trainable_params": params,
        "peak_memory_bytes": peak,
        "peak_memory_kind": kind,
        "channels_last": channels_last,
        **({"profile_top_ops": profile_table} if profile_table else {}),
    }


def environment():
    return {"backend": "torch (plain PyTorch, no Keras)", "device": device_name()}
