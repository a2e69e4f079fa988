"""The Kubernetes and KServe manifests: valid against the Kubernetes schemas (strict: an unknown or
misspelt field fails), and consistent with each other, the Dockerfile and ``imgclf serve``'s flags."""

from __future__ import annotations

import argparse
import copy
import re
import shutil
import subprocess
from pathlib import Path

import pytest

yaml = pytest.importorskip("yaml")
kubernetes_validate = pytest.importorskip("kubernetes_validate", reason="pip install kubernetes-validate (the deploy extra)")
jsonschema = pytest.importorskip("jsonschema")

REPO = Path(__file__).resolve().parents[1]
K8S = REPO / "deploy" / "kubernetes"
ISVC = REPO / "deploy" / "kserve" / "inferenceservice.yaml"
# The oldest Kubernetes still widely run, and the newest the validator knows.
VERSIONS = ["1.29.0", kubernetes_validate.latest_version()]


def _docs(path: Path) -> list[dict]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def _resources() -> dict[str, dict]:
    """Kind (or "Kind/name" where a kind repeats) -> resource, over deploy/kubernetes (the Secret example included)."""
    docs = [doc for path in sorted(K8S.glob("*.yaml")) if path.name != "kustomization.yaml" for doc in _docs(path)]
    kinds = [doc["kind"] for doc in docs]
    return {d["kind"] if kinds.count(d["kind"]) == 1 else f"{d['kind']}/{d['metadata']['name']}": d for d in docs}


def _serve_args(argv: list[str]) -> argparse.Namespace:
    """A container's command line, parsed by ``imgclf serve``'s own argument parser."""
    from imgclf.commands import serve

    assert argv[:2] == ["imgclf", "serve"], argv
    parser = argparse.ArgumentParser(exit_on_error=False)
    serve.add_arguments(parser)
    return parser.parse_args(argv[2:])


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("path", sorted(p.name for p in K8S.glob("*.yaml") if p.name != "kustomization.yaml"))
def test_manifest_is_valid_kubernetes(path, version):
    for doc in _docs(K8S / path):
        kubernetes_validate.validate(doc, version, strict=True)


def test_strict_validation_catches_a_misspelt_field():
    deployment = copy.deepcopy(_resources()["Deployment"])
    deployment["spec"]["template"]["spec"]["containers"][0]["readinesProbe"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, VERSIONS[-1], strict=True)


def test_kustomization_lists_every_resource_but_the_secret_example_and_the_store_pod():
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    listed = set(kustomization["resources"])
    on_disk = {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml", "secret.example.yaml", "store-pod.yaml"}
    assert listed == on_disk
    image = _resources()["Deployment"]["spec"]["template"]["spec"]["containers"][0]["image"]
    assert [i["name"] for i in kustomization["images"]] == [image.split(":")[0]]


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl is not installed (its kustomize renders offline)")
def test_kustomize_renders_valid_resources():
    out = subprocess.run(["kubectl", "kustomize", str(K8S)], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    rendered = [d for d in yaml.safe_load_all(out.stdout) if d]
    assert sorted(d["kind"] for d in rendered) == sorted(
        ["Deployment", "Service", "HorizontalPodAutoscaler", "PodDisruptionBudget", "PersistentVolumeClaim",
         "PersistentVolumeClaim"])
    for doc in rendered:
        kubernetes_validate.validate(doc, VERSIONS[-1], strict=True)
        assert doc["metadata"]["labels"]["app.kubernetes.io/part-of"] == "imgclf"
    deployment = next(d for d in rendered if d["kind"] == "Deployment")
    assert deployment["spec"]["template"]["spec"]["containers"][0]["image"] == "imgclf-serve:0.1.0"


def test_deployment_probes_secret_store_and_shutdown_fit_together(monkeypatch):
    res = _resources()
    deployment, pod = res["Deployment"], res["Deployment"]["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    args = _serve_args(container["args"])
    port = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert args.port == port["http"] and args.host == "0.0.0.0"
    assert container["readinessProbe"]["httpGet"] == {"path": "/v2/health/ready", "port": "http"}
    assert container["livenessProbe"]["httpGet"] == {"path": "/v2/health/live", "port": "http"}
    # The pod drains before Kubernetes kills it.
    assert pod["terminationGracePeriodSeconds"] > args.shutdown_delay + args.graceful_timeout
    # The drain outlasts the readiness probe's detection of it.
    probe = container["readinessProbe"]
    assert args.shutdown_delay >= probe["periodSeconds"] * probe["failureThreshold"]
    # Thread pools sized to the CPU request.
    cpus = int(container["resources"]["requests"]["cpu"])
    assert args.ort_threads == cpus and args.decode_threads == cpus
    # The model store is the shared PVC, mounted where --model-dir points.
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    store = next(n for n, path in mounts.items() if path == args.model_dir)
    assert volumes[store]["persistentVolumeClaim"]["claimName"] == "imgclf-models"
    # The feedback images: shared too, where imgclf serve keeps them by default ($IMGCLF_HOME/feedback).
    env = {e["name"]: e.get("value") for e in container["env"]}
    feedback = next(n for n, path in mounts.items() if path == env["IMGCLF_HOME"] + "/feedback")
    assert volumes[feedback]["persistentVolumeClaim"]["claimName"] == "imgclf-feedback"
    for claim in ("imgclf-models", "imgclf-feedback"):
        assert "ReadWriteMany" in res[f"PersistentVolumeClaim/{claim}"]["spec"]["accessModes"]
    # Every path the read-only root filesystem leaves writable is a volume.
    assert container["securityContext"]["readOnlyRootFilesystem"] and {"/tmp", env["IMGCLF_HOME"]} <= set(mounts.values())
    # Secrets come from the Secret, by keys the example shows.
    refs = {e["name"]: e["valueFrom"]["secretKeyRef"] for e in container["env"] if "valueFrom" in e}
    assert set(refs) == {"IMGCLF_API_KEY", "IMGCLF_FEEDBACK_DB"}
    assert refs["IMGCLF_FEEDBACK_DB"]["optional"]  # feedback only where the Secret has a database URL
    # ... and imgclf serve reads them under those names.
    monkeypatch.setenv("IMGCLF_API_KEY", "k")
    monkeypatch.setenv("IMGCLF_FEEDBACK_DB", "postgresql+psycopg://u:p@h/db")
    from_env = _serve_args(container["args"])
    assert (from_env.api_key, from_env.db) == ("k", "postgresql+psycopg://u:p@h/db")
    for ref in refs.values():
        assert ref["name"] == res["Secret"]["metadata"]["name"] and ref["key"] in res["Secret"]["stringData"]
    # Non-root, as the image's USER.
    uid = re.search(r"^ARG UID=(\d+)$", (REPO / "Dockerfile").read_text(), re.M)
    assert uid and pod["securityContext"]["runAsNonRoot"] and pod["securityContext"]["runAsUser"] == int(uid.group(1))
    # Service, autoscaler and disruption budget reach this Deployment's pods.
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert res["Service"]["spec"]["selector"].items() <= labels.items()
    assert res["Service"]["spec"]["ports"][0]["targetPort"] == "http"
    assert res["HorizontalPodAutoscaler"]["spec"]["scaleTargetRef"]["name"] == deployment["metadata"]["name"]
    assert res["PodDisruptionBudget"]["spec"]["selector"]["matchLabels"].items() <= labels.items()


# The InferenceService's own fields beside the pod spec that KServe's predictor inlines (names and
# types as in KServe's serving.kserve.io/v1beta1 CRD, PredictorSpec/ComponentExtensionSpec).
KSERVE_PREDICTOR_FIELDS = {
    "minReplicas": {"type": "integer", "minimum": 0},
    "maxReplicas": {"type": "integer", "minimum": 0},
    "scaleMetric": {"enum": ["cpu", "memory", "concurrency", "rps"]},
    "scaleTarget": {"type": "integer", "minimum": 1},
    "containerConcurrency": {"type": "integer", "minimum": 0},
    "timeout": {"type": "integer", "minimum": 0},
    "canaryTrafficPercent": {"type": "integer", "minimum": 0, "maximum": 100},
    "labels": {"type": "object", "additionalProperties": {"type": "string"}},
    "annotations": {"type": "object", "additionalProperties": {"type": "string"}},
}
ISVC_SCHEMA = {
    "type": "object",
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "additionalProperties": False,
    "properties": {
        "apiVersion": {"const": "serving.kserve.io/v1beta1"},
        "kind": {"const": "InferenceService"},
        "metadata": {"type": "object", "required": ["name"]},
        "spec": {"type": "object", "required": ["predictor"], "additionalProperties": False,
                 "properties": {"predictor": {"type": "object", "required": ["containers"]}}},
    },
}


def test_inferenceservice_is_a_valid_custom_v2_predictor():
    (isvc,) = _docs(ISVC)
    jsonschema.validate(isvc, ISVC_SCHEMA)
    predictor = isvc["spec"]["predictor"]
    kserve = {k: v for k, v in predictor.items() if k in KSERVE_PREDICTOR_FIELDS}
    for key, value in kserve.items():
        jsonschema.validate(value, KSERVE_PREDICTOR_FIELDS[key])
    # The rest is a Kubernetes pod spec: validate it as one, strictly.
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "imgclf-predictor"},
           "spec": {k: v for k, v in predictor.items() if k not in KSERVE_PREDICTOR_FIELDS}}
    for version in VERSIONS:
        kubernetes_validate.validate(pod, version, strict=True)

    # CPU autoscaling is the HPA's (raw deployment mode): KServe refuses scaleMetric cpu under Knative.
    annotations = isvc["metadata"]["annotations"]
    assert annotations["serving.kserve.io/deploymentMode"] in ("RawDeployment", "Standard")
    assert annotations["serving.kserve.io/autoscalerClass"] == "hpa" and predictor["scaleMetric"] == "cpu"
    assert 1 <= predictor["scaleTarget"] <= 100  # a CPU utilization percentage
    (container,) = predictor["containers"]
    assert container["name"] == "kserve-container"  # the container KServe routes to
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["PROTOCOL"] == "v2"  # a custom predictor declares its protocol in this variable
    args = _serve_args(container["args"])
    assert [p["containerPort"] for p in container["ports"]] == [args.port] == [8080]  # KServe's default port
    assert args.model_dir == "/mnt/models" and env["STORAGE_URI"].startswith("pvc://")
    assert container["readinessProbe"]["httpGet"]["path"] == "/v2/health/ready"
    assert container["livenessProbe"]["httpGet"]["path"] == "/v2/health/live"
    assert predictor["terminationGracePeriodSeconds"] > args.shutdown_delay + args.graceful_timeout
    assert predictor["securityContext"]["runAsNonRoot"]
