"""Training throughput of zoo models next to their anchors, one process per backend.

    python -m bench.bench --suite cpu                          # CI-size models, every backend here
    python -m bench.bench --suite gpu --out bench/results/h100.json   # ANCHORS.md sizes (bash bench/gpu.sh)
    python -m bench.bench --suite gpu --smoke                  # every gpu case, tiny, one step (checks it runs)
    python -m bench.bench --suite cpu --backends jax --only 'skip_*' --steps 10

Cases are data (`cases(suite, smoke, skips)`): zoo presets on synthetic data, the anchors where
they can run (timm eager and torch.compile, akamaster's CIFAR ResNets in PyTorch eager,
keras.applications.ResNet50), the DropPathFreeze step against the plain step on the same model,
and every registered skip mapping against identity on the same model. Each backend runs in its
own worker process (the Keras backend is fixed at import); "anchors" is the plain-PyTorch worker.
A worker writes its results after every case, so a worker that is killed keeps what it measured.

Timing: build, compile, `warmup` steps, then `windows` windows of `steps` steps each between two
host synchronisations; the best window gives ms/step and images/s (other jobs on a shared
machine only ever add time), the median is kept beside it. A case with a baseline (the
DropPathFreeze step against the plain step, each skip mapping against identity, the zoo's
ResNet-20 against the plain PyTorch one) is timed in alternation with it, in one process: its
ratio is the median of the window-by-window ratios, so the machine's drift between two cases
timed minutes apart does not enter it (`--no-paired` times each case alone). Output: JSON
(device, versions, date, git commit, load average) and a Markdown table beside it, with the
goals of issues #7 and #17 (ANCHORS.md numbers are H100 numbers: absolute goals are checked on
the gpu suite only).
"""

import argparse
import datetime
import fnmatch
import importlib.metadata
import importlib.util
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
KERAS_BACKENDS = ("jax", "tensorflow", "torch")
ALL_WORKERS = KERAS_BACKENDS + ("anchors",)
REQUIRES = {"jax": "jax", "tensorflow": "tensorflow", "torch": "torch", "anchors": "torch"}
# Steps: (warmup, steps per window, windows)
TIMING = {"cpu": (2, 2, 5), "gpu": (4, 10, 3), "smoke": (1, 1, 1)}  # even: DropPathFreeze alternates A, B
SKIP_BASELINE = "identity"
# blend's defaults blend identity into identity: time what zoo.swap_skip puts in, identity -> orthogonal
SKIP_ARGS = {"blend": {"skip_options": {"start": "identity", "end": "orthogonal", "steps": 100}}}
# DropPathFreeze with sample masks / the plain step, cpu suite of 2026-11-23 (before issue #17):
# the per-sample step must stay no slower than this.
SAMPLE_DPF_RATIO_BEFORE = {"jax": 0.900, "tensorflow": 0.952, "torch": 0.773}

# ANCHORS.md, one H100, bf16: the numbers the gpu suite's goals are stated against.
ANCHOR_IMAGES_PER_S = {
    "timm_resnet50_eager": 3985,
    "timm_resnet50_compile": 5596,
    "keras_apps_resnet50_jax_fit": 5188,
    "timm_vit_b16_compile": 3294,
    "torch_resnet56_cifar_eager": 5642,
    "torch_resnet110_cifar_eager": 2808,
}


# === Cases (data) ===
def _case(name, group, runner, kind, input_shape, num_classes, batch, precision, **extra):
    return {"name": name, "group": group, "runner": runner, "kind": kind, "input_shape": list(input_shape),
            "num_classes": num_classes, "batch": batch, "precision": precision, **extra}


def _zoo(name, model, input_shape, num_classes, batch, precision, group="models", shape_arg="input_shape", **extra):
    args = {shape_arg: list(input_shape), "num_classes": num_classes, **extra.pop("args", {})}
    return _case(name, group, "keras", "zoo", input_shape, num_classes, batch, precision, model=model, args=args, **extra)


def cases(suite, smoke=False, skips=()):
    """Every case of a suite. `skips`: the registered skip mappings (zoo.list_skips())."""
    if suite == "gpu":
        img = (32, 32, 3) if smoke else (224, 224, 3)  # keras.applications needs >= 32 px
        big = 2 if smoke else 256
        cifar = 2 if smoke else 128
        prec = "bf16"
        # Most wanted first: a worker stopped by the deadline keeps what it measured.
        out = [
            _zoo("resnet50_224_b256", "resnet50", img, 1000, big, prec),
            _case("keras_apps_resnet50_224_b256", "anchors", "keras", "keras_apps", img, 1000, big, prec),
            _zoo("vit_b16_224_b256", "vit_base_patch16_224", img, 1000, big, prec),
            _zoo("resnet56_cifar_b128", "resnet56_cifar", (32, 32, 3), 10, cifar, prec),
            _zoo("resnet110_cifar_b128", "resnet110_cifar", (32, 32, 3), 10, cifar, prec),
            _case("timm_resnet50_eager", "anchors", "torch", "timm", img, 1000, big, prec, model="resnet50"),
            _case("timm_resnet50_compile", "anchors", "torch", "timm", img, 1000, big, prec, model="resnet50",
                  compile=True),
            _case("timm_vit_b16_eager", "anchors", "torch", "timm", img, 1000, big, prec,
                  model="vit_base_patch16_224", args={"img_size": img[0]}),
            _case("timm_vit_b16_compile", "anchors", "torch", "timm", img, 1000, big, prec,
                  model="vit_base_patch16_224", args={"img_size": img[0]}, compile=True),
            _case("torch_resnet56_cifar_eager", "anchors", "torch", "torch_cifar", (32, 32, 3), 10, cifar, prec, depth=56),
            _case("torch_resnet110_cifar_eager", "anchors", "torch", "torch_cifar", (32, 32, 3), 10, cifar, prec, depth=110),
        ]
        tail = [
            _zoo("resrnn_fmnist_rows_b256", "resrnn_fmnist_rows", (28, 28), 10, big, prec, loop=True),
            _zoo("resgru_fmnist_rows_b256", "resgru_fmnist_rows", (28, 28), 10, big, prec, loop=True),
        ]
        dpf_model, dpf_shape, dpf_batch = "resnet56_cifar", (32, 32, 3), cifar
    elif suite == "cpu":
        prec = "float32"
        out = [
            # against the plain PyTorch ResNet-20 (the anchor below), timed in the same process
            _zoo("resnet20_cifar_b64", "resnet20_cifar", (32, 32, 3), 10, 64, prec,
                 baseline="torch_resnet20_cifar_eager"),
            _zoo("vit_tiny_patch4_32_d2_b32", "vit_tiny_patch4_32", (32, 32, 3), 10, 32, prec,
                 args={"depth": 2}),
            _zoo("resrnn_fmnist_rows_b64", "resrnn_fmnist_rows", (28, 28), 10, 64, prec, loop=True),
            _zoo("resgru_fmnist_rows_b64", "resgru_fmnist_rows", (28, 28), 10, 64, prec, loop=True),
            _case("keras_apps_resnet50_224_b256", "anchors", "keras", "keras_apps", (224, 224, 3), 1000, 256, prec,
                  gpu_only="ImageNet-size anchor: gpu suite only (`--suite gpu --smoke` runs it tiny)"),
            _case("torch_resnet20_cifar_eager", "anchors", "torch", "torch_cifar", (32, 32, 3), 10, 64, prec, depth=20),
            _case("timm_resnet50_64px_eager", "anchors", "torch", "timm", (64, 64, 3), 10, 8, prec, model="resnet50"),
            _case("timm_resnet50_compile", "anchors", "torch", "timm", (224, 224, 3), 1000, 256, prec, model="resnet50",
                  compile=True),
        ]
        # DropPathFreeze and skip cases: ResNet-20 on 16 px so that 13 compiled cases fit in a
        # minute or two per backend on 2 cores.
        dpf_model, dpf_shape, dpf_batch = "resnet20_cifar", (16, 16, 3), 32
        tail = []
        if smoke:
            for c in out:
                c["batch"] = min(c["batch"], 4)
    else:
        raise ValueError(f"Received suite={suite!r}; allowed: 'cpu', 'gpu'.")
    dpf = {"drop_path_rate": 0.2, "drop_path_granularity": "batch"}
    # A DropPathFreeze step costs what its mask drops (at rate 0.2 ResNet-20 drops about one
    # unit an A step, often none; a B step trains only the units its A step dropped): its
    # windows are long, so that each holds many masks. With 10 steps a window (until 2026-12-05)
    # ResNet-20's DropPathFreeze windows ranged over 16.5-20 ms against the plain step's steady
    # 19.5-22 in one run: the median of the windows' ratios read which masks fell in which
    # window as much as the step's speed. 30 steps hold about 10 A/B pairs.
    # Warmed up over a window too, so that every kind of step has run before timing (on jax on a
    # CPU the DropPathFreeze step is compiled, and run once, per kind of step on its first step).
    many_masks = {"steps": 2 if smoke else 30, "warmup": 2 if smoke else 10}
    freeze = {"granularity": "batch", "freeze_every": 1, "seed": 0}
    # The DropPathFreeze step against Keras' plain step on the same model (issue #17's goal is
    # the ratio on ResNet-20 and ResNet-56), the step skipping every dropped branch and the step
    # computing them all (skip_dropped True / False). The default is True's step, except on jax
    # on a CPU, where it picks one of two compiled steps before each step (kind_dispatched_step).
    depths = [(dpf_model, "")] + ([("resnet56_cifar", "_r56")] if suite == "cpu" else [])
    for model, tag in depths:
        out += [
            _zoo(f"dpf_plain_step{tag}", model, dpf_shape, 10, dpf_batch, prec, group="drop_path_freeze", args=dpf,
                 note="same model, DropPath 0.2 (batch), Keras' own step", **many_masks),
            _zoo(f"dpf_freeze_step{tag}", model, dpf_shape, 10, dpf_batch, prec, group="drop_path_freeze", args=dpf,
                 trainer="drop_path_freeze", trainer_args=freeze, baseline=f"dpf_plain_step{tag}", **many_masks),
            _zoo(f"dpf_freeze_step_skipping_dropped{tag}", model, dpf_shape, 10, dpf_batch, prec,
                 group="drop_path_freeze", args=dpf, trainer="drop_path_freeze",
                 trainer_args={**freeze, "skip_dropped": True}, baseline=f"dpf_plain_step{tag}", **many_masks),
            _zoo(f"dpf_freeze_step_computing_dropped{tag}", model, dpf_shape, 10, dpf_batch, prec,
                 group="drop_path_freeze", args=dpf, trainer="drop_path_freeze",
                 trainer_args={**freeze, "skip_dropped": False}, baseline=f"dpf_plain_step{tag}", **many_masks),
        ]
    out.append(_zoo("dpf_freeze_step_sample", dpf_model, dpf_shape, 10, dpf_batch, prec, group="drop_path_freeze",
                    args={**dpf, "drop_path_granularity": "sample"}, trainer="drop_path_freeze",
                    trainer_args={**freeze, "granularity": "sample"}, baseline="dpf_plain_step", **many_masks))
    out += tail
    ordered = [SKIP_BASELINE] + sorted(s for s in skips if s != SKIP_BASELINE)
    for skip in ordered if skips else ():
        out.append(_zoo(f"skip_{skip}", dpf_model, dpf_shape, 10, dpf_batch, prec, group="skips",
                        args={"skip": skip, **SKIP_ARGS.get(skip, {})},
                        baseline=None if skip == SKIP_BASELINE else f"skip_{SKIP_BASELINE}"))
    return out


def select(all_cases, only):
    if not only:
        return all_cases
    patterns = [p.strip() for p in only.split(",") if p.strip()]
    return [c for c in all_cases if any(fnmatch.fnmatch(c["name"], p) for p in patterns)]


# === Worker: one backend, in this process ===
def worker(backend, args):
    limit_threads(args.threads)
    if backend == "anchors":
        from bench import torch_anchors as impl

        skips = ()
    else:
        from bench import keras_cases as impl

        import zoo

        if impl.BACKEND != backend:
            raise RuntimeError(f"worker {backend} started with KERAS_BACKEND={impl.BACKEND}")
        skips = zoo.list_skips()
    timing = TIMING["smoke" if args.smoke else args.suite]
    warmup, steps, windows = timing
    steps = args.steps or steps
    suite_cases = cases(args.suite, args.smoke, skips)
    by_name = {c["name"]: c for c in suite_cases}  # a baseline may be another worker's case (an anchor)
    my_cases = [c for c in select(suite_cases, args.only) if (c["runner"] == "torch") == (backend == "anchors")]
    record = {"worker": backend, "environment": impl.environment(), "timing": {"warmup": warmup, "steps": steps,
              "windows": windows, "threads": args.threads or "library default"}, "results": []}
    for case in my_cases:
        entry = {"backend": backend, "case": case["name"], "group": case["group"], "batch": case["batch"],
                 "precision": case["precision"], "input_shape": case["input_shape"], "baseline": case.get("baseline")}
        started = time.time()
        print(f"[{backend}] {case['name']} ...", file=sys.stderr, flush=True)
        try:
            if case.get("gpu_only") and args.suite == "cpu":
                raise _skip(impl, case["gpu_only"])
            paired = by_name.get(case.get("baseline")) if args.paired and backend != "anchors" else None
            case_steps = args.steps or case.get("steps") or steps
            case_warmup = case.get("warmup", warmup)
            entry["steps_per_window"], entry["warmup_steps"] = case_steps, case_warmup
            if paired:
                entry.update(impl.run_case(case, case_warmup, case_steps, windows, profile=args.profile,
                                           paired_with=paired))
            else:
                entry.update(impl.run_case(case, case_warmup, case_steps, windows, profile=args.profile))
            entry["status"] = "ok"
        except Exception as err:  # one failing case must not lose the others
            skipped = type(err).__name__ == "Skipped"
            entry["status"] = "skipped" if skipped else "error"
            entry["reason"] = str(err) if skipped else f"{type(err).__name__}: {err}"
            if not skipped:
                traceback.print_exc()
        entry["wall_s"] = round(time.time() - started, 1)
        if "note" in case and "note" not in entry:
            entry["note"] = case["note"]
        record["results"].append(entry)
        print(f"[{backend}] {case['name']}: {_one_line(entry)}", file=sys.stderr, flush=True)
        _write_json(args.partial, record)
    return record


def _skip(impl, reason):
    cls = getattr(impl, "Skipped", None) or type("Skipped", (Exception,), {})
    return cls(reason)


def _one_line(e):
    if e["status"] != "ok":
        return f"{e['status']}: {e.get('reason')}"
    return f"{e['images_per_s']:.1f} img/s, {e['ms_per_step']:.2f} ms/step ({e['wall_s']} s)"


def _write_json(path, data):
    if not path:
        return
    path = Path(path)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data, indent=1, default=str))
    os.replace(tmp, path)


# === Orchestrator: workers in subprocesses, merge, report ===
def versions():
    out = {"python": platform.python_version()}
    for pkg in ("keras", "jax", "jaxlib", "tensorflow", "torch", "timm", "numpy"):
        try:
            out[pkg] = importlib.metadata.version(pkg)
        except importlib.metadata.PackageNotFoundError:
            out[pkg] = None
    return out


def host():
    cpu = platform.processor()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"platform": platform.platform(), "cpu": cpu, "cpu_count": os.cpu_count(),
            "affinity": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None}


def git_commit():
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "zoo", "bench"], cwd=ROOT,
                               capture_output=True, text=True).stdout.strip()
        return {"commit": head or None, "dirty_zoo_or_bench": bool(dirty)}
    except OSError:
        return {"commit": None}


def thread_env(threads):
    """Environment that holds every backend to `threads` intra-op threads (set before import)."""
    if not threads:
        return {}
    n = str(threads)
    xla = " ".join(f for f in [os.environ.get("XLA_FLAGS", ""), "--xla_cpu_multi_thread_eigen=false",
                               f"intra_op_parallelism_threads={n}"] if f)
    return {"OMP_NUM_THREADS": n, "MKL_NUM_THREADS": n, "TF_NUM_INTRAOP_THREADS": n, "TF_NUM_INTEROP_THREADS": n,
            "XLA_FLAGS": xla}


def limit_threads(threads):
    """In a worker, before any op runs: the thread pools that environment variables miss."""
    if not threads:
        return
    if importlib.util.find_spec("torch"):
        import torch

        torch.set_num_threads(threads)
    if os.environ.get("KERAS_BACKEND") == "tensorflow":
        import tensorflow as tf

        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(threads)


def run_workers(args):
    backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    for b in backends:
        if b not in ALL_WORKERS:
            raise ValueError(f"Received backend {b!r}; allowed: {', '.join(ALL_WORKERS)}.")
    merged = {"suite": args.suite + (" (smoke)" if args.smoke else ""), "date_utc": _now(), "host": host(),
              "versions": versions(), "git": git_commit(), "load_average_start": _load(), "workers": {},
              "results": [],
              "noise": "CPU timings on a shared machine are noisy: other jobs ran beside this one "
                       "(see load_average_*); windows give the spread."}
    end = time.time() + args.deadline if args.deadline else None
    for b in backends:
        if importlib.util.find_spec(REQUIRES[b]) is None:
            merged["workers"][b] = {"status": f"skipped: {REQUIRES[b]} is not installed"}
            continue
        timeout = args.worker_timeout
        if end is not None:
            left = end - time.time() - 5
            if left < 30:
                merged["workers"][b] = {"status": "not run: --deadline reached"}
                continue
            timeout = min(timeout or left, left)
        with tempfile.TemporaryDirectory() as tmp:
            partial = Path(tmp) / "partial.json"
            cmd = [sys.executable, "-m", "bench.bench", "--worker", b, "--suite", args.suite, "--partial", str(partial)]
            cmd += ["--smoke"] if args.smoke else []
            cmd += ["--only", args.only] if args.only else []
            cmd += ["--steps", str(args.steps)] if args.steps else []
            cmd += ["--profile"] if args.profile else []
            env = dict(os.environ, KERAS_BACKEND="torch" if b == "anchors" else b, TF_CPP_MIN_LOG_LEVEL="3",
                       **thread_env(args.threads))
            cmd += ["--threads", str(args.threads)] if args.threads else []
            started = time.time()
            try:
                rc = subprocess.run(cmd, cwd=ROOT, env=env, timeout=timeout).returncode
            except subprocess.TimeoutExpired:
                rc = f"killed after {timeout:.0f} s (timeout): results up to then kept"
            record = json.loads(partial.read_text()) if partial.is_file() else {"results": []}
        merged["workers"][b] = {"status": "ok" if rc == 0 else f"exit {rc}", "wall_s": round(time.time() - started, 1),
                                **{k: v for k, v in record.items() if k not in ("results", "worker")}}
        merged["results"] += record["results"]
    merged["load_average_end"] = _load()
    annotate(merged)
    merged["goals"] = goals(merged, args.suite if not args.smoke else "smoke")
    return merged


def recount_flops(path):
    """A result file with its jax rows' FLOPs counted again from the steps as lowered (see
    keras_cases.count_flops); the other backends' rows take them from there (annotate)."""
    import zoo
    from bench import keras_cases

    merged = json.loads(Path(path).read_text())
    suite = merged["suite"].split(" ")[0]
    by_name = {c["name"]: c for c in cases(suite, "smoke" in merged["suite"], zoo.list_skips())}
    for r in merged["results"]:
        r.pop("flops_vs_baseline", None)
        if r["backend"] != "jax":
            r.pop("gflop_per_image", None)
            r.pop("flops_source", None)
            continue
        if r["status"] != "ok" or r["case"] not in by_name or by_name[r["case"]].get("loop"):
            continue
        print(f"[flops] {r['case']} ...", file=sys.stderr, flush=True)
        r["gflop_per_image"] = keras_cases.count_flops(by_name[r["case"]])
        r["flops_source"] = keras_cases.FLOPS_SOURCE + ", counted again after the run"
    merged["flops_recounted"] = {"date_utc": _now(), "git": git_commit()}
    annotate(merged)
    merged["goals"] = goals(merged, "smoke" if "smoke" in merged["suite"] else suite)
    return merged


def merge_files(paths):
    """Several result files of one suite (e.g. one per device call) as one: a case measured
    again (same backend and name) replaces its earlier result."""
    runs = [json.loads(Path(p).read_text()) for p in paths]
    merged = dict(runs[0], results=[], workers={}, parts=[])
    for run in runs:
        merged["workers"].update(run["workers"])
        again = {(r["backend"], r["case"]) for r in run["results"]}
        merged["results"] = [r for r in merged["results"] if (r["backend"], r["case"]) not in again] + run["results"]
        merged["parts"].append({k: run.get(k) for k in ("date_utc", "git", "load_average_start", "load_average_end")})
    merged["load_average_end"] = runs[-1].get("load_average_end")
    annotate(merged)
    merged["goals"] = goals(merged, "smoke" if "smoke" in merged["suite"] else merged["suite"])
    return merged


def _now():
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _load():
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def _find(results, backend, case):
    for r in results:
        if r["backend"] == backend and r["case"] == case and r["status"] == "ok":
            return r
    return None


def compare(paths):
    """Markdown: each ratio (case against its baseline) of several result files side by side,
    with their median, and the goal each one is held to. A ratio within 10% of its goal is
    quoted as this median (issue #17: this CPU's noise is about that size)."""
    runs = [json.loads(Path(p).read_text()) for p in paths]
    # the goals as the latest run's results give them today (a FLOP ratio may be counted anew)
    latest = runs[-1]
    targets = {(g["backend"], g["case"]): g["target"]
               for g in goals(latest, "smoke" if "smoke" in latest["suite"] else latest["suite"]) if "case" in g}
    keys = []
    for run in runs:
        for r in run["results"]:
            if "speed_vs_baseline" in r and (r["backend"], r["case"]) not in keys:
                keys.append((r["backend"], r["case"]))
    head = "| backend | case | " + " | ".join(f"{run['date_utc'][:16]} ({(run.get('git') or {}).get('commit', '')[:7]})"
                                             for run in runs) + " | median | goal |"
    lines = [head, "|" + "---|" * (len(runs) + 4)]
    for backend, case in keys:
        values = [(_find(run["results"], backend, case) or {}).get("speed_vs_baseline") for run in runs]
        present = [v for v in values if v is not None]
        median = statistics.median(present)
        target = targets.get((backend, case))
        cells = ["-" if v is None else f"{v:.3f}" for v in values]
        lines.append(f"| {backend} | {case} | " + " | ".join(cells) + f" | {median:.3f} | "
                     + ("-" if target is None else f">= {target:.3f}") + " |")
    return "\n".join(lines) + "\n"


def annotate(merged):
    """Ratios against each case's baseline (same backend); FLOPs from the jax worker's XLA cost
    analysis copied to the other backends' rows of the same case."""
    results = merged["results"]
    for r in results:
        if r["status"] != "ok":
            continue
        if "ms_per_step_median" not in r and r.get("ms_per_step_windows"):  # files written before the best-window rule
            r["ms_per_step_median"] = r["ms_per_step"]
            r["ms_per_step"] = min(r["ms_per_step_windows"])
            r["images_per_s"] = r["batch"] * 1000 / r["ms_per_step"]
        if "gflop_per_image" not in r:
            jax_row = _find(results, "jax", r["case"])
            if jax_row and "gflop_per_image" in jax_row:
                r["gflop_per_image"] = jax_row["gflop_per_image"]
                r["flops_source"] = "jax worker's XLA cost analysis of the same case"
        base = _find(results, r["backend"], r["baseline"]) if r.get("baseline") else None
        if r.get("paired") and r["group"] == "drop_path_freeze" and "speed_ratio_total" in r["paired"]:
            # Timed in alternation with its baseline. A DropPathFreeze step's cost depends on its
            # mask (which units are dropped), so its cost is the mean over many masks: the totals.
            r["speed_vs_baseline"] = r["paired"]["speed_ratio_total"]
            r["time_vs_baseline"] = 1 / r["speed_vs_baseline"]
            r["ratio_source"] = "paired windows, ratio of the totals (the mean over the masks drawn)"
        elif r.get("paired"):  # timed in alternation with its baseline: the median of the window ratios
            r["speed_vs_baseline"] = r["paired"]["speed_ratio_median"]
            r["time_vs_baseline"] = 1 / r["speed_vs_baseline"]
            r["ratio_source"] = "paired windows, median"
        elif base:
            r["speed_vs_baseline"] = r["images_per_s"] / base["images_per_s"]
            r["time_vs_baseline"] = r["ms_per_step"] / base["ms_per_step"]
            r["ratio_source"] = "best windows of two cases timed apart"
        if base and r.get("gflop_per_image") and base.get("gflop_per_image"):
            r["flops_vs_baseline"] = r["gflop_per_image"] / base["gflop_per_image"]


def goals(merged, suite):
    """Issue #7's goals as rows: what, measured, target, met (None where not measured)."""
    results = merged["results"]
    rows = []

    def add(what, value, target, rule, of=None):
        met = None if value is None or target is None else value >= target
        row = {"goal": what, "measured": value, "target": target, "rule": rule, "met": met}
        if of is not None:  # a ratio goal: the result it reads
            row.update(backend=of["backend"], case=of["case"])
        rows.append(row)

    def ips(backend, case):
        r = _find(results, backend, case)
        return r["images_per_s"] if r else None

    if suite == "gpu":
        for case, anchor, ref, factor in (
            ("resnet50_224_b256", "timm_resnet50_compile", "timm_resnet50_compile", 1.0),
            ("vit_b16_224_b256", "timm_vit_b16_compile", "timm_vit_b16_compile", 1.0),
            ("resnet56_cifar_b128", "torch_resnet56_cifar_eager", "torch_resnet56_cifar_eager", 1.5),
            ("resnet110_cifar_b128", "torch_resnet110_cifar_eager", "torch_resnet110_cifar_eager", 1.5),
        ):
            add(f"jax {case} >= {factor} x {anchor} (ANCHORS.md)", ips("jax", case),
                factor * ANCHOR_IMAGES_PER_S[anchor], "images/s")
            same = ips("anchors", ref)
            add(f"jax {case} >= {factor} x {ref} (same run)", ips("jax", case),
                factor * same if same else None, "images/s")
        add("torch-backend resnet50_224_b256 >= 0.8 x timm eager (ANCHORS.md)", ips("torch", "resnet50_224_b256"),
            0.8 * ANCHOR_IMAGES_PER_S["timm_resnet50_eager"], "images/s")
        same = ips("anchors", "timm_resnet50_eager")
        add("torch-backend resnet50_224_b256 >= 0.8 x timm eager (same run)", ips("torch", "resnet50_224_b256"),
            0.8 * same if same else None, "images/s")
    for r in results:
        if r["status"] != "ok" or "speed_vs_baseline" not in r:
            continue
        name, backend, ratio = r["case"], r["backend"], r["speed_vs_baseline"]
        if r["group"] == "drop_path_freeze":
            if name.startswith("dpf_freeze_step_sample"):  # issue #17: no slower than before it
                before = SAMPLE_DPF_RATIO_BEFORE.get(backend)
                add(f"{backend} {name} >= {r['baseline']} x {before} (2026-11-23, before #17)", ratio, before,
                    "speed ratio", of=r)
            elif name.startswith("dpf_freeze_step") and "_skipping_" not in name and "_computing_" not in name:
                add(f"{backend} {name} >= 1.15 x {r['baseline']} (#17)", ratio, 1.15, "speed ratio", of=r)
        elif r["group"] == "skips" and "flops_vs_baseline" in r:
            # A mapping may cost its FLOP share plus 5% (issue #17): time ratio <= FLOP ratio + 0.05,
            # i.e. speed ratio >= 1 / (FLOP ratio + 0.05). dropout's random draws are not FLOPs: reported only.
            target = None if name == "skip_dropout" else 1 / (r["flops_vs_baseline"] + 0.05)
            add(f"{backend} {name}: step time / identity's <= FLOPs / identity's + 0.05 "
                f"({r['time_vs_baseline']:.3f} vs {r['flops_vs_baseline']:.3f} + 0.05)", ratio, target,
                "inverse ratios", of=r)
        elif backend == "torch" and r.get("paired") and r["baseline"].startswith("torch_"):
            add(f"torch-backend {name} >= 0.95 x plain PyTorch {r['baseline']} (#17, same process)", ratio, 0.95,
                "speed ratio", of=r)
    return rows


def markdown(merged):
    v = merged["versions"]
    lines = [
        f"## Benchmark: suite {merged['suite']}, {merged['date_utc']}",
        "",
        f"- host: {merged['host']['cpu']} ({merged['host']['affinity']} usable cores of {merged['host']['cpu_count']}), "
        f"{merged['host']['platform']}",
        "- devices: " + "; ".join(f"{b}: {w.get('environment', {}).get('device', w.get('status'))}"
                                  for b, w in merged["workers"].items()),
        "- versions: " + ", ".join(f"{k} {val}" for k, val in v.items() if val),
        f"- git: {merged['git'].get('commit')}" + (" (zoo/ or bench/ modified)" if merged["git"].get("dirty_zoo_or_bench") else ""),
        f"- load average (1, 5, 15 min) at start {merged['load_average_start']}, at end {merged['load_average_end']}",
        "- workers: " + "; ".join(f"{b}: {w['status']}" for b, w in merged["workers"].items()),
        "- timing: " + "; ".join(f"{b}: {w['timing']['warmup']} warm-up, {w['timing']['windows']} x "
                                 f"{w['timing']['steps']} steps, best window, threads {w['timing'].get('threads')}" for b, w in merged["workers"].items()
                                 if "timing" in w),
        "",
        "| backend | case | batch | dtype | images/s | ms/step | GFLOP/img | peak MiB | vs baseline | note |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in merged["results"]:
        if r["status"] != "ok":
            lines.append(f"| {r['backend']} | {r['case']} | {r['batch']} | {r['precision']} | - | - | - | - | - | "
                         f"{r['status']}: {r.get('reason', '')} |")
            continue
        vs = ""
        if "speed_vs_baseline" in r:
            vs = f"{r['speed_vs_baseline']:.3f}x {r['baseline']}" + (" (paired)" if r.get("paired") else "")
            if "flops_vs_baseline" in r:
                vs += f" (FLOPs {r['flops_vs_baseline']:.3f}x)"
        gflop = f"{r['gflop_per_image']:.3f}" if r.get("gflop_per_image") else "-"
        peak = r["peak_memory_bytes"] / 2**20
        note = r.get("note", "")
        lines.append(f"| {r['backend']} | {r['case']} | {r['batch']} | {r['precision']} | {r['images_per_s']:,.1f} | "
                     f"{r['ms_per_step']:.2f} | {gflop} | {peak:,.0f} | {vs} | {note} |")
    lines += ["", "Peak memory: device peak on a GPU; on a CPU the process' max RSS so far (cases run in order).", ""]
    if merged["goals"]:
        lines += ["| goal | measured | target | met |", "|---|---|---|---|"]
        for g in merged["goals"]:
            m = "-" if g["measured"] is None else f"{g['measured']:,.3f}"
            t = "-" if g["target"] is None else f"{g['target']:,.3f}"
            met = {True: "yes", False: "**no**", None: "not measured"}[g["met"]]
            lines.append(f"| {g['goal']} | {m} | {t} | {met} |")
    return "\n".join(lines) + "\n"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--suite", choices=["cpu", "gpu"], default="cpu")
    parser.add_argument("--only", help="comma-separated case-name patterns (fnmatch), e.g. 'skip_*,resnet20*'")
    parser.add_argument("--steps", type=int, default=None, help="steps per timed window")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, one step each: checks every case runs")
    parser.add_argument("--backends", default=",".join(ALL_WORKERS),
                        help=f"workers to run, each in its own process (default {','.join(ALL_WORKERS)})")
    parser.add_argument("--worker-timeout", type=float, default=None, help="seconds per worker process")
    parser.add_argument("--deadline", type=float, default=None,
                        help="seconds for all workers together; a worker still running then is stopped, keeping "
                        "the cases it finished")
    parser.add_argument("--profile", action="store_true",
                        help="torch-based workers: a torch.profiler table of the top ops of one window per case")
    parser.add_argument("--threads", type=int, default=None,
                        help="intra-op threads for every backend (cpu suite default 1: on a shared 2-core machine two "
                        "OpenMP threads can wait whole scheduler slices for each other)")
    parser.add_argument("--paired", action=argparse.BooleanOptionalAction, default=True,
                        help="time a case with a baseline in alternating windows with it, in one process (default); "
                        "--no-paired: each case alone, ratios of best windows")
    parser.add_argument("--merge", nargs="+", metavar="JSON", help="merge result files of one suite into --out")
    parser.add_argument("--compare", nargs="+", metavar="JSON",
                        help="print every ratio of several runs side by side with their median (to --out if given)")
    parser.add_argument("--recount-flops", metavar="JSON",
                        help="give a result file's jax rows the FLOPs of their cases' steps as lowered (counted "
                        "here, nothing timed), then write --out (needs KERAS_BACKEND=jax); for files measured before "
                        "2026-12-04, whose GPU counts missed the cuDNN convolutions")
    parser.add_argument("--out", default=None, help="JSON path; the Markdown table goes beside it (.md)")
    parser.add_argument("--list", action="store_true", help="print the suite's case names and exit")
    parser.add_argument("--worker", choices=ALL_WORKERS, help=argparse.SUPPRESS)
    parser.add_argument("--partial", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.threads is None and args.suite == "cpu" and not args.worker:
        args.threads = 1
    if args.list:
        for c in select(cases(args.suite, args.smoke, ("identity", "<every registered skip>")), args.only):
            print(f"{c['name']:32s} {c['group']:18s} batch {c['batch']:4d} {c['precision']}")
        return 0
    if args.worker:
        worker(args.worker, args)
        return 0
    if args.compare:
        table = compare(args.compare)
        if args.out:
            Path(args.out).write_text(table)
        print(table)
        return 0
    if args.recount_flops:
        merged = recount_flops(args.recount_flops)
    elif args.merge:
        merged = merge_files(args.merge)
    else:
        merged = run_workers(args)
    table = markdown(merged)
    if args.out:
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        _write_json(out, merged)
        out.with_suffix(".md").write_text(table)
        profiles = [f"### {r['backend']} {r['case']}\n{r['profile_top_ops']}" for r in merged["results"]
                    if r.get("profile_top_ops")]
        if profiles:
            out.with_suffix(".profiles.txt").write_text("\n\n".join(profiles) + "\n")
        print(f"wrote {out} and {out.with_suffix('.md')}", file=sys.stderr)
    print(table)
    errors = [r for r in merged["results"] if r["status"] == "error"]
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
