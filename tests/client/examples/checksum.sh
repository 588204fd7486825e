#!/bin/sh
# A taskq worker in shell, run once per task of the namespace "files":
#
#   taskq work files -- tests/client/examples/checksum.sh
#
# Each task's id is the path of a file: $TASKQ_TASK_ID (the task is on stdin
# as JSON, and its payload in $TASKQ_PAYLOAD). What the script prints becomes
# the task's result; a non-zero exit fails the task, with the end of what it
# wrote to stderr as the task's last_error.
set -eu

sum=$(sha256sum "$TASKQ_TASK_ID")
bytes=$(wc -c < "$TASKQ_TASK_ID")
printf '{"sha256": "%s", "bytes": %s}\n' "${sum%% *}" "$bytes"
