"""The PostgreSQL NOTIFY channels the apps share."""

# Long polling's (tasks_app.waiting): the payload is the namespace where work
# may have become capturable. Captures notify nothing; a task registered, a
# lease ended in a capped namespace, a resume or a raised cap does.
WORK_CHANNEL = "taskq_work"
