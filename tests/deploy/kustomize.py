"""Rendering the Kubernetes overlays: `kubectl kustomize` when it is installed, and a minimal renderer always.

The minimal renderer implements exactly the kustomization features deploy/k8s uses (resources as files or
directories, `labels` with includeTemplates/includeSelectors, `images`) and refuses any other key, so it cannot
silently render something kustomize would render differently. Where kubectl is present the tests compare both.
"""

from __future__ import annotations

import copy
import shutil
import subprocess
from pathlib import Path
from typing import Any

import yaml

Doc = dict[str, Any]
SUPPORTED_KEYS = frozenset({"apiVersion", "kind", "resources", "labels", "images"})
# Kinds whose pod template the labels transformer reaches with includeTemplates.
WORKLOADS = frozenset({"Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job"})


class KustomizeError(ValueError):
    pass


def load_documents(path: Path) -> list[Doc]:
    """Every non-empty YAML document of a file."""
    with path.open(encoding="utf-8") as handle:
        return [doc for doc in yaml.safe_load_all(handle) if doc is not None]


def render(directory: Path) -> list[Doc]:
    """The resources of the kustomization in `directory`, transformed as kustomize would."""
    file = directory / "kustomization.yaml"
    if not file.is_file():
        raise KustomizeError(f"{directory}: no kustomization.yaml")
    spec = yaml.safe_load(file.read_text(encoding="utf-8")) or {}
    unknown = set(spec) - SUPPORTED_KEYS
    if unknown:
        raise KustomizeError(f"{file}: the test renderer does not implement {sorted(unknown)}")
    docs: list[Doc] = []
    for entry in spec.get("resources", []):
        target = (directory / entry).resolve()
        if target.is_dir():
            docs.extend(render(target))
        elif target.is_file():
            if not target.is_relative_to(directory.resolve()):
                raise KustomizeError(f"{file}: {entry} is a file outside the kustomization's directory")
            docs.extend(copy.deepcopy(load_documents(target)))
        else:
            raise KustomizeError(f"{file}: resource {entry} does not exist")
    for label in spec.get("labels", []):
        _labels(docs, label)
    for image in spec.get("images", []):
        _images(docs, image)
    keys = [identity(doc) for doc in docs]
    duplicates = {key for key in keys if keys.count(key) > 1}
    if duplicates:
        raise KustomizeError(f"{file}: resources defined twice: {sorted(duplicates)}")
    return docs


def identity(doc: Doc) -> tuple[str, str, str]:
    return str(doc.get("apiVersion")), str(doc.get("kind")), str(doc.get("metadata", {}).get("name"))


def _labels(docs: list[Doc], label: Doc) -> None:
    pairs = {str(k): str(v) for k, v in label.get("pairs", {}).items()}
    for doc in docs:
        doc.setdefault("metadata", {}).setdefault("labels", {}).update(pairs)
        spec = doc.get("spec", {})
        if label.get("includeSelectors"):
            raise KustomizeError("labels with includeSelectors: selectors are immutable; not used by deploy/k8s")
        if label.get("includeTemplates") and doc.get("kind") in WORKLOADS:
            spec["template"].setdefault("metadata", {}).setdefault("labels", {}).update(pairs)


def _images(docs: list[Doc], image: Doc) -> None:
    name = image["name"]
    for doc in docs:
        pod = doc.get("spec", {}).get("template", {}).get("spec", {})
        for container in [*pod.get("containers", []), *pod.get("initContainers", [])]:
            current: str = container.get("image", "")
            base, _, tag = current.partition(":")
            if base != name:
                continue
            container["image"] = f"{image.get('newName', base)}:{image.get('newTag', tag)}"


def kubectl() -> str | None:
    """The kubectl binary, when installed and its built-in kustomize works."""
    binary = shutil.which("kubectl")
    if binary is None:
        return None
    probe = subprocess.run([binary, "version", "--client"], capture_output=True, text=True, timeout=30, check=False)
    return binary if probe.returncode == 0 and "Kustomize" in probe.stdout else None


def render_with_kubectl(binary: str, directory: Path) -> list[Doc]:
    result = subprocess.run(
        [binary, "kustomize", str(directory)], capture_output=True, text=True, timeout=60, check=False
    )
    if result.returncode != 0:
        raise KustomizeError(f"kubectl kustomize {directory}: {result.stderr.strip()}")
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc is not None]
