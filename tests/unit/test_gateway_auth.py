import pytest

from services.common.errors import Unauthenticated
from services.common.settings import SettingsError
from services.gateway.auth import ApiKeyStore, hash_key
from services.gateway.settings import GatewaySettings


def _store(tmp_path):
    path = tmp_path / "keys.yaml"
    path.write_text(
        "keys:\n"
        f"  - {{name: alice, sha256: {hash_key('alice-key')}, tenant: team-a, roles: [user]}}\n"
        f"  - {{name: ops, sha256: {hash_key('ops-key')}, tenant: ops, roles: [user, admin],"
        " class: premium}\n"
    )
    return ApiKeyStore.from_sources(path, [f"sha256:{hash_key('bob-key')}:team-b:user"])


def test_keys_from_file_and_inline_entries(tmp_path):
    store = _store(tmp_path)
    assert len(store) == 3
    alice = store.authenticate([("authorization", "Bearer alice-key")])
    assert (alice.tenant, alice.is_admin, alice.tenant_class) == ("team-a", False, "standard")
    ops = store.authenticate([("x-api-key", "ops-key")])
    assert (ops.tenant, ops.is_admin, ops.tenant_class) == ("ops", True, "premium")
    assert store.authenticate([("authorization", "bearer bob-key")]).tenant == "team-b"


@pytest.mark.parametrize(
    ("metadata", "message"),
    [
        ([], "missing API key"),
        ([("authorization", "Bearer nope")], "invalid API key"),
        ([("authorization", "Basic abc")], "missing API key"),
    ],
)
def test_missing_or_wrong_key_is_unauthenticated(tmp_path, metadata, message):
    with pytest.raises(Unauthenticated, match=message):
        _store(tmp_path).authenticate(metadata)


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ("plain-key:team:user", "expected 'sha256:<hex>"),
        (f"sha256:{'0' * 63}:t:user", "64 hex digits"),
        (f"sha256:{'0' * 64}:t:root", "roles must be among user, admin"),
        (f"sha256:{'0' * 64}::user", "tenant"),
    ],
)
def test_bad_key_entries_are_refused(entry, message):
    with pytest.raises(SettingsError, match=message):
        ApiKeyStore.from_sources(None, [entry])


def test_auth_can_be_disabled_only_on_loopback():
    base = ["--static-backends", "diffusion=127.0.0.1:1"]
    assert GatewaySettings.load([*base, "--auth-disabled", "true"], environ={}).auth_disabled
    with pytest.raises(SettingsError, match="only allowed when listening on a loopback address"):
        GatewaySettings.load([*base, "--auth-disabled", "true", "--host", "0.0.0.0"], environ={})
    with pytest.raises(SettingsError, match="no API keys"):
        GatewaySettings.load(base, environ={})
    with pytest.raises(SettingsError, match="registry_address"):
        GatewaySettings.load(["--auth-disabled", "true"], environ={})
