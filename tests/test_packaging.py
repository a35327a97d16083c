"""Packaging: a wheel is a working zoo (issue #14, item 7).

The wheel is built from a copy of the project's sources (no network, no build isolation, no
stale build/ folder of the checkout can leak into it), then read as a zip: it must hold the
shipped weights (zoo/weights/index.json and every file each indexed preset's metadata.json
names, byte for byte), declare each backend as an extra, and keep the core free of backends and
of keras-cv. Last, the unpacked wheel is imported from another directory and finds and
verifies its presets.
"""

import email.parser
import hashlib
import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHIPPED = REPO / "zoo" / "weights"
BACKEND_PACKAGES = {"jax": "jax", "tensorflow": "tensorflow", "torch": "torch"}


@pytest.fixture(scope="module")
def wheel(tmp_path_factory):
    src = tmp_path_factory.mktemp("src")
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(REPO / name, src / name)
    shutil.copytree(REPO / "zoo", src / "zoo", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    out = tmp_path_factory.mktemp("wheel")
    done = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", str(src), "--no-deps", "--no-build-isolation", "--no-index", "-q", "-w", str(out)],
        capture_output=True, text=True, cwd=src, timeout=300,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    (path,) = out.glob("zoo-*.whl")
    return path


def _sha256(data):
    return hashlib.sha256(data).hexdigest()


def _metadata(whl):
    with zipfile.ZipFile(whl) as z:
        (name,) = [n for n in z.namelist() if n.endswith(".dist-info/METADATA")]
        return email.parser.Parser().parsestr(z.read(name).decode())


def _requirement_name(req):
    name = req.split(";")[0].strip()
    for stop in "[<>=!~ ":
        name = name.split(stop)[0]
    return name.lower().replace("_", "-")


def test_wheel_holds_the_index_and_every_file_it_names(wheel):
    index = json.loads((SHIPPED / "index.json").read_text())["presets"]
    assert index, "the checkout ships no presets"
    with zipfile.ZipFile(wheel) as z:
        names = set(z.namelist())
        assert "zoo/weights/index.json" in names, "the wheel has no zoo/weights/index.json"
        assert json.loads(z.read("zoo/weights/index.json"))["presets"] == index
        for name, entry in index.items():
            folder = f"zoo/weights/{entry['folder']}"
            meta_bytes = z.read(f"{folder}/metadata.json")
            assert _sha256(meta_bytes) == entry["metadata_sha256"], name
            meta = json.loads(meta_bytes)
            assert {"config.json", "model.weights.h5"} <= set(meta["sha256"]), name
            for file, sha in meta["sha256"].items():
                member = f"{folder}/{file}"
                assert member in names, f"{name}: the wheel lacks {member}"
                data = z.read(member)
                assert _sha256(data) == sha and len(data) == meta["bytes"][file], member


def test_backends_are_extras_and_the_core_has_none(wheel):
    meta = _metadata(wheel)
    extras = set(meta.get_all("Provides-Extra"))
    assert {"jax", "tensorflow", "torch", "all", "dev"} <= extras, extras
    requires = meta.get_all("Requires-Dist")
    core = {_requirement_name(r) for r in requires if "extra ==" not in r}
    assert "keras" in core
    assert not core & {"jax", "tensorflow", "torch", "keras-cv"}, core
    assert not any(_requirement_name(r) == "keras-cv" for r in requires), "keras-cv is not a dependency any more"

    def of_extra(extra):
        return {_requirement_name(r) for r in requires if f'extra == "{extra}"' in r}

    for extra, package in BACKEND_PACKAGES.items():
        assert package in of_extra(extra), f"zoo[{extra}] does not install {package}"
    everything = [r for r in requires if 'extra == "all"' in r]
    # zoo[all] names the other extras (zoo[jax,recipes,tensorflow,torch]) or lists their packages
    named = {e.strip() for r in everything if r.startswith("zoo[") for e in r[4:r.index("]")].split(",")}
    covered = of_extra("all") | {p for e in named for p in of_extra(e)}
    assert set(BACKEND_PACKAGES.values()) | {"scikit-learn", "mnist1d"} <= covered, covered


def test_unpacked_wheel_finds_and_verifies_its_presets_from_another_directory(wheel, tmp_path):
    site = tmp_path / "site"
    with zipfile.ZipFile(wheel) as z:
        z.extractall(site)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    script = (
        "import json, zoo, zoo.presets as p\n"
        "names = zoo.list_models(pretrained=True)\n"
        "meta = zoo.get_preset_metadata('resnet56_cifar.cifar10')\n"
        "print(json.dumps({'file': zoo.__file__, 'weights': str(p.REPO_WEIGHTS), 'names': names, 'arch': meta['arch']}))\n"
    )
    env = {**os.environ, "PYTHONPATH": str(site), "ZOO_WEIGHTS_PATH": ""}
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=elsewhere, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    seen = json.loads(done.stdout.strip().splitlines()[-1])
    assert Path(seen["file"]).resolve().is_relative_to(site.resolve()), seen["file"]
    assert Path(seen["weights"]).resolve() == (site / "zoo" / "weights").resolve()
    assert seen["names"] == sorted(json.loads((SHIPPED / "index.json").read_text())["presets"])
    assert seen["arch"] == "resnet56_cifar"
