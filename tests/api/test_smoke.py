def test_register_capture_release_roundtrip(api, namespace):
    r = api.post("/v1/task", {"id": "a", "namespace_id": namespace}, format="json")
    assert r.status_code == 201, r.content
    r = api.get("/v1/task/capture?namespace_id=ns&limit=5")
    assert r.status_code == 200, r.content
    assert [t["id"] for t in r.json()["list"]] == ["a"]
    r = api.put("/v1/task/release", {"status": "done", "task_ids": ["a", "zz"]}, format="json")
    assert r.status_code == 200, r.content
    body = r.json()
    assert body["list"][0]["status"] == "done"
    assert body["errors"][0]["id"] == "zz"
