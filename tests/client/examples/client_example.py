from taskq_client import Client, NewTask

with Client() as taskq:
    taskq.create_namespace("images", default_timeout=120)
    taskq.register_tasks(
        [NewTask(id=f"img-{n}", namespace_id="images", payload={"n": n}) for n in range(100)]
    )
    for lease in taskq.capture("images", limit=10, wait=20):
        taskq.release(lease, "done", result={"ok": True})
