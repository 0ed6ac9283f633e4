"""The Bicep templates in infra/, parsed with pycep-parser (the Bicep CLI is a downloaded binary), and
their resource graph asserted: scale to zero, the reap job, role scopes, secrets, the Bot endpoint.

pycep gives each file as JSON; an identifier and a string literal look alike there ("minReplicas"),
so references are compared by name, and the few literal values that matter by value.
"""
from __future__ import annotations

import asyncio
import json
import re
from functools import lru_cache
from pathlib import Path

import pytest
from pycep import BicepParser

from bot.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
INFRA = ROOT / "infra"
ENTRY_POINTS = ("main.bicep", "groups.bicep")
ROLE_ASSIGNMENT = "Microsoft.Authorization/roleAssignments"
TABLE_DATA_CONTRIBUTOR = "0a9a7e1f-b9d0-4cc4-a60d-0319b160aaa3"
ACR_PULL = "7f951dda-4ed3-4680-a7ca-43fe172d538d"
SECRET_NAME = re.compile(r"(?i)secret|token|password|key|botid|connection")


@lru_cache(maxsize=None)
def parse(rel: str) -> dict:
    return BicepParser().parse(text=(INFRA / rel).read_text())


def body(node: dict) -> dict:
    """A resource's or module's properties, unwrapping `= if (condition) {...}`."""
    config = node["config"]
    return config["config"] if "condition" in config else config


def ref(expr) -> str:
    """`a.b.c` for pycep's nested property accessors; a plain name or literal stays as it is."""
    if isinstance(expr, dict) and "operator" in expr and expr["operator"]["type"] == "property_accessor":
        ops = expr["operator"]["operands"]
        return f"{ref(ops['operand_1'])}.{ref(ops['operand_2'])}"
    if isinstance(expr, dict) and "function" in expr:
        fn = expr["function"]
        args = ",".join(str(ref(v)) for v in (fn.get("parameters") or {}).values() if v is not None)
        return f"{fn['type']}({args})"
    return expr


def all_files() -> dict[str, dict]:
    """Every template reachable from the entry points, by path relative to infra/."""
    seen: dict[str, dict] = {}
    todo = list(ENTRY_POINTS)
    while todo:
        rel = todo.pop()
        if rel in seen:
            continue
        seen[rel] = parse(rel)
        base = Path(rel).parent
        for module in seen[rel].get("modules", {}).values():
            todo.append(str((base / module["detail"]["path"]).as_posix()))
    return seen


def module_file(owner: str, module_name: str) -> str:
    return str((Path(owner).parent / parse(owner)["modules"][module_name]["detail"]["path"]).as_posix())


def app_resources() -> dict:
    return parse("modules/containerapps.bicep")["resources"]


def settings_env(container: dict) -> list[dict]:
    """The container's env list: concat(settings, groupmeEnv) resolved through the variables."""
    variables = parse("modules/containerapps.bicep")["variables"]
    env = container["env"]
    parts = env["function"]["parameters"].values() if isinstance(env, dict) and "function" in env else [env]
    out = []
    for part in parts:
        out.extend(every_branch(variables[part]["value"] if isinstance(part, str) else part))
    return out


def every_branch(value) -> list:
    """A list built from `cond ? [...] : []` and concat(): every item any branch may add."""
    if isinstance(value, dict) and "operator" in value and value["operator"]["type"] == "conditional":
        return every_branch(value["operator"]["operands"]["true_value"])
    if isinstance(value, dict) and "function" in value and value["function"]["type"] == "concat":
        return [item for arg in value["function"]["parameters"].values() for item in every_branch(arg)]
    return list(value)


class Unsupported(Exception):
    pass


def evaluate(expr, scope: dict, variables: dict):
    """The value of a pycep expression, for the few forms the GroupMe lists use: names (parameters from
    `scope`, variables on demand), literals, lists, objects, `? :`, `!`, `&&`, `||`, concat(), empty()."""
    def ev(e):
        if isinstance(e, str):
            if e in scope:
                return scope[e]
            if e in variables:
                return ev(variables[e]["value"])
            return e
        if isinstance(e, list):
            return [ev(item) for item in e]
        if not isinstance(e, dict):
            return e
        if "operator" in e:
            kind, ops = e["operator"]["type"], e["operator"]["operands"]
            if kind == "conditional":
                return ev(ops["true_value"]) if ev(ops["condition"]) else ev(ops["false_value"])
            if kind == "not":
                return not ev(ops["bool_value"])
            if kind in ("and", "or"):
                a, b = ev(ops["operand_1"]), ev(ops["operand_2"])
                return (a and b) if kind == "and" else (a or b)
            raise Unsupported(kind)
        if "function" in e:
            fn = e["function"]
            args = [ev(v) for v in (fn.get("parameters") or {}).values()]
            if fn["type"] == "concat":
                return [item for arg in args for item in arg]
            if fn["type"] == "empty":
                return args[0] in ("", [], {}, None)
            raise Unsupported(fn["type"])
        return {k: ev(v) for k, v in e.items()}
    return ev(expr)


# ----- the graph is whole --------------------------------------------------------------------------


def test_every_template_parses_and_every_module_call_matches_its_parameters():
    files = all_files()
    assert {"main.bicep", "groups.bicep", "modules/containerapps.bicep", "modules/storage.bicep",
            "modules/session-access.bicep", "modules/bot-service.bicep", "modules/registry-pull.bicep",
            "modules/registry.bicep"} <= set(files)
    for rel, doc in files.items():
        for name, module in doc.get("modules", {}).items():
            target = parse(module_file(rel, name))
            declared = target.get("parameters", {})
            passed = body(module).get("params", {})
            assert set(passed) <= set(declared), f"{rel}:{name} passes unknown {set(passed) - set(declared)}"
            required = {p for p, d in declared.items() if d.get("default") is None}
            assert required <= set(passed), f"{rel}:{name} misses {required - set(passed)}"


def test_the_custom_role_is_docs_azure_role_json():
    role = parse("modules/session-access.bicep")["variables"]["role"]["value"]["function"]
    assert role["type"] == "load_json_content"
    path = (INFRA / "modules" / role["parameters"]["file_path"]).resolve()
    assert path == ROOT / "docs" / "azure-role.json"
    spec = json.loads(path.read_text())
    assert spec["Actions"] and not any(a.startswith("Microsoft.Authorization/") for a in spec["Actions"])
    definition = body(parse("modules/session-access.bicep")["resources"]["operatorRole"])["properties"]
    assert [ref(s) for s in definition["assignableScopes"]] == ["resource_group().id"]
    assert ref(definition["permissions"][0]["actions"]) == "role.Actions"


def test_the_custom_role_name_is_unique_in_the_tenant_and_tear_down_finds_it():
    """Custom role names are unique per tenant: the same group name in a second subscription must not
    collide. The role is assignable on the session group only, and role definitions are listed "at scope
    and above", so `az role definition delete` finds it only when asked at that group, before it goes."""
    definition = body(parse("modules/session-access.bicep")["resources"]["operatorRole"])["properties"]
    assert "${subscription().subscriptionId}" in definition["roleName"] and "${resourceGroup().name}" in definition["roleName"]
    outputs = parse("main.bicep")["outputs"]
    assert ref(outputs["operatorRoleName"]["value"]) == "sessionAccess.outputs.roleName"
    assert ref(parse("modules/session-access.bicep")["outputs"]["roleName"]["value"]) == "operatorRole.properties.roleName"
    guide = (ROOT / "docs" / "deploy.md").read_text()
    teardown = guide[guide.index("## Tear-down"):]
    lines = [line for line in teardown.splitlines() if line.startswith(("ROLE=", "az "))]
    read = next(i for i, line in enumerate(lines) if "outputs.operatorRoleName" in line)
    delete = next(i for i, line in enumerate(lines) if line.startswith("az role definition delete"))
    assert re.search(r"(-g|--resource-group|--scope) ", lines[delete]), lines[delete]
    groups = [i for i, line in enumerate(lines) if line.startswith("az group delete")]
    assert len(groups) == 2 and read < delete < min(groups)
    unassign = next(i for i, line in enumerate(lines) if line.startswith("az role assignment delete"))
    assert unassign < delete  # a role that is still assigned cannot be deleted


# Built-in roles and whether they may create a custom role (Microsoft.Authorization/roleDefinitions/write):
# Contributor's NotActions exclude Microsoft.Authorization/*/Write; Role Based Access Control
# Administrator holds only roleAssignments/write and /delete (Microsoft Learn, "Azure built-in roles").
DEFINES_ROLES = {"Owner": True, "User Access Administrator": True, "Role Based Access Control Administrator": False}


def test_the_guide_asks_for_a_role_that_can_create_the_custom_role():
    assert any(res["type"] == "Microsoft.Authorization/roleDefinitions"
               for doc in all_files().values() for res in doc.get("resources", {}).values())
    guide = (ROOT / "docs" / "deploy.md").read_text()
    section = guide[guide.index("## Before you start"):guide.index("## Deploy")]
    bullet = next(b for b in section.split("\n* ") if "On that subscription" in b)
    offered = re.split(r"\bNot\b", bullet)[0]  # what follows "Not" is what will not do
    named = {role for role in DEFINES_ROLES if role in offered.replace("\n  ", " ")}
    assert named and all(DEFINES_ROLES[role] for role in named), named
    # Free-trial subscriptions refuse ACR Tasks: step 2 must offer a way without `az acr build`.
    assert "TasksOperationsNotAllowed" in guide and "docker push" in guide


async def test_the_session_network_is_the_one_the_azure_provider_would_create():
    """createSessionNetwork makes the VNet and NSG the bot would otherwise make on its first session: the
    provider, run against the fake ARM, must PUT the same names, tags, subnet and WireGuard rule, or the
    bot would build a second network beside the template's (or rewrite its rule)."""
    from provisioner.azure import AzureConfig, AzureProvider
    from tests.fakes.arm import FakeArm, FakeCredential

    arm = await FakeArm().start()
    try:
        provider = AzureProvider(AzureConfig("00000000-0000-0000-0000-000000000001", "vpn-bot-sessions", "eastus",
                                             arm_endpoint=arm.base_url, polling_interval=0, instance_name="vpn-bot"), FakeCredential())
        try:
            await provider._clients()
            await provider._ensure_shared("eastus")
        finally:
            await provider.close()
    finally:
        await arm.stop()
    (nsg_put,) = arm.puts("networkSecurityGroups")
    (vnet_put,) = arm.puts("virtualNetworks")

    doc = parse("modules/session-access.bicep")
    params = {name: p.get("default") for name, p in doc["parameters"].items()}
    params.update(instanceName="vpn-bot", location="eastus")

    def fill(text: str) -> str:
        return re.sub(r"\$\{(\w+)\}", lambda m: str(params[m.group(1)]), text)

    tags = {k.strip("'"): params.get(v, v) for k, v in doc["variables"]["tags"]["value"].items()}
    nsg, vnet = body(doc["resources"]["nsg"]), body(doc["resources"]["vnet"])
    assert nsg_put.path.rsplit("/", 1)[1] == fill(nsg["name"]) and vnet_put.path.rsplit("/", 1)[1] == fill(vnet["name"])
    assert nsg_put.body["tags"] == tags == vnet_put.body["tags"]
    (rule,) = nsg["properties"]["securityRules"]
    (sent,) = nsg_put.body["properties"]["securityRules"]
    expected = {k: (str(params[v["function"]["parameters"]["value_to_convert"]]) if isinstance(v, dict) else v)
                for k, v in rule["properties"].items()}
    assert sent["name"] == rule["name"] and {k: sent["properties"][k] for k in expected} == expected
    (subnet,) = vnet["properties"]["subnets"]
    (sent_subnet,) = vnet_put.body["properties"]["subnets"]
    assert sent_subnet["name"] == subnet["name"]
    assert sent_subnet["properties"]["addressPrefix"] == params[subnet["properties"]["addressPrefix"]]
    assert vnet_put.body["properties"]["addressSpace"]["addressPrefixes"] == [params[p] for p in vnet["properties"]["addressSpace"]["addressPrefixes"]]


# ----- scale to zero, the job --------------------------------------------------------------------------


def test_min_replicas_defaults_to_zero_and_reaches_the_app():
    main = parse("main.bicep")
    assert main["parameters"]["minReplicas"]["default"] == 0
    assert body(main["modules"]["apps"])["params"]["minReplicas"] == "minReplicas"
    scale = body(app_resources()["app"])["properties"]["template"]["scale"]
    assert scale["minReplicas"] == "minReplicas"
    (rule,) = scale["rules"]
    assert "http" in rule  # an HTTP request wakes a replica


def test_reap_job_runs_every_minute_with_the_apps_settings():
    main = parse("main.bicep")
    assert main["parameters"]["reapSchedule"]["default"] == "* * * * *"
    assert body(main["modules"]["apps"])["params"]["reapSchedule"] == "reapSchedule"
    job = body(app_resources()["reap"])
    assert job["properties"]["configuration"]["triggerType"] == "Schedule"
    assert job["properties"]["configuration"]["scheduleTriggerConfig"]["cronExpression"] == "reapSchedule"
    (container,) = job["properties"]["template"]["containers"]
    assert container["command"] == ["python", "app.py", "reap"]
    (app_container,) = body(app_resources()["app"])["properties"]["template"]["containers"]
    assert container["env"] == app_container["env"] and container["image"] == app_container["image"] == "image"
    # The command is one the image can run: app.py sits in the WORKDIR and `reap` is its subcommand.
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert "WORKDIR /app" in dockerfile and re.search(r"^COPY app\.py", dockerfile, re.M)
    from app import build_parser

    assert build_parser().parse_args(["reap"]).command == "reap"


def test_ingress_probes_and_settings_match_the_app():
    app = body(app_resources()["app"])
    variables = parse("modules/containerapps.bicep")["variables"]
    ingress = app["properties"]["configuration"]["ingress"]
    assert ingress["external"] is True and ingress["allowInsecure"] is False
    assert ingress["targetPort"] == "port" and variables["port"]["value"] == 3978
    # /metrics only inside the environment, on its own port.
    assert ingress["additionalPortMappings"] == [{"external": False, "targetPort": "metricsPort"}]
    (container,) = app["properties"]["template"]["containers"]
    probes = {p["type"]: p["httpGet"]["path"] for p in container["probes"]}
    assert probes == {"Startup": "/healthz", "Readiness": "/readyz", "Liveness": "/healthz"}

    env = {e["name"]: e for e in settings_env(container)}
    assert env["VPN_STORE"]["value"] == "azure-tables"
    assert env["AZURE_TABLES_ENDPOINT"]["value"] == "tableEndpoint" and env["VPN_TABLE_PREFIX"]["value"] == "tablePrefix"
    assert env["MicrosoftAppType"]["value"] == "UserAssignedMSI"
    assert env["MicrosoftAppId"]["value"] == env["AZURE_CLIENT_ID"]["value"] == "identityClientId"
    assert "MicrosoftAppPassword" not in env
    assert ref(env["PORT"]["value"]) == "string(port)" and ref(env["VPN_METRICS_PORT"]["value"]) == "string(metricsPort)"
    assert variables["metricsPort"]["value"] != variables["port"]["value"]
    assert env["VPN_METRICS_HOST"]["value"] == "0.0.0.0"  # the internal port mapping reaches the container's address, not loopback

    # Every name is one the app (or azure-identity) reads, and the values as deployed pass validation.
    settings_source = "".join(p.read_text() for p in sorted((ROOT / "bot" / "settings").glob("*.py")))
    issue8 = {"VPN_STORE", "AZURE_TABLES_ENDPOINT", "VPN_TABLE_PREFIX", "AZURE_CLIENT_ID"}
    for name in env:
        assert name in issue8 or f'"{name}"' in settings_source, name
    example = {
        "tableEndpoint": "https://vpnbotabc.table.core.windows.net", "tablePrefix": "vpn", "identityClientId": "00000000-0000-0000-0000-000000000001",
        "tenantId": "00000000-0000-0000-0000-000000000002", "subscription().subscriptionId": "00000000-0000-0000-0000-000000000003",
        "sessionResourceGroup": "vpn-bot-sessions", "sessionLocation": "eastus", "vmSize": "Standard_B1ls", "name": "vpn-bot",
        "publicUrl": "https://vpn-bot.example.azurecontainerapps.io", "users": "domain:contoso.com", "admins": "email:admin@contoso.com",
        "dns": "1.1.1.1", "string(sessionMinutes)": "30", "string(maxSessions)": "10", "string(port)": "3978", "string(metricsPort)": "9464",
        "groupmeGroupId": "4242", "${name}-${uniqueString(resourceGroup().id)}": "vpn-bot-x2kd7fqzu3mbe",
    }
    values = {name: example.get(ref(e["value"]), ref(e["value"])) if "value" in e else "s" * 24 for name, e in env.items()}
    settings = Settings.from_env(values)
    assert (settings.provider, settings.teams_app_type, settings.port, settings.metrics_port) == ("azure", "UserAssignedMSI", 3978, 9464)
    assert settings.groupme_bot_id and settings.public_url.startswith("https://")
    # Reconcile's notion of "ours" is fixed by the deployment, not by whatever id a store happens to keep:
    # a new storage account or tablePrefix must still recognise the VMs this deployment left running.
    deployment_id = env["VPN_DEPLOYMENT_ID"]["value"]
    assert "uniqueString(resourceGroup().id)" in deployment_id and settings.deployment_id == "vpn-bot-x2kd7fqzu3mbe"


# ----- identity and roles --------------------------------------------------------------------------------


def test_every_role_assignment_is_scoped_to_one_resource_or_the_session_group():
    found = {}
    for rel, doc in all_files().items():
        resources = doc.get("resources", {})
        for name, res in resources.items():
            if res["type"] != ROLE_ASSIGNMENT:
                continue
            assert doc["globals"]["scope"]["value"] == "resourceGroup", f"{rel}:{name} outside a resource-group deployment"
            props = body(res)
            scope = props.get("scope")
            if scope is not None:
                assert isinstance(scope, str) and scope in resources, f"{rel}:{name} scope {scope!r} is not a resource of this file"
            assert ref(props["properties"]["principalId"]) == "principalId"
            assert props["properties"]["principalType"] == "ServicePrincipal"
            found[(rel, name)] = (scope, ref(props["properties"]["roleDefinitionId"]))
    assert set(found) == {
        ("modules/storage.bicep", "tableRole"),
        ("modules/registry-pull.bicep", "pull"),
        ("modules/session-access.bicep", "operatorAssignment"),
    }
    assert found[("modules/storage.bicep", "tableRole")][0] == "account"
    assert found[("modules/registry-pull.bicep", "pull")][0] == "registry"
    assert found[("modules/session-access.bicep", "operatorAssignment")][0] is None  # the module's scope: below
    variables = {rel: parse(rel).get("variables", {}) for rel in ("modules/storage.bicep", "modules/registry-pull.bicep")}
    assert variables["modules/storage.bicep"]["tableDataContributor"]["value"] == TABLE_DATA_CONTRIBUTOR
    assert variables["modules/registry-pull.bicep"]["acrPull"]["value"] == ACR_PULL
    # The custom role is assigned where the module is deployed: the session resource group, by name.
    access = body(parse("main.bicep")["modules"]["sessionAccess"])
    assert ref(access["scope"]) == "resource_group(sessionResourceGroupName)"
    # No module anywhere is sent to the subscription (where an assignment would cover everything).
    for rel, doc in all_files().items():
        for name, module in doc.get("modules", {}).items():
            scope = body(module).get("scope")
            assert scope is None or not str(ref(scope)).startswith(("subscription(", "tenant(", "management_group(")), f"{rel}:{name}"


def test_storage_allows_only_the_identity_no_account_keys():
    account = body(parse("modules/storage.bicep")["resources"]["account"])["properties"]
    assert account["allowSharedKeyAccess"] is False and account["allowBlobPublicAccess"] is False
    assert account["minimumTlsVersion"] == "TLS1_2"


def test_one_user_assigned_identity_is_used_everywhere():
    main = parse("main.bicep")
    assert main["resources"]["identity"]["type"] == "Microsoft.ManagedIdentity/userAssignedIdentities"
    for res in ("app", "reap"):
        identity = body(app_resources()[res])["identity"]
        assert identity["type"] == "UserAssigned" and list(identity["userAssignedIdentities"]) == ["'${identityResourceId}'"]
    registries = parse("modules/containerapps.bicep")["variables"]["registries"]["value"]["operator"]["operands"]["false_value"]
    assert registries == [{"server": "registryServer", "identity": "identityResourceId"}]  # AcrPull with the identity, no password
    for module in ("storage", "registryPull", "sessionAccess"):
        assert ref(body(main["modules"][module])["params"]["principalId"]) == "identity.properties.principalId"
    # The first replica starts only once it may pull the image and work in the session group.
    assert {"registryPull", "sessionAccess"} <= set(body(main["modules"]["apps"])["dependsOn"])
    assert "storage.outputs.name" in json.dumps(body(main["modules"]["apps"])["params"]["tableEndpoint"])


# ----- secrets ---------------------------------------------------------------------------------------------


def test_no_secret_in_a_plain_parameter_or_an_output():
    for rel, doc in all_files().items():
        secure = set()
        for name, param in doc.get("parameters", {}).items():
            is_secure = any(d["type"] == "secure" for d in param.get("decorators", []))
            if SECRET_NAME.search(name):
                assert is_secure, f"{rel}: parameter {name} looks secret but is not @secure()"
            if is_secure:
                assert param.get("default") in (None, ""), f"{rel}: {name} has a default value"
                secure.add(name)
        for name, output in doc.get("outputs", {}).items():
            text = json.dumps(output["value"])
            assert not SECRET_NAME.search(name.replace("tableEndpoint", "")), f"{rel}: output {name}"
            assert "list_keys" not in text and "listKeys" not in text and "list_" not in text, f"{rel}: output {name}"
            for s in secure:
                assert not re.search(rf"\b{s}\b", text), f"{rel}: output {name} exposes {s}"
    # The GroupMe credentials reach the containers only as Container Apps secrets.
    (container,) = body(app_resources()["app"])["properties"]["template"]["containers"]
    env = {e["name"]: e for e in settings_env(container)}
    for name in ("GROUPME_BOT_ID", "GROUPME_CALLBACK_SECRET", "GROUPME_ACCESS_TOKEN"):
        assert "value" not in env[name] and env[name]["secretRef"]
    secrets = every_branch(parse("modules/containerapps.bicep")["variables"]["secrets"]["value"])
    assert {s["name"] for s in secrets} == {env[n]["secretRef"] for n in ("GROUPME_BOT_ID", "GROUPME_CALLBACK_SECRET", "GROUPME_ACCESS_TOKEN")}
    main = parse("main.bicep")
    for name in ("groupmeBotId", "groupmeCallbackSecret", "groupmeAccessToken"):
        assert {"type": "secure"} in main["parameters"][name]["decorators"]
    assert "MicrosoftAppPassword" not in "".join(p.read_text() for p in INFRA.rglob("*.bicep"))


def test_no_container_apps_secret_is_ever_empty_and_every_secret_ref_exists():
    """Container Apps refuses a secret without a value (ContainerAppSecretInvalid), and an env var whose
    secretRef names no secret: the GroupMe access token is optional, so every combination must deploy."""
    doc = parse("modules/containerapps.bicep")
    variables = doc["variables"]
    for bot_id, token in (("", ""), ("4242bot", ""), ("4242bot", "tok")):
        scope = {"groupmeBotId": bot_id, "groupmeCallbackSecret": "c" * 24 if bot_id else "",
                 "groupmeAccessToken": token, "groupmeGroupId": "4242" if bot_id else ""}
        secrets = evaluate("secrets", scope, variables)
        env = evaluate("groupmeEnv", scope, variables)
        assert all(s["value"] for s in secrets), f"an empty secret with bot id {bot_id!r}, token {token!r}: {secrets}"
        refs = {e["secretRef"] for e in env if "secretRef" in e}
        assert refs == {s["name"] for s in secrets}, (refs, secrets)
        names = {e["name"] for e in env}
        assert ("GROUPME_BOT_ID" in names) == bool(bot_id) and ("GROUPME_ACCESS_TOKEN" in names) == bool(token)
    # Both the app and the job carry these same lists.
    for res in ("app", "reap"):
        props = body(doc["resources"][res])["properties"]
        assert props["configuration"]["secrets"] == "secrets"
        (container,) = props["template"]["containers"]
        assert ref(container["env"]) == "concat(settings,groupmeEnv)"


# ----- the Bot ------------------------------------------------------------------------------------------------


def test_the_bot_endpoint_is_the_apps_fqdn_and_its_identity_the_managed_identity():
    main = parse("main.bicep")
    bot = body(main["modules"]["bot"])["params"]
    assert bot["endpoint"] == "https://${apps.outputs.fqdn}/api/messages"
    assert ref(parse("modules/containerapps.bicep")["outputs"]["fqdn"]["value"]) == "app.properties.configuration.ingress.fqdn"
    assert ref(bot["identityClientId"]) == "identity.properties.clientId" and ref(bot["identityResourceId"]) == "identity.id"
    service = parse("modules/bot-service.bicep")["resources"]
    props = body(service["bot"])["properties"]
    assert props["endpoint"] == "endpoint" and props["msaAppType"] == "UserAssignedMSI"
    assert props["msaAppId"] == "identityClientId" and props["msaAppMSIResourceId"] == "identityResourceId"
    assert props["msaAppTenantId"] == "tenantId"
    teams = body(service["teams"])
    assert teams["name"] == "MsTeamsChannel" and teams["properties"]["properties"]["isEnabled"] is True
    # /api/messages is where the Teams channel listens.
    assert "/api/messages" in "".join(p.read_text() for p in (ROOT / "bot" / "channels" / "teams").glob("*.py"))


async def test_user_assigned_msi_gets_the_bots_token_from_the_container_apps_identity_endpoint(monkeypatch):
    """The template's Teams settings (MicrosoftAppType=UserAssignedMSI, MicrosoftAppId = the identity's
    client id, MicrosoftAppTenantId) through app.make_channels and botbuilder 4.17's credentials factory:
    the Bot Framework token comes from the endpoint Container Apps injects (IDENTITY_ENDPOINT and
    IDENTITY_HEADER, App Service style), asked for that user-assigned identity, with no password."""
    import time
    import uuid

    from aiohttp import web
    from aiohttp.test_utils import TestServer
    from types import SimpleNamespace

    import aiohttp

    from app import make_channels

    asked = []

    async def token(request: web.Request) -> web.Response:
        asked.append((dict(request.query), request.headers.get("X-IDENTITY-HEADER")))
        return web.json_response({"access_token": "msi-token", "expires_on": str(int(time.time()) + 3600),
                                  "resource": request.query.get("resource", ""), "token_type": "Bearer"})

    endpoint = web.Application()
    endpoint.router.add_get("/msi/token", token)
    server = TestServer(endpoint, host="127.0.0.1")
    await server.start_server()
    try:
        monkeypatch.setenv("IDENTITY_ENDPOINT", f"http://127.0.0.1:{server.port}/msi/token")
        monkeypatch.setenv("IDENTITY_HEADER", "header-from-container-apps")
        client_id = str(uuid.uuid4())  # fresh: botbuilder's MSI token cache is process-wide
        (container,) = body(app_resources()["app"])["properties"]["template"]["containers"]
        env = {e["name"]: e["value"] for e in settings_env(container) if "value" in e and e["name"].startswith("Microsoft")}
        assert env == {"MicrosoftAppId": "identityClientId", "MicrosoftAppType": "UserAssignedMSI", "MicrosoftAppTenantId": "tenantId"}
        settings = Settings.from_env({"MicrosoftAppId": client_id, "MicrosoftAppType": "UserAssignedMSI",
                                      "MicrosoftAppTenantId": "00000000-0000-0000-0000-000000000002"})
        (channel,) = make_channels(settings)
        async with aiohttp.ClientSession() as http:
            await channel.attach(SimpleNamespace(http=http))  # all the channel takes from the runtime here
            # The token the channel's own connector client puts on every outbound call.
            assert await channel._token() == "msi-token"
            assert await channel._token() == "msi-token"  # cached: one request to the endpoint
    finally:
        await server.close()
    ((query, header),) = asked
    assert header == "header-from-container-apps"
    assert query["client_id"] == client_id and query["resource"] == "https://api.botframework.com"


def test_outputs_feed_teams_manifest():
    outputs = parse("main.bicep")["outputs"]
    assert ref(outputs["botAppId"]["value"]) == "identity.properties.clientId"
    command = outputs["teamsManifestCommand"]["value"]
    for part in ("MicrosoftAppId=${identity.properties.clientId}", "MicrosoftAppType=UserAssignedMSI", "MicrosoftAppTenantId=${tenantId}",
                 "VPN_PUBLIC_URL=https://${apps.outputs.fqdn}", "python app.py teams-manifest"):
        assert part in command


@pytest.mark.parametrize("rel", ["main.bicep", "groups.bicep"])
def test_deployment_scopes(rel):
    expected = {"main.bicep": "resourceGroup", "groups.bicep": "subscription"}[rel]
    assert parse(rel)["globals"]["scope"]["value"] == expected
