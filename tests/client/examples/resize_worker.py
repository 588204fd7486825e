from taskq_client import Client, Retry, Worker


def resize(task):
    image = task.payload  # whatever JSON the task was registered with
    if image["src"].startswith("busy://"):
        raise Retry("storage busy", after=30)  # failed, retried in 30 s
    if not image["src"].startswith("s3://"):
        raise ValueError(f"not on S3: {image['src']}")  # failed, with this error
    return {"src": image["src"], "width": image["w"]}  # done, with this result


Worker(Client(), "images", resize, concurrency=4).run()  # TASKQ_URL, TASKQ_TOKEN
