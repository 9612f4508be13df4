"""serving/ (Dockerfiles, models.config, Kubernetes manifests) agrees with what the exporter writes.

No Docker engine or cluster runs here, so the files are checked against the exporter's own
constants: model names (= component names), container paths, ports, the REST timeout and
the GPU placement. A rename on either side fails here instead of in a deployment.
"""

import os
import re

import pytest
import yaml

from exports import savedmodel
from exports.build import GRPC_PORT, REST_PORT, REST_TIMEOUT_MS
from exports.plan import COMPONENTS

ROOT = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "serving")
GPU = {"diffusion", "decoder", "image_encoder"}


def read(*parts):
    with open(os.path.join(ROOT, *parts), encoding="utf-8") as f:
        return f.read()


def k8s_docs():
    docs = []
    for name in sorted(os.listdir(os.path.join(ROOT, "k8s"))):
        if name.endswith(".yaml") and name != "kustomization.yaml":
            docs += [d for d in yaml.safe_load_all(read("k8s", name)) if d]
    return docs


def deployments():
    """model name -> (Deployment, its tf-serving container)."""
    out = {}
    for d in k8s_docs():
        if d["kind"] == "Deployment":
            container = d["spec"]["template"]["spec"]["containers"][0]
            env = {e["name"]: e["value"] for e in container.get("env", [])}
            out[env["MODEL_NAME"]] = (d, container)
    return out


def test_models_config_matches_the_exporter():
    assert read("models.config") == savedmodel.models_config(COMPONENTS)
    for name in COMPONENTS:
        assert f'base_path: "{savedmodel.CONTAINER_ROOT}/{name}"' in read("models.config")


@pytest.mark.parametrize("component", COMPONENTS)
def test_component_dockerfile_serves_the_exported_folder(component):
    text = read("docker", f"Dockerfile.{component}")
    assert f"ENV MODEL_NAME={component}\n" in text
    assert f"COPY savedmodel/{component} {savedmodel.CONTAINER_ROOT}/{component}\n" in text
    assert f"COPY savedmodel/{savedmodel.BATCHING_CONFIG} {savedmodel.CONTAINER_ROOT}/{savedmodel.BATCHING_CONFIG}" in text
    assert f"EXPOSE {GRPC_PORT} {REST_PORT}" in text
    assert f"--rest_api_timeout_in_ms={REST_TIMEOUT_MS}" in text
    base = re.search(r"^FROM (\S+)", text, re.M).group(1)
    assert base.startswith("tensorflow/serving:") and base.endswith("-gpu") == (component in GPU)


def test_all_in_one_dockerfile_uses_the_generated_models_config():
    text = read("docker", "Dockerfile.all")
    assert f"COPY savedmodel {savedmodel.CONTAINER_ROOT}\n" in text
    assert f"--model_config_file={savedmodel.CONTAINER_ROOT}/{savedmodel.MODELS_CONFIG}" in text
    assert f"--port={GRPC_PORT}" in text and f"--rest_api_port={REST_PORT}" in text
    assert f"--batching_parameters_file={savedmodel.CONTAINER_ROOT}/{savedmodel.BATCHING_CONFIG}" in text


def test_deployments_name_ports_timeouts_and_gpus():
    deps = deployments()
    assert sorted(deps) == sorted(COMPONENTS)
    for model, (dep, container) in deps.items():
        assert container["image"].startswith(f"sd-serving/{model}:")
        ports = {p["name"]: p["containerPort"] for p in container["ports"]}
        assert ports == {"grpc": GRPC_PORT, "http": REST_PORT}
        assert f"--rest_api_timeout_in_ms={REST_TIMEOUT_MS}" in container["args"]
        assert f"--batching_parameters_file={savedmodel.CONTAINER_ROOT}/{savedmodel.BATCHING_CONFIG}" in container["args"]
        assert container["readinessProbe"]["httpGet"] == {"path": f"/v1/models/{model}", "port": REST_PORT}
        limits = container["resources"]["limits"]
        spec = dep["spec"]["template"]["spec"]
        if model in GPU:
            assert limits.get("nvidia.com/gpu") == 1
            assert any(t["key"] == "nvidia.com/gpu" for t in spec["tolerations"])
        else:
            assert "nvidia.com/gpu" not in limits and "tolerations" not in spec
        labels = dep["spec"]["template"]["metadata"]["labels"]
        assert all(labels.get(k) == v for k, v in dep["spec"]["selector"]["matchLabels"].items())


def test_services_hpas_and_ingress_point_at_real_deployments():
    docs = k8s_docs()
    deps = {d["metadata"]["name"]: d for d in docs if d["kind"] == "Deployment"}
    services = {d["metadata"]["name"]: d for d in docs if d["kind"] == "Service"}
    model_of = {name: next(e["value"] for e in d["spec"]["template"]["spec"]["containers"][0]["env"]
                           if e["name"] == "MODEL_NAME") for name, d in deps.items()}
    for name, svc in services.items():
        target = [n for n, d in deps.items()
                  if all(d["spec"]["template"]["metadata"]["labels"].get(k) == v
                         for k, v in svc["spec"]["selector"].items())]
        assert target == [name]
        assert {p["targetPort"] for p in svc["spec"]["ports"]} == {GRPC_PORT, REST_PORT}
    hpas = [d for d in docs if d["kind"] == "HorizontalPodAutoscaler"]
    assert hpas and all(h["spec"]["scaleTargetRef"]["name"] in deps for h in hpas)

    (ingress,) = [d for d in docs if d["kind"] == "Ingress"]
    notes = ingress["metadata"]["annotations"]
    assert int(notes["nginx.ingress.kubernetes.io/proxy-read-timeout"]) * 1000 >= REST_TIMEOUT_MS
    paths = [p for rule in ingress["spec"]["rules"] for p in rule["http"]["paths"]]
    routed = {}
    for p in paths:
        svc = p["backend"]["service"]
        assert svc["port"]["number"] == REST_PORT and svc["name"] in services
        for model in COMPONENTS:
            for url in (f"/v1/models/{model}:predict", f"/v1/models/{model}/versions/1:predict"):
                if re.fullmatch(p["path"], url):
                    routed.setdefault(url, []).append(model_of[svc["name"]])
    for model in COMPONENTS:
        assert routed[f"/v1/models/{model}:predict"] == [model]
        assert routed[f"/v1/models/{model}/versions/1:predict"] == [model]


def test_kustomization_lists_every_manifest():
    listed = yaml.safe_load(read("k8s", "kustomization.yaml"))["resources"]
    present = [n for n in os.listdir(os.path.join(ROOT, "k8s")) if n.endswith(".yaml") and n != "kustomization.yaml"]
    assert sorted(listed) == sorted(present)
