"""The Serve application's state, as read from the head's dashboard REST API."""

from __future__ import annotations

from modelplane_operator.dashboard import serve_state

DETAILS = {
    "applications": {
        "sentiment": {
            "status": "RUNNING",
            "message": "",
            "deployments": {
                "model": {
                    "status": "UPSCALING",
                    "message": "Upscaling from 2 to 3 replicas.",
                    "target_num_replicas": 3,
                    "replicas": [
                        {"replica_id": "a", "state": "RUNNING", "node_ip": "10.0.0.5"},
                        {"replica_id": "b", "state": "RUNNING", "node_ip": "10.0.0.6"},
                        {"replica_id": "c", "state": "STARTING", "node_ip": "10.0.0.7"},
                    ],
                }
            },
        }
    }
}


def test_the_state_counts_running_replicas_and_where_they_run() -> None:
    state = serve_state(DETAILS, "sentiment")
    assert state is not None
    assert (state.status, state.target_replicas, state.running_replicas) == ("RUNNING", 3, 2)
    assert state.replica_ips == frozenset({"10.0.0.5", "10.0.0.6"})
    assert state.message == "Upscaling from 2 to 3 replicas."
    # Each listed replica, whatever its state, holds a worker pod.
    assert state.listed_replicas == 3


def test_an_application_the_head_does_not_know_is_none() -> None:
    assert serve_state(DETAILS, "other") is None
    assert serve_state({}, "sentiment") is None
