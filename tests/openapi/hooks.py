"""schemathesis hooks for scripts/check-openapi: the two things JSON Schema cannot say.

1. A few refusals depend on what is stored or on the operator's settings, not on the
   request: a second Live config for the same publish_domain and app (SPEC §1: "a 400,
   not a duplicate"), a source for an app the project does not have, a source whose
   record_dir is outside the operator's record roots (none by default, SPEC §7) or
   overlaps another project's, a retry of a delivery that is neither dead nor failed. A
   schema-valid request refused with exactly one of these documented 400s is not a
   contract failure; every other refusal of valid data still is. One rule joins two
   fields, which the document states in words: a source's `record_format` needs its
   `storage` (Herald converts a recording only to upload it).
2. JSON Schema 2020-12 counts `24.0` as an integer; Herald's counts (`file_size`, `width`,
   …) must be written as JSON integers (`24`), which no schema keyword can require. The
   bodies sent spell whole numbers as integers.
"""

import re

import schemathesis

# (operation, what the 400's error_msg says): the refusals that depend on stored state.
STATE_REFUSALS = [
    (
        "POST /v1/{project_id}/record/callbacks",
        re.compile(r'^app: a callback config for publish_domain ".*" and app ".*" already exists in this project$', re.S),
    ),
    (
        "PUT /v1/{project_id}/record/callbacks/{id}",
        re.compile(r'^app: a callback config for publish_domain ".*" and app ".*" already exists in this project$', re.S),
    ),
    (
        "POST /v1/{project_id}/record/sources",
        re.compile(r"^app_id: is not an app of this project$"),
    ),
    (
        "POST /v1/{project_id}/record/sources",
        re.compile(
            r"^record_dir: (cannot be used: this server allows no record directory yet"
            r"|must be inside a record directory the operator allows"
            r"|leads out of the allowed record directories by a symbolic link"
            r"|overlaps the record directory of another project's source)",
            re.S,
        ),
    ),
    (
        "POST /v1/{project_id}/record/sources",
        re.compile(r"^record_format: needs storage: Herald converts a recording only to upload it$"),
    ),
    (
        "POST /v1/{project_id}/record/deliveries/{id}/retry",
        re.compile(
            r"^id: (the delivery is (pending|succeeded|cancelled); only dead or failed deliveries can be retried"
            r"|the delivery's callback config was deleted; there is nowhere to send it)$"
        ),
    ),
]


def _is_state_refusal(failure, case, response) -> bool:
    if getattr(failure, "code", None) != "ST202" or response.status_code != 400:
        return False
    try:
        message = response.json().get("error_msg", "")
    except ValueError:
        return False
    label = f"{case.method.upper()} {case.path}"
    return any(label == operation and rule.match(message) for operation, rule in STATE_REFUSALS)


@schemathesis.hook
def filter_failure(context, failure, case, response) -> bool:
    return not _is_state_refusal(failure, case, response)


# Beyond this, a float is not one integer spelled another way (schemathesis's own bound).
EXACT = 2**53


def _whole_numbers_as_integers(value):
    if isinstance(value, float) and value.is_integer() and -EXACT <= value <= EXACT:
        return int(value)
    if isinstance(value, dict):
        return {key: _whole_numbers_as_integers(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_whole_numbers_as_integers(item) for item in value]
    return value


@schemathesis.hook
def map_body(context, body):
    return _whole_numbers_as_integers(body)
