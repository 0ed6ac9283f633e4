"""The Bicep templates in infra/, parsed with pycep-parser (the Bicep CLI is a downloaded binary), and
their resource graph asserted: scale to zero, the reap job, role scopes, secrets, the Bot endpoint.

pycep gives each file as JSON; an identifier and a string literal look alike there ("minReplicas"),
so references are compared by name, and the few literal values that matter by value.
"""
from __future__ import annotations

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
            "modules/session-access.bicep", "modules/bot-service.bicep", "modules/registry.bicep",
            "modules/identity.bicep", "modules/tables.bicep", "modules/web.bicep"} <= set(files)
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
    outputs = parse("groups.bicep")["outputs"]
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
    settings_source = "".join(p.read_text() for p in (ROOT / "bot").rglob("*.py"))
    issue8 = {"VPN_STORE", "AZURE_TABLES_ENDPOINT", "VPN_TABLE_PREFIX", "AZURE_CLIENT_ID"}
    # Read by the web channel's per-address limits once issue 18 item 9 lands (Settings ignores it until then).
    issue18 = {"VPN_TRUSTED_PROXIES"}
    for name in env:
        assert name in issue8 | issue18 or f'"{name}"' in settings_source, name
    example = {
        "tableEndpoint": "https://vpnbotabc.table.core.windows.net", "tablePrefix": "vpn", "identityClientId": "00000000-0000-0000-0000-000000000001",
        "tenantId": "00000000-0000-0000-0000-000000000002", "subscription().subscriptionId": "00000000-0000-0000-0000-000000000003",
        "sessionResourceGroup": "vpn-bot-sessions", "sessionLocation": "eastus", "vmSize": "Standard_B1ls", "name": "vpn-bot",
        "publicUrl": "https://vpn-bot.example.azurecontainerapps.io", "users": "domain:contoso.com", "admins": "email:admin@contoso.com",
        "dns": "1.1.1.1", "string(sessionMinutes)": "30", "string(maxSessions)": "10", "string(port)": "3978", "string(metricsPort)": "9464",
        "groupmeGroupId": "4242", "${name}-${uniqueString(resourceGroup().id)}": "vpn-bot-x2kd7fqzu3mbe",
        "webOrigin": "https://lively-river-0a1b2c3d4.5.azurestaticapps.net", "entraApiClientId": "00000000-0000-0000-0000-000000000004",
        "entraSpaClientId": "00000000-0000-0000-0000-000000000005", "entraAuthority": "https://login.microsoftonline.com",
    }
    values = {name: example.get(ref(e["value"]), ref(e["value"])) if "value" in e else "s" * 32 for name, e in env.items()}
    settings = Settings.from_env(values)
    assert (settings.provider.kind, settings.teams.app_type, settings.ops.port, settings.ops.metrics_port) == ("azure", "UserAssignedMSI", 3978, 9464)
    assert settings.groupme.bot_id and settings.ops.public_url.startswith("https://")
    assert settings.unknown == ()  # no warning about a name the template sets (AZURE_CLIENT_ID is azure-identity's)
    assert settings.web.cors_origins == ("https://lively-river-0a1b2c3d4.5.azurestaticapps.net",) and settings.web.local_secret
    assert settings.web.entra_tenant_id == "00000000-0000-0000-0000-000000000002"
    # Reconcile's notion of "ours" is fixed by the deployment, not by whatever id a store happens to keep:
    # a new storage account or tablePrefix must still recognise the VMs this deployment left running.
    deployment_id = env["VPN_DEPLOYMENT_ID"]["value"]
    assert "uniqueString(resourceGroup().id)" in deployment_id and settings.ops.deployment_id == "vpn-bot-x2kd7fqzu3mbe"


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
        ("modules/registry.bicep", "pull"),
        ("modules/session-access.bicep", "operatorAssignment"),
    }
    assert found[("modules/storage.bicep", "tableRole")][0] == "account"
    assert found[("modules/registry.bicep", "pull")][0] == "registry"
    assert found[("modules/session-access.bicep", "operatorAssignment")][0] is None  # the module's scope: below
    variables = {rel: parse(rel).get("variables", {}) for rel in ("modules/storage.bicep", "modules/registry.bicep")}
    assert variables["modules/storage.bicep"]["tableDataContributor"]["value"] == TABLE_DATA_CONTRIBUTOR
    assert variables["modules/registry.bicep"]["acrPull"]["value"] == ACR_PULL
    # The custom role is assigned where the module is deployed: the session resource group, by name.
    access = body(parse("groups.bicep")["modules"]["sessionAccess"])
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
    main, groups = parse("main.bicep"), parse("groups.bicep")
    # Step 1 makes it; step 3 only looks it up, by the same name.
    assert parse("modules/identity.bicep")["resources"]["identity"]["type"] == "Microsoft.ManagedIdentity/userAssignedIdentities"
    assert main["resources"]["identity"]["type"] == "Microsoft.ManagedIdentity/userAssignedIdentities"
    assert main["resources"]["identity"]["existing"] is True
    for res in ("app", "reap"):
        identity = body(app_resources()[res])["identity"]
        assert identity["type"] == "UserAssigned" and list(identity["userAssignedIdentities"]) == ["'${identityResourceId}'"]
    registries = parse("modules/containerapps.bicep")["variables"]["registries"]["value"]["operator"]["operands"]["false_value"]
    assert registries == [{"server": "registryServer", "identity": "identityResourceId"}]  # AcrPull with the identity, no password
    for module in ("storage", "registry", "sessionAccess"):
        assert ref(body(groups["modules"][module])["params"]["principalId"]) == "identity.outputs.principalId"
    apps = body(main["modules"]["apps"])["params"]
    assert ref(apps["identityResourceId"]) == "identity.id" and ref(apps["identityClientId"]) == "identity.properties.clientId"
    assert "storageAccountName" in json.dumps(apps["tableEndpoint"])


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
    # The GroupMe credentials and the web secret reach the containers only as Container Apps secrets.
    (container,) = body(app_resources()["app"])["properties"]["template"]["containers"]
    env = {e["name"]: e for e in settings_env(container)}
    secret_env = ("GROUPME_BOT_ID", "GROUPME_CALLBACK_SECRET", "GROUPME_ACCESS_TOKEN", "VPN_LOCAL_AUTH_SECRET")
    for name in secret_env:
        assert "value" not in env[name] and env[name]["secretRef"]
    secrets = every_branch(parse("modules/containerapps.bicep")["variables"]["secrets"]["value"])
    assert {s["name"] for s in secrets} == {env[n]["secretRef"] for n in secret_env}
    main = parse("main.bicep")
    for name in ("groupmeBotId", "groupmeCallbackSecret", "groupmeAccessToken", "webAuthSecret"):
        assert {"type": "secure"} in main["parameters"][name]["decorators"]
    assert "MicrosoftAppPassword" not in "".join(p.read_text() for p in INFRA.rglob("*.bicep"))


def test_no_container_apps_secret_is_ever_empty_and_every_secret_ref_exists():
    """Container Apps refuses a secret without a value (ContainerAppSecretInvalid), and an env var whose
    secretRef names no secret: the GroupMe access token is optional, so every combination must deploy."""
    doc = parse("modules/containerapps.bicep")
    variables = doc["variables"]
    for bot_id, token, web in (("", "", ""), ("4242bot", "", ""), ("4242bot", "tok", ""), ("", "", "w" * 32), ("4242bot", "tok", "w" * 32)):
        scope = {"groupmeBotId": bot_id, "groupmeCallbackSecret": "c" * 24 if bot_id else "",
                 "groupmeAccessToken": token, "groupmeGroupId": "4242" if bot_id else "",
                 "webAuthSecret": web, "webOrigin": "https://x.azurestaticapps.net" if web else "",
                 "entraApiClientId": "", "entraSpaClientId": ""}
        secrets = evaluate("secrets", scope, variables)
        env = evaluate("groupmeEnv", scope, variables) + evaluate("webEnv", scope, variables)
        assert all(s["value"] for s in secrets), f"an empty secret with bot id {bot_id!r}, token {token!r}: {secrets}"
        refs = {e["secretRef"] for e in env if "secretRef" in e}
        assert refs == {s["name"] for s in secrets}, (refs, secrets)
        names = {e["name"] for e in env}
        assert ("GROUPME_BOT_ID" in names) == bool(bot_id) and ("GROUPME_ACCESS_TOKEN" in names) == bool(token)
        assert ("VPN_LOCAL_AUTH_SECRET" in names) == ("VPN_CORS_ORIGINS" in names) == bool(web)
    # Both the app and the job carry these same lists.
    for res in ("app", "reap"):
        props = body(doc["resources"][res])["properties"]
        assert props["configuration"]["secrets"] == "secrets"
        (container,) = props["template"]["containers"]
        assert ref(container["env"]) == "concat(settings,groupmeEnv,webEnv)"


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
    client id, MicrosoftAppTenantId) through bot.wiring.make_channels and botbuilder 4.17's credentials factory:
    the Bot Framework token comes from the endpoint Container Apps injects (IDENTITY_ENDPOINT and
    IDENTITY_HEADER, App Service style), asked for that user-assigned identity, with no password."""
    import time
    import uuid
    from types import SimpleNamespace

    import aiohttp
    from aiohttp import web
    from aiohttp.test_utils import TestServer

    from bot.wiring import make_channels

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


# ----- issue 20: works the first time, starts from zero, never wakes for anonymous visitors ------------------


def reachable(entry: str) -> dict[str, dict]:
    """The templates one entry point deploys: itself and its modules, transitively."""
    seen: dict[str, dict] = {}
    todo = [entry]
    while todo:
        rel = todo.pop()
        if rel not in seen:
            seen[rel] = parse(rel)
            todo.extend(module_file(rel, name) for name in seen[rel].get("modules", {}))
    return seen


def store_tables() -> tuple[str, ...]:
    """The table names the Table Storage store uses."""
    from bot.store.tables import TABLES

    return tuple(TABLES)


def strings(node) -> list[str]:
    """Every string value in a parsed template fragment (keys excluded)."""
    if isinstance(node, str):
        return [node]
    if isinstance(node, dict):
        return [s for v in node.values() for s in strings(v)]
    if isinstance(node, list):
        return [s for v in node for s in strings(v)]
    return []


def test_the_stores_tables_are_declared_by_the_template_with_the_stores_names():
    """Declared tables: neither `serve` nor the per-minute `reap` needs to create one (issue 20.2)."""
    doc = parse("modules/tables.bicep")
    names = doc["variables"]["tableNames"]["value"]
    assert tuple(names) == store_tables()
    table = doc["resources"]["tables"]
    assert table["type"] == "Microsoft.Storage/storageAccounts/tableServices/tables" and not table["existing"]
    loop = table["config"]["loop_type"]["detail"]
    assert loop["array_name"] == "tableNames"
    assert body(table)["name"] == "${tablePrefix}${%s}" % loop["item_name"]  # VPN_TABLE_PREFIX + the store's name
    assert body(doc["resources"]["tableService"])["parent"] == "account" and doc["resources"]["account"]["existing"]
    # Table names are 3-63 letters or digits: the longest prefix the template accepts still fits.
    max_prefix = next(d["argument"] for d in doc["parameters"]["tablePrefix"]["decorators"] if d["type"] == "max_length")
    assert max_prefix + max(map(len, names)) <= 63 and all(n.isalnum() for n in names)
    main = parse("main.bicep")
    assert next(d["argument"] for d in main["parameters"]["tablePrefix"]["decorators"] if d["type"] == "max_length") == max_prefix
    # The same prefix and account as the app's VPN_TABLE_PREFIX and AZURE_TABLES_ENDPOINT, made before the app.
    tables = body(main["modules"]["tables"])
    apps = body(main["modules"]["apps"])
    assert tables["params"] == {"storageAccountName": "storageAccountName", "tablePrefix": "tablePrefix"}
    assert apps["params"]["tablePrefix"] == "tablePrefix" and "${storageAccountName}" in apps["params"]["tableEndpoint"]
    assert "tables" in apps["dependsOn"]
    # ... and that account is the one step 1 made: storage.bicep's name, given groups.bicep's `name`.
    made = json.dumps(body(parse("modules/storage.bicep")["resources"]["account"])["name"])
    assert ref(body(parse("groups.bicep")["modules"]["storage"])["params"]["name"]) == "lowercaseName"
    assert json.dumps(main["variables"]["storageAccountName"]["value"]) == made.replace("replace(name,", "replace(lowercaseName,")


def test_the_identity_and_all_its_roles_are_made_in_step_one_not_with_the_app():
    """AcrPull must be effective before main.bicep's first pull: groups.bicep makes the identity and every
    assignment, `az acr build` gives them minutes, main.bicep only looks the identity up (issue 20.3)."""
    step1, step3 = reachable("groups.bicep"), reachable("main.bicep")
    kinds = {"Microsoft.ManagedIdentity/userAssignedIdentities", ROLE_ASSIGNMENT, "Microsoft.Authorization/roleDefinitions"}

    def made(files):
        return {(rel, name, res["type"]) for rel, doc in files.items() for name, res in doc.get("resources", {}).items()
                if res["type"] in kinds and not res.get("existing")}

    assert not made(step3), made(step3)
    assert {t for _, _, t in made(step1)} == kinds
    assert {(rel, name) for rel, name, t in made(step1) if t == ROLE_ASSIGNMENT} == {
        ("modules/storage.bicep", "tableRole"), ("modules/registry.bicep", "pull"), ("modules/session-access.bicep", "operatorAssignment")}
    # Step 3's identity is step 1's, by name.
    identity = body(parse("modules/identity.bicep")["resources"]["identity"])["name"]
    assert identity == "${name}-id" and ref(body(parse("groups.bicep")["modules"]["identity"])["params"]["name"]) == "lowercaseName"
    main = parse("main.bicep")
    assert body(main["resources"]["identity"])["name"] == "identityName"
    assert main["variables"]["identityName"]["value"] == identity.replace("${name}", "${lowercaseName}")
    # The session group exists before its module deploys into it.
    assert "sessionGroup" in body(parse("groups.bicep")["modules"]["sessionAccess"])["dependsOn"]
    # The guide runs step 1, then the build, then step 3, and never asks to run a step again.
    guide = (ROOT / "docs" / "deploy.md").read_text()
    deploy = guide[guide.index("## Deploy"):guide.index("## Teams")]
    order = [deploy.index(s) for s in ("infra/groups.bicep", "az acr build", "infra/main.bicep")]
    assert order == sorted(order)
    for phrase in ("same command again", "rerun", "re-run", "run it again", "(it is idempotent)"):
        assert phrase not in guide.lower(), phrase


def test_the_environment_has_workload_profiles_and_the_app_and_job_run_on_consumption():
    """Without workloadProfiles, Microsoft.App/managedEnvironments is the legacy Consumption-only kind (issue 20.4)."""
    resources = app_resources()
    variables = parse("modules/containerapps.bicep")["variables"]
    (profile,) = body(resources["managedEnv"])["properties"]["workloadProfiles"]
    assert profile["workloadProfileType"] == "Consumption"
    name = variables[profile["name"]]["value"] if profile["name"] in variables else profile["name"]
    assert name == "Consumption"
    for res in ("app", "reap"):
        chosen = body(resources[res])["properties"]["workloadProfileName"]
        assert (variables[chosen]["value"] if chosen in variables else chosen) == name, res


def test_the_registry_sets_no_property_its_api_version_lacks():
    """`anonymousPullEnabled` is not in Microsoft.ContainerRegistry/registries@2023-07-01 (issue 20.5)."""
    for path in INFRA.rglob("*.bicep"):
        assert "anonymousPullEnabled" not in path.read_text(), path
    registry = parse("modules/registry.bicep")["resources"]["registry"]
    assert registry["api_version"] == "2023-07-01"
    assert body(registry)["properties"] == {"adminUserEnabled": False}


def test_the_name_is_refused_unless_lowercase_before_anything_is_made():
    """Bicep has no regex: @minLength/@maxLength bound `name`, and a fail() refuses upper case at validation;
    every resource and module uses the checked name, never the raw parameter (issue 20.7)."""
    for rel in ("groups.bicep", "main.bicep"):
        doc = parse(rel)
        decorators = {d["type"]: d.get("argument") for d in doc["parameters"]["name"]["decorators"]}
        assert decorators["min_length"] == 3 and decorators["max_length"] == 20
        check = doc["variables"]["lowercaseName"]["value"]["operator"]
        assert check["type"] == "conditional" and check["operands"]["true_value"] == "name"
        assert check["operands"]["condition"] == {"operator": {"type": "equals", "operands": {
            "operand_1": "name", "operand_2": {"function": {"type": "to_lower", "parameters": {"string_to_change": "name"}}}}}}
        assert check["operands"]["false_value"]["function"]["type"] == "fail"
        used = strings([doc.get("resources", {}), doc.get("modules", {})])
        assert "name" not in used and not any("${name}" in s or "(name," in s for s in used), rel
    assert body(parse("groups.bicep")["resources"]["botGroup"])["name"] == "lowercaseName"


def test_the_page_is_a_free_static_web_app_and_the_apis_only_cors_origin():
    """The page is served off the backend, so page loads and anonymous visitors wake no replica; the API
    allows that origin only; config.json tells the page where the API is (issue 20.9)."""
    site = parse("modules/web.bicep")["resources"]["site"]
    assert site["type"] == "Microsoft.Web/staticSites"
    props = body(site)
    assert props["sku"] == {"name": "Free", "tier": "Free"}
    assert props["properties"]["stagingEnvironmentPolicy"] == "Disabled"  # no second (preview) origin
    assert ref(parse("modules/web.bicep")["outputs"]["hostname"]["value"]) == "site.properties.defaultHostname"
    main = parse("main.bicep")
    web = main["modules"]["web"]
    assert web["config"]["condition"] == "useWeb"
    apps = body(main["modules"]["apps"])["params"]
    origin = apps["webOrigin"]["operator"]["operands"]
    assert origin["condition"] == "useWeb" and origin["true_value"] == "https://${web.outputs.hostname}" and origin["false_value"] == ""
    # The app: VPN_CORS_ORIGINS is exactly that origin (no '*', no path), with the web API on.
    (container,) = body(app_resources()["app"])["properties"]["template"]["containers"]
    env = {e["name"]: e for e in settings_env(container)}
    assert env["VPN_CORS_ORIGINS"]["value"] == "webOrigin"
    assert env["VPN_LOCAL_AUTH_SECRET"]["secretRef"] == "web-auth-secret"
    assert {env[n]["value"] for n in ("VPN_ENTRA_TENANT_ID", "VPN_ENTRA_API_AUDIENCE", "VPN_ENTRA_SPA_CLIENT_ID")} == {
        "tenantId", "entraApiClientId", "entraSpaClientId"}
    # config.json, the contract with the page: {"api", "entra": {"client_id", "authority", "scope"}}.
    config = main["outputs"]["webConfig"]["value"]
    assert set(config) == {"api", "entra"} and config["api"] == "https://${apps.outputs.fqdn}"
    entra = config["entra"]["operator"]["operands"]
    assert entra["condition"] == "useEntra" and entra["false_value"] is None
    assert entra["true_value"] == {"client_id": "entraSpaClientId", "authority": "${loginOrigin}/${tenantId}", "scope": "entraScope"}
    scope = main["variables"]["entraScope"]["value"]["operator"]["operands"]
    # The scope the page asks for is the one the API checks (WebConfig.api_scope), for both audience forms.
    assert scope["false_value"] == "api://${entraApiClientId}/access_as_user" and scope["true_value"] == "${entraApiClientId}/access_as_user"
    # The static host sends the headers the bot sends with its page; the page may fetch from the API.
    headers = main["outputs"]["webHostConfig"]["value"]["globalHeaders"]
    csp = dict(d.strip().split(" ", 1) for d in headers["'Content-Security-Policy'"].replace("\\'", "'").split(";"))
    assert csp["default-src"] == "'none'" and csp["script-src"] == "'self'" and csp["frame-ancestors"] == "'none'"
    assert csp["connect-src"] == "'self' ${webConnectSources}"
    assert "https://${apps.outputs.fqdn}" in json.dumps(main["variables"]["webConnectSources"]["value"])
    assert headers["'X-Content-Type-Options'"] == "nosniff" and headers["'X-Frame-Options'"] == "DENY"
    # The guide writes config.json and the host's config from these outputs and uploads web/ with them.
    guide = (ROOT / "docs" / "deploy.md").read_text()
    for needle in ("outputs.webConfig.value", "config.json", "outputs.webHostConfig.value", "staticwebapp.config.json",
                   "az staticwebapp secrets list", "static-web-apps-cli", "--env production"):
        assert needle in guide, needle
    assert re.search(r"cp -R web/\. ", guide)


def test_the_proxy_setting_trusts_the_container_apps_ingress_and_nothing_more():
    """The web channel's per-address limits need the client address that Container Apps' ingress (one
    hop) appends to X-Forwarded-For (issue 18.9's deployment side)."""
    (container,) = body(app_resources()["app"])["properties"]["template"]["containers"]
    env = {e["name"]: e for e in settings_env(container)}
    assert env["VPN_TRUSTED_PROXIES"]["value"] == "1"
    (job,) = body(app_resources()["reap"])["properties"]["template"]["containers"]
    assert job["env"] == container["env"]


def test_the_guide_covers_what_an_empty_subscription_needs_first():
    """Issue 20.7: quota and size availability, providers registered with --wait (every namespace the
    templates and the bot use), the landing-zone policy, reading the tables, the new-image check, and
    why customData may hold the server's key."""
    guide = (ROOT / "docs" / "deploy.md").read_text()
    before = guide[guide.index("## Before you start"):guide.index("## Deploy")]
    for needle in ("Standard BS Family vCPUs", "NotAvailableForSubscription", "az vm list-skus", "az vm list-usage",
                   "Network interfaces should not have public IPs"):
        assert needle in " ".join(before.split()), needle
    # The exemption is on the session group, which step 1 makes: it comes after step 1, before any session.
    deploy = guide[guide.index("## Deploy"):]
    assert deploy.index("infra/groups.bicep") < deploy.index("az policy exemption create -g vpn-bot-sessions")
    namespaces = {res["type"].split("/")[0] for doc in all_files().values() for res in doc.get("resources", {}).values()}
    namespaces |= {"Microsoft.Compute", "Microsoft.Network"}  # what the bot itself creates
    namespaces -= {"Microsoft.Resources", "Microsoft.Authorization"}  # always registered
    register = re.search(r"for ns in ([^;]+); do\s+az provider register -n \"\$ns\" --wait", before)
    assert register and namespaces <= set(register.group(1).split()), (namespaces, register and register.group(1))
    assert "Storage Table Data Reader" in guide and "--auth-mode login" in guide
    assert "modinfo wireguard" in guide
    assert re.search(r"customData[^\n]*\n?[^\n]*key", guide)
