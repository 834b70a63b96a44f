"""AWX / Automation Platform: the execution environment's build context, and both playbooks run through
ansible-runner with a private data directory laid out as AWX lays it out."""

from __future__ import annotations

import glob
import json
import os
import shutil
import subprocess
import sys

import pytest
import yaml
from helpers.inventory import clean_ansible_env, local_host, provision_slug, tool, write_inventory

pytestmark = pytest.mark.integration

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SECRET = "s3cret-registry-password-for-the-runner-test"


def network_is_unshareable() -> bool:
    return (
        shutil.which("unshare") is not None
        and subprocess.run(["unshare", "--net", "true"], check=False).returncode == 0
    )


def test_execution_environment_context_is_made_offline(tmp_path):
    context = tmp_path / "context"
    # -o: use the virtualenv as it is; `make test` made it already.
    command = ["make", "-C", REPO, "-o", os.path.join(os.path.dirname(sys.executable), ".installed")]
    command += ["ee-context", "EE_CONTEXT=%s" % context]
    if network_is_unshareable():
        # A network namespace with nothing in it: any download attempt fails the test.
        command = ["unshare", "--net", "--", *command]
    proc = subprocess.run(command, capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr

    containerfile = (context / "Containerfile").read_text()
    assert "FROM $EE_BASE_IMAGE AS base" in containerfile
    assert "COPY _build/collections/ /build/collections/" in containerfile
    assert "ansible-galaxy collection install" in containerfile
    build = context / "_build"
    with open(os.path.join(REPO, "meta", "requirements.txt")) as stream:
        assert (build / "requirements.txt").read_text() == stream.read()
    with open(os.path.join(REPO, "meta", "bindep.txt")) as stream:
        assert (build / "bindep.txt").read_text() == stream.read()
    galaxy = yaml.safe_load((build / "requirements.yml").read_text())
    assert galaxy == {"collections": [{"name": "/build/collections/ironcore-image.tar.gz", "type": "file"}]}

    # What the image build does with this context, minus the container: install the collection from the
    # tarball in the context, then ansible-builder's own introspection collects every dependency.
    collections = tmp_path / "collections"
    tarball = str(build / "collections" / "ironcore-image.tar.gz")
    subprocess.run(
        [tool("ansible-galaxy"), "collection", "install", "--force", "-p", str(collections), tarball],
        env=clean_ansible_env(),
        capture_output=True,
        check=True,
    )
    user_files = ["--user-pip", str(build / "requirements.txt"), "--user-bindep", str(build / "bindep.txt")]
    introspect = subprocess.run(
        [sys.executable, str(build / "scripts" / "introspect.py"), "introspect", str(collections), *user_files],
        capture_output=True,
        text=True,
        check=True,
    )
    found = yaml.safe_load(introspect.stdout)
    python = [line.split("#")[0].strip() for line in found["python"] if "from collection ironcore.image" in line]
    # Exactly what the collection declares, in its order.
    with open(os.path.join(REPO, "meta", "requirements.txt")) as stream:
        declared = [line.strip() for line in stream if line.strip() and not line.startswith("#")]
    assert "jsonschema>=4.0" in declared
    assert python == declared
    system = [line.split("#")[0].strip() for line in found["system"] if "from collection ironcore.image" in line]
    assert "openssh-clients [platform:rpm]" in system


def events_of(private_data_dir, ident):
    events = []
    for path in glob.glob(os.path.join(private_data_dir, "artifacts", ident, "job_events", "*.json")):
        with open(path) as stream:
            events.append(json.load(stream))
    return sorted(events, key=lambda event: event["counter"])


def task_events(events, event_type, task_suffix):
    return [
        event
        for event in events
        if event["event"] == event_type and event["event_data"].get("task", "").endswith(task_suffix)
    ]


def test_runner_runs_build_and_provision_like_awx(installed_collections, tmp_path):
    private = tmp_path / "private"
    project = private / "project"
    # AWX checks out the project (this repository) and runs the playbook from there; the collection
    # itself comes from the execution environment, here: installed from its tarball.
    shutil.copytree(os.path.join(REPO, "playbooks"), project / "playbooks")
    shutil.copy(os.path.join(REPO, "ansible.cfg"), project / "ansible.cfg")
    (private / "env").mkdir(parents=True)
    (private / "inventory").mkdir()
    artifacts = tmp_path / "in"
    artifacts.mkdir()
    artifact = {"architecture": "amd64", "cmdline": "console=ttyS0 awx=1"}
    for role in ("kernel", "initramfs", "rootfs"):
        (artifacts / role).write_bytes(("%s for the runner test\n" % role).encode() * 100)
        artifact[role] = str(artifacts / role)
    layout = tmp_path / "layout"
    name = "registry.example.com/os/awx:1.0"
    write_inventory(
        str(private / "inventory" / "hosts.yml"),
        {
            "build_hosts": {"builder": local_host()},
            "baremetal": {
                "pxe": local_host(
                    provision_boot_dir=str(tmp_path / "boot"), provision_cache_dir=str(tmp_path / "cache-pxe")
                )
            },
            "hypervisors": {
                "hv": local_host(
                    provision_pool_dir=str(tmp_path / "pool"), provision_cache_dir=str(tmp_path / "cache-hv")
                )
            },
        },
    )
    # Survey answers and injected credentials arrive as extra vars.
    extravars = {
        "build_name": name,
        "build_artifacts": [artifact],
        "build_layout": str(layout),
        "build_registry_username": "builder",
        "build_registry_password": SECRET,
        "provision_name": name,
        "provision_layout": str(layout),
        "provision_boot_url": "http://pxe.example.com/boot",
        "provision_registry_username": "puller",
        "provision_registry_password": SECRET,
    }
    # The credential type's other fields as AWX renders them when left empty: strings, never absent.
    for role in ("build", "provision"):
        extravars.update(
            {
                "%s_registry_ca_cert" % role: "",
                "%s_registry_docker_config" % role: "",
                "%s_registry_plain_http" % role: "False",
            }
        )
    (private / "env" / "extravars").write_text(yaml.safe_dump(extravars))
    (private / "env" / "envvars").write_text(
        yaml.safe_dump(
            {"ANSIBLE_COLLECTIONS_PATH": installed_collections, "ANSIBLE_COLLECTIONS_SCAN_SYS_PATH": "false"}
        )
    )

    for ident, playbook in (("build", "playbooks/build.yml"), ("provision", "playbooks/provision.yml")):
        proc = subprocess.run(
            [tool("ansible-runner"), "run", str(private), "--playbook", playbook, "--ident", ident],
            env=clean_ansible_env(),
            capture_output=True,
            text=True,
            check=False,
            timeout=600,
        )
        status = (private / "artifacts" / ident / "status").read_text().strip()
        assert (proc.returncode, status) == (0, "successful"), proc.stdout[-3000:] + proc.stderr[-3000:]
        assert (private / "artifacts" / ident / "rc").read_text().strip() == "0"

    build_events = events_of(str(private), "build")
    (built,) = task_events(build_events, "runner_on_ok", "Build the image into the layout")
    assert built["event_data"]["host"] == "builder"
    assert built["event_data"]["res"]["changed"] is True
    digest = built["event_data"]["res"]["digest"]
    (stats,) = [event for event in build_events if event["event"] == "playbook_on_stats"]
    assert stats["event_data"]["artifact_data"]["ironcore_image_builds"]["builder"] == {
        "reference": "%s@%s" % (name, digest),
        "digest": digest,
        "pushed": False,
    }
    assert stats["event_data"]["changed"] == {"builder": 1}

    provision_events = events_of(str(private), "provision")
    (rendered,) = task_events(provision_events, "runner_on_ok", "Render the iPXE script")
    assert rendered["event_data"]["host"] == "pxe" and rendered["event_data"]["res"]["changed"] is True
    fetched = {
        event["event_data"]["host"]: event
        for event in task_events(provision_events, "runner_on_ok", "Fetch the image's files")
    }
    assert sorted(fetched) == ["hv", "pxe"]
    assert all(event["event_data"]["res"]["digest"] == digest for event in fetched.values())
    assert [event for event in provision_events if event["event"] == "runner_on_failed"] == []
    assert (tmp_path / "pool" / ("%s.raw" % provision_slug(name))).read_bytes() == (artifacts / "rootfs").read_bytes()

    # Credentials never reach the job output or the events AWX stores.
    for path in glob.glob(os.path.join(private, "artifacts", "**", "*"), recursive=True):
        if os.path.isfile(path):
            with open(path, errors="replace") as stream:
                assert SECRET not in stream.read(), "the registry password leaked into %s" % path


def role_options(role):
    with open(os.path.join(REPO, "roles", role, "meta", "argument_specs.yml")) as stream:
        return yaml.safe_load(stream)["argument_specs"]["main"]["options"]


SURVEY_TYPES = {"text", "textarea", "password", "integer", "float", "multiplechoice", "multiselect"}


@pytest.mark.parametrize(("survey", "role"), [("build-survey.json", "build"), ("provision-survey.json", "provision")])
def test_survey_specs_ask_for_role_variables(survey, role):
    with open(os.path.join(REPO, "docs", "awx", survey)) as stream:
        spec = json.load(stream)
    options = role_options(role)
    assert spec["name"] and spec["description"] and spec["spec"]
    for question in spec["spec"]:
        assert {"question_name", "required", "type", "variable"} <= set(question), question
        assert question["type"] in SURVEY_TYPES
        option = options[question["variable"]]  # a KeyError names a survey variable the role does not know
        if question["type"] in ("multiplechoice", "multiselect"):
            choices = question["choices"].split("\n")
            allowed = option.get("choices") or (["true", "false"] if option["type"] == "bool" else None)
            assert allowed is not None and set(choices) <= {str(choice) for choice in allowed}, question
            assert set(question["default"].split("\n")) <= set(choices)
        if option.get("required"):
            assert question["required"] is True, question["variable"]
    assert [q["variable"] for q in spec["spec"] if q["type"] == "password"] == []  # credentials carry secrets


def test_credential_type_injects_the_registry_variables_of_both_roles():
    with open(os.path.join(REPO, "docs", "awx", "credential-type.json")) as stream:
        credential_type = json.load(stream)
    secret_fields = {field["id"] for field in credential_type["inputs"]["fields"] if field.get("secret")}
    assert secret_fields == {"password"}
    injected = credential_type["injectors"]["extra_vars"]
    for variable, template in injected.items():
        role = variable.split("_", 1)[0]
        option = role_options(role)[variable]
        # The password reaches the roles only through options they never print.
        assert option.get("no_log", False) == ("password" in template), variable
    fields = {field["id"]: field for field in credential_type["inputs"]["fields"]}
    assert set(fields) == {"username", "password", "ca_cert", "plain_http", "docker_config"}
    # Each field reaches the role variable of the same name in both roles, and nothing else is injected.
    assert injected == {
        "%s_registry_%s" % (role, field): "{{ %s }}" % field for role in ("build", "provision") for field in fields
    }
    # A boolean field feeds a bool option, the file fields path options (on the hosts), the rest strings.
    option_types = {
        "username": "str",
        "password": "str",
        "ca_cert": "path",
        "plain_http": "bool",
        "docker_config": "path",
    }
    assert {field: fields[field]["type"] == "boolean" for field in fields} == {
        field: kind == "bool" for field, kind in option_types.items()
    }
    for variable in injected:
        role, field = variable.split("_registry_")
        assert role_options(role)[variable]["type"] == option_types[field], variable


def test_prune_survey_asks_for_the_variables_of_the_clean_up_playbook():
    with open(os.path.join(REPO, "docs", "awx", "prune-survey.json")) as stream:
        spec = json.load(stream)
    with open(os.path.join(REPO, "playbooks", "prune.yml")) as stream:
        playbook = stream.read()
    assert spec["name"] and spec["description"] and spec["spec"]
    for question in spec["spec"]:
        assert {"question_name", "required", "type", "variable"} <= set(question), question
        assert question["type"] in SURVEY_TYPES
        assert question["variable"] in playbook, question["variable"]
    orders = next(q for q in spec["spec"] if q["variable"] == "prune_order")["choices"].split("\n")
    assert orders == ["semver", "created", "tag"]
