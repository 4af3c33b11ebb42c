"""Loading and unloading models at run time: POST /v1/admin/models and
DELETE /v1/admin/models/{name}, admin tokens only. A model loaded this way
answers like one from the command line; an unloaded one is gone (404) and
the rest keep answering; the daemon still stops cleanly.
"""

from __future__ import annotations

import json

from lensd_http import error_of, json_of


def test_admin_loads_and_unloads_models(start_daemon, models, tmp_path):
    tokens = tmp_path / "tokens.json"
    tokens.write_text(json.dumps([{"name": "root", "role": "admin", "token": "admin-secret"},
                                  {"name": "alice", "role": "read", "token": "read-secret"}]))
    admin = {"Authorization": "Bearer admin-secret"}
    reader = {"Authorization": "Bearer read-secret"}
    d = start_daemon(["--model", f"gpt2={models['gpt2']}", "--tokens-file", str(tokens)])
    entry = {"name": "brackets", "path": str(models["brackets"])}

    status, _, body = d.post("/v1/admin/models", entry, headers=reader)
    assert status == 403 and json_of(body)["error"]["code"] == "forbidden"
    status, _, body = d.post("/v1/admin/models", {**entry, "device": "tpu"}, headers=admin)
    assert status == 422, body
    status, _, body = d.post("/v1/admin/models", {**entry, "colour": "red"}, headers=admin)
    assert status == 400 and json_of(body)["error"]["field"] == "colour"

    status, _, body = d.post("/v1/admin/models", entry, headers=admin)
    assert status == 201, body
    assert json_of(body)["name"] == "brackets" and json_of(body)["hook_points"]
    status, _, body = d.post("/v1/admin/models", entry, headers=admin)
    assert status == 409
    names = [m["name"] for m in json_of(d.get("/v1/models", headers=reader)[2])["models"]]
    assert names == ["gpt2", "brackets"]
    logits = d.post_json("/v1/models/brackets/logits", {"prompt": "(())", "positions": [0]},
                         headers=reader)
    assert logits["logits"]["shape"] == [1, 1, 2]

    status, _, body = d.request("DELETE", "/v1/admin/models/brackets", headers=admin)
    assert status == 200 and json_of(body) == {"unloaded": "brackets"}
    status, _, _ = d.post("/v1/models/brackets/logits", {"prompt": "(())"}, headers=reader)
    assert status == 404
    status, _, _ = d.request("DELETE", "/v1/admin/models/brackets", headers=admin)
    assert status == 404
    assert d.post_json("/v1/models/gpt2/logits", {"prompt": "Hello", "top_k": 1},
                       headers=reader)["top_k_ids"]["shape"] == [1, 2, 1]


def test_unloaded_slots_are_reused(start_daemon, models):
    """Loading and unloading more models than the daemon has slots for (32
    besides the configured ones) goes on working: an unloaded model's slot is
    taken again (it answered 507 "restart it" after the 32nd load), and the
    configured model keeps answering throughout."""
    d = start_daemon(["--model", f"gpt2={models['gpt2']}"])
    for i in range(40):
        name = f"brackets-{i % 3}"
        status, _, body = d.post("/v1/admin/models", {"name": name, "path": str(models["brackets"])})
        assert status == 201, (i, body[:300])
        status, _, body = d.post(f"/v1/models/{name}/logits", {"prompt": "(())"})
        assert status == 200, (i, body[:300])
        assert d.request("DELETE", f"/v1/admin/models/{name}")[0] == 200
    assert d.post("/v1/models/gpt2/tokenize", {"prompt": "Hi"})[0] == 200
    assert d.stop() == 0, d.describe()


def test_admin_loads_only_from_the_model_roots(start_daemon, models, tmp_path):
    """A path outside the model roots (by default the directories holding the
    configured models) is refused before it is read: 403, and nothing of the
    file quoted back (it answered "near 'root'" for /etc/shadow)."""
    import shutil

    d = start_daemon(["--model", f"gpt2={models['gpt2']}"])
    elsewhere = tmp_path / "elsewhere"
    shutil.copytree(models["brackets"], elsewhere)
    escape = models["gpt2"].parent / "lensd-test-escape"
    for path in ["/etc/shadow", "/etc/passwd", str(elsewhere), str(tmp_path / "missing"),
                 f"{models['gpt2'].parent}/../../../../etc/passwd"]:
        status, _, body = d.post("/v1/admin/models", {"name": "x", "path": path})
        assert status == 403 and error_of(body)["field"] == "path", (path, body[:300])
        assert "near" not in error_of(body)["message"] and "root:" not in body.decode()
    try:
        escape.symlink_to(elsewhere)  # a link from inside a root to outside it
        status, _, body = d.post("/v1/admin/models", {"name": "x", "path": str(escape)})
        assert status == 403, body[:300]
    finally:
        escape.unlink(missing_ok=True)
    # inside the default root: the configured model's own directory
    status, _, body = d.post("/v1/admin/models", {"name": "b", "path": str(models["brackets"])})
    assert status == 201, body[:300]
    # a root of its own, from the config file
    config = tmp_path / "lensd.json"
    config.write_text(json.dumps({"model_roots": [str(tmp_path)]}))
    d2 = start_daemon(["--config", str(config), "--model", f"gpt2={models['gpt2']}"])
    assert d2.post("/v1/admin/models", {"name": "e", "path": str(elsewhere)})[0] == 201
    status, _, body = d2.post("/v1/admin/models", {"name": "f", "path": str(models["brackets"])})
    assert status == 403, "the configured roots replace the default ones"
