"""A failed deployment's page shows the diagnosis and its evidence to everyone who may view the deployment; a
server that failed while answering a request must not put that request's content there (issue 12 item 16)."""

from __future__ import annotations

from deployments.backends import get_backend
from workers.handlers.serve import _Watch

PROMPT = "Patient: Jane Roe, 1984-03-02"
SPAN = 'generate{parameters=GenerateParameters { max_new_tokens: Some(40), stop: ["Patient:"] } total_time=Empty}'
LINES = [
    f"2024-12-11T18:30:01.204118Z DEBUG {SPAN}: text_generation_router::server: router/src/server.rs:299: "
    f"Input: {PROMPT}",
    f"2024-12-11T18:30:03.000000Z ERROR {SPAN}:infer:send_error: text_generation_router_v3::backend: "
    "backends/v3/src/backend.rs:546: Request failed during generation: Server error: CUDA out of memory. "
    "Tried to allocate 2.00 GiB",
]


def test_the_evidence_in_a_failure_carries_no_request_content():
    watch = object.__new__(_Watch)  # only what fail() reads: the backend and the recent lines
    watch.backend, watch.device = get_backend("tgi"), "gpu"
    watch.tail = list(LINES)
    failure = watch.fail(exit_code=1)
    detail = str(failure)
    assert "CUDA out of memory" in detail  # the evidence stays
    assert PROMPT not in detail and "Patient:" not in detail  # what the request sent does not
