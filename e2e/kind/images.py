"""Voxa's images and the kind node image, built by the local Docker engine without any registry.

Nothing here pulls an image: every base is a Debian root filesystem made by debootstrap from Debian's
packages (`rootfs.sh`) and `docker import`ed, every binary is built from its Go module (the Kubernetes
multicall binary of e2e/cluster/build.sh, the tools of tools.sh) or is one of Kubernetes' own build
inputs (pause.c), and every `docker build` runs with `--network=none`.

- `voxa_images()`: the root Dockerfile's three targets (voxa, stunnerd, redis), tagged with the package
  version under `IMAGE_REGISTRY`, which is what the operator's defaults name.
- `node_image()`: a kind node (systemd, containerd, kubelet) with the Kubernetes component images
  (apiserver, controller-manager, scheduler, proxy, etcd, CoreDNS, pause) already in its containerd,
  tagged by a digest of its inputs, so an unchanged node image is never rebuilt.

Each function returns at once when its result exists; `python -m e2e.kind images` runs them.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from e2e.kind.engine import EngineError, docker, image_exists
from e2e.kind.paths import BUILD_DIR, HERE, ROOT
from voxa.common.version import IMAGE_REGISTRY, VERSION, image

KUBE_BUILD = ROOT / "e2e" / "cluster" / "build.sh"
STUNNERD_BUILD = ROOT / "e2e" / "turn" / "build.sh"
DATAPLANE_BUILD = ROOT / ".ci" / "dataplane.sh"
TOOLS = HERE / "tools.sh"
ROOTFS = HERE / "rootfs.sh"
NODE_FILES = HERE / "node"
LOCAL = "voxa.local"
"""Repository of the images that only exist on this machine (bases, node image)."""
VOXA_TARGETS = ("voxa", "stunnerd", "redis")
KUBE_COMMANDS = ("kube-apiserver", "kube-controller-manager", "kube-scheduler", "kube-proxy", "etcd")
PATH_ENV = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def log(message: str) -> None:
    print(f"images: {message}", file=sys.stderr, flush=True)


def script(path: Path, *args: str, timeout: float = 3600.0) -> str:
    """Run one of the build scripts (their progress goes to stderr) and return the last line it printed."""
    result = subprocess.run(
        ["bash", str(path), *args], stdout=subprocess.PIPE, text=True, timeout=timeout, check=False
    )
    if result.returncode != 0:
        raise EngineError(f"{path.relative_to(ROOT)} {' '.join(args)} failed ({result.returncode})")
    return result.stdout.strip().splitlines()[-1]


def digest(parts: Iterable[bytes | str | Path]) -> str:
    """A short digest of files (their bytes), folders (every file in them) and strings."""
    h = hashlib.sha256()
    for part in parts:
        if isinstance(part, Path):
            files = sorted(p for p in part.rglob("*") if p.is_file()) if part.is_dir() else [part]
            for f in files:
                h.update(str(f.relative_to(part) if part.is_dir() else f.name).encode())
                h.update(f.read_bytes())
        else:
            h.update(part.encode() if isinstance(part, str) else part)
    return h.hexdigest()[:12]


def base_image(set_name: str) -> str:
    """A Debian base image (a `rootfs.sh` set), imported once; named after the rootfs's hash."""
    tar = Path(script(ROOTFS, set_name))
    ref = f"{LOCAL}/debian-{set_name}:{tar.stem.rsplit('-', 1)[-1]}"
    if not image_exists(ref):
        log(f"importing {tar.name} as {ref}")
        docker("import", "--change", f"ENV {PATH_ENV}", "--change", 'CMD ["/bin/bash"]', str(tar), ref)
    return ref


def kube_binary() -> Path:
    """The Kubernetes multicall binary (kube-apiserver ... kubectl, etcd), shared with e2e/cluster."""
    return Path(script(KUBE_BUILD)) / "kube"


def tool(name: str) -> Path:
    return Path(script(TOOLS, name))


def build(
    context: Path,
    ref: str,
    *,
    target: str | None = None,
    dockerfile: Path | None = None,
    args: dict[str, str] | None = None,
) -> None:
    """`docker build` with BuildKit (only the target's stages are built) and no network at all."""
    argv = ["build", "--network=none", "--tag", ref, "--progress=plain"]
    if target:
        argv += ["--target", target]
    if dockerfile:
        argv += ["--file", str(dockerfile)]
    for key, value in (args or {}).items():
        argv += ["--build-arg", f"{key}={value}"]
    docker(*argv, str(context), env={"DOCKER_BUILDKIT": "1"})


# ---------------------------------------------------------------------------------------------------
# Voxa's images


DEBIAN_PYTHON = Path("/usr/bin/python3")
"""Debian's Python 3.11, the interpreter of the image's Debian base: wheels are resolved by it, so
environment markers (python_full_version 3.11.2, say) select what the image's pip will ask for."""


def wheels() -> Path:
    """build/wheels: the voxa package's dependencies as wheels (and setuptools, its build backend),
    fetched by pip on the host, so the image build itself needs no network; and the SFU's native data
    plane (voxa_dataplane), built on the host from sfu/dataplane/ (.ci/dataplane.sh: only when its
    sources changed, with the cargo output cached)."""
    out = BUILD_DIR / "wheels"
    venv = BUILD_DIR / "wheel-venv"
    if not (venv / "bin" / "pip").exists():
        subprocess.run([str(DEBIAN_PYTHON), "-m", "venv", str(venv)], check=True, timeout=300)
    pip = [str(venv / "bin" / "python"), "-m", "pip", "--disable-pip-version-check", "-q"]
    if out.exists():
        shutil.rmtree(out)  # what an older version of the dependencies left must not be installed
    out.mkdir(parents=True)
    subprocess.run([*pip, "wheel", "--wheel-dir", str(out), str(ROOT)], check=True, timeout=1800)
    subprocess.run([*pip, "download", "--dest", str(out), "setuptools>=77"], check=True, timeout=600)
    # The project's own wheel is rebuilt from the sources in the image: keep only its dependencies.
    for own in out.glob("voxa-*.whl"):
        own.unlink()
    dataplane = ROOT / script(DATAPLANE_BUILD)
    shutil.copy2(dataplane, out / dataplane.name)
    return out


def stunnerd_binary() -> tuple[Path, str]:
    """build/images/stunnerd, built from its Go module by e2e/turn/build.sh, and its version."""
    source = Path(script(STUNNERD_BUILD))
    dest = BUILD_DIR / "images" / "stunnerd"
    dest.parent.mkdir(parents=True, exist_ok=True)
    if not dest.exists() or dest.read_bytes() != source.read_bytes():
        shutil.copy2(source, dest)
    return dest, source.parent.name.split("-")[1]


def voxa_images(registry: str = IMAGE_REGISTRY) -> dict[str, str]:
    """Build the voxa, stunnerd and redis images from the root Dockerfile, on Debian-made bases.
    Docker's layer cache makes a rebuild of unchanged sources take seconds."""
    start = time.monotonic()
    _, stunnerd_version = stunnerd_binary()
    wheels()
    common = {
        "VERSION": VERSION,
        "BASE_IMAGE": base_image("python"),
        "REDIS_BASE_IMAGE": base_image("redis"),
        "DATAPLANE": "dataplane-prebuilt",  # the wheel wheels() put in build/wheels
    }
    refs = {}
    for target in VOXA_TARGETS:
        ref = image(target, registry)
        args = {**common, "STUNNERD_VERSION": stunnerd_version} if target == "stunnerd" else common
        log(f"building {ref}")
        build(ROOT, ref, target=target, args=args)
        refs[target] = ref
    log(f"voxa images built in {time.monotonic() - start:.0f}s")
    return refs


def image_size(ref: str) -> int:
    return int(docker("image", "inspect", "--format", "{{.Size}}", ref).strip())


# ---------------------------------------------------------------------------------------------------
# The kind node image


def kubernetes_version(kube: Path) -> str:
    out = subprocess.run([str(kube), "kubelet", "--version"], capture_output=True, text=True, check=True)
    return out.stdout.split()[-1]  # "Kubernetes v1.35.4"


def kubeadm_images(kube: Path, version: str) -> list[str]:
    """The images `kubeadm init` runs for this version, e.g. registry.k8s.io/kube-apiserver:v1.35.4."""
    out = subprocess.run(
        [str(kube), "kubeadm", "config", "images", "list", f"--kubernetes-version={version}"],
        capture_output=True,
        text=True,
        check=True,
    )
    return [line.strip() for line in out.stdout.splitlines() if line.strip()]


def module_source(module: str, version: str) -> Path:
    """A Go module's source in the module cache (downloaded from the proxy if it is not there): the
    build inputs taken from other projects come from here, as their Go code does."""
    out = subprocess.run(
        ["go", "mod", "download", "-json", f"{module}@{version}"],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "GOFLAGS": "-mod=mod", "GOTOOLCHAIN": "local"},
    )
    return Path(json.loads(out.stdout)["Dir"])


def kind_module() -> Path:
    """The sigs.k8s.io/kind module's source, whose images/base/files/ are the node's own files."""
    return module_source("sigs.k8s.io/kind", script(TOOLS, "--version", "kind"))


def pause_binary(dest: Path, version: str) -> None:
    """Kubernetes' pause (build/pause/linux/pause.c in its module), compiled static."""
    source = module_source("k8s.io/kubernetes", version) / "build" / "pause" / "linux" / "pause.c"
    subprocess.run(
        ["gcc", "-Os", "-static", "-Wall", '-DVERSION="voxa"', "-o", str(dest), str(source)], check=True
    )
    subprocess.run(["strip", str(dest)], check=True)


def component_images(kube: Path, netfilter_base: str, context: Path) -> list[str]:
    """Build the images kubeadm runs and save them to context/components.tar; returns their refs."""
    version = kubernetes_version(kube)
    wanted = kubeadm_images(kube, version)
    shutil.copy2(kube, context / "kube")
    shutil.copy2(tool("coredns"), context / "coredns")
    pause_binary(context / "pause", version)
    dockerfile = NODE_FILES / "components.Dockerfile"
    tag = f"{LOCAL}/kube-components:{digest([kube, netfilter_base, dockerfile])}"
    built = {}
    for target in ("kube", "coredns", "pause"):
        ref = f"{tag}-{target}"
        build(context, ref, target=target, dockerfile=dockerfile, args={"NETFILTER_BASE": netfilter_base})
        built[target] = ref
    for name in wanted:
        repo = name.rsplit(":", 1)[0].rsplit("/", 1)[-1]
        source = (
            built["coredns"] if repo == "coredns" else built["pause"] if repo == "pause" else built["kube"]
        )
        if repo not in (*KUBE_COMMANDS, "coredns", "pause"):
            raise EngineError(f"kubeadm wants an image this build does not make: {name}")
        docker("tag", source, name)
    docker("save", "--output", str(context / "components.tar"), *wanted)
    return wanted


NODE_RUN_FLAGS = (
    # What kind's --privileged becomes here (see shim/docker): enough for containerd to run.
    "--cap-add=ALL",
    "--cap-drop=SYS_RESOURCE",
    "--security-opt=systempaths=unconfined",
    "--security-opt=seccomp=unconfined",
    "--security-opt=apparmor=unconfined",
    "--device-cgroup-rule=a *:* rwm",
)


def node_image() -> str:
    """The kind node image, built once per set of inputs and kept by the engine (data root in the cache)."""
    kube = kube_binary()
    node_base = base_image("node")
    netfilter_base = base_image("netfilter")
    crictl = tool("crictl")
    kind_files = kind_module() / "images" / "base" / "files"
    version = kubernetes_version(kube)
    inputs = digest([kube, crictl, node_base, netfilter_base, kind_files, NODE_FILES])
    ref = f"{LOCAL}/kind-node:{version}-{inputs}"
    if image_exists(ref):
        return ref
    start = time.monotonic()
    log(f"building the kind node image {ref}")
    with tempfile.TemporaryDirectory(dir=_scratch()) as tmp:
        context = Path(tmp)
        components = component_images(kube, netfilter_base, context)
        pause = next(name for name in components if "/pause:" in name)
        shutil.copytree(kind_files, context / "files", symlinks=True)
        shutil.copytree(NODE_FILES / "rootfs", context / "voxa", symlinks=True)
        (context / "bin").mkdir()
        shutil.copy2(kube, context / "bin" / "kube")
        shutil.copy2(crictl, context / "bin" / "crictl")
        stage = f"{ref}-stage"
        build(
            context,
            stage,
            dockerfile=NODE_FILES / "node.Dockerfile",
            args={"NODE_BASE": node_base, "KUBE_VERSION": version, "PAUSE_IMAGE": pause},
        )
        _import_components(stage, context / "components.tar", ref)
        docker("rmi", stage)
    log(f"node image built in {time.monotonic() - start:.0f}s")
    return ref


def _scratch() -> Path:
    path = BUILD_DIR / "kind" / "scratch"
    path.mkdir(parents=True, exist_ok=True)
    return path


def _import_components(stage: str, archive: Path, ref: str) -> None:
    """Load the component images into the node's containerd (as kind's own node build does: pinned,
    not unpacked) inside a container of the stage image, then commit that container as `ref` (which
    keeps the stage's STOPSIGNAL; the entrypoint the build container replaced is put back)."""
    name = f"voxa-node-build-{int(time.time())}"
    docker(
        "run",
        "--detach",
        "--name",
        name,
        *NODE_RUN_FLAGS,
        "--network=none",
        "--entrypoint",
        "/bin/sleep",
        stage,
        "infinity",
    )
    try:
        docker("cp", str(archive), f"{name}:/components.tar")
        docker(
            "exec",
            name,
            "/bin/bash",
            "-euc",
            "containerd >/tmp/containerd.log 2>&1 & pid=$!; "
            "for _ in $(seq 100); do ctr version >/dev/null 2>&1 && break; sleep 0.2; done; "
            "ctr --namespace=k8s.io images import --label=io.cri-containerd.pinned=pinned "
            "--all-platforms --no-unpack --digests /components.tar >/dev/null; "
            "ctr --namespace=k8s.io images list -q; kill $pid; wait $pid || true; "
            "rm -f /components.tar /tmp/containerd.log",
        )
        docker(
            "commit",
            "--change",
            "ENV container=docker",
            "--change",
            'ENTRYPOINT ["/usr/local/bin/entrypoint", "/sbin/init"]',
            "--change",
            "CMD []",
            name,
            ref,
        )
    finally:
        docker("rm", "--force", name)


ROOTFS_SETS = ("python", "redis", "netfilter", "node")
KIND_TOOLS = ("kind", "helm", "crictl", "coredns")


def build_all(registry: str = IMAGE_REGISTRY) -> tuple[str, dict[str, str]]:
    """The node image and Voxa's images. On a cold machine their inputs are built side by side:
    debootstrap mostly waits on the network while the Go builds keep the CPUs busy."""
    inputs: list[Callable[[], object]] = [
        lambda: [base_image(name) for name in ROOTFS_SETS],
        kube_binary,
        lambda: [tool(name) for name in KIND_TOOLS],
        stunnerd_binary,
    ]
    with ThreadPoolExecutor(max_workers=len(inputs)) as pool:
        for job in [pool.submit(step) for step in inputs]:
            job.result()
    return node_image(), voxa_images(registry)
