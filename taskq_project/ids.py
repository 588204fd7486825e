"""Rules for the ids of namespaces and tasks, shared by every entry point."""

import unicodedata

MAX_ID_LENGTH = 255

# The same rules as `id_problem`, for the OpenAPI schema: no control
# characters, and no '/' at the end.
ID_PATTERN = r"^[^\x00-\x1f\x7f-\x9f]*[^\x00-\x1f\x7f-\x9f/]$"
ID_SCHEMA = {"type": "string", "minLength": 1, "maxLength": MAX_ID_LENGTH, "pattern": ID_PATTERN}

# Categories PostgreSQL cannot store (NUL) or that cannot be encoded (lone
# surrogates), plus the rest of the control characters, which only ever appear
# in ids by mistake and make them impossible to read back in logs and URLs.
_FORBIDDEN_CATEGORIES = {"Cc", "Cs"}


def id_problem(value: str) -> str | None:
    """Return why `value` cannot be an id, or None when it can."""
    if not value:
        return "must not be empty"
    if len(value) > MAX_ID_LENGTH:
        return f"must be at most {MAX_ID_LENGTH} characters long (got {len(value)})"
    if value.endswith("/"):
        # Once the server has decoded a URL, `/v1/task/x%2F` and `/v1/task/x/`
        # are the same path, and every endpoint answers with or without a
        # trailing slash: such an id could not be told from its neighbour `x`.
        return "must not end with '/'"
    for char in value:
        if unicodedata.category(char) in _FORBIDDEN_CATEGORIES:
            return f"must not contain control characters (found U+{ord(char):04X})"
    return None
