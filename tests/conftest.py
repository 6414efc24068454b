"""Fixtures shared across the suite, one plugin module per area.

``tests/fixtures_origin.py`` holds the origin's (an app on loopback, a store),
``tests/fixtures_agent.py`` the agent's and the tracker's, ``tests/s3_fixtures.py``
the session's one SeaweedFS, ``tests/oci_conformance.py`` the OCI conformance
checks' registry client. Keeping them in
plugin modules lets each area own its fixtures without one long file.
"""

pytest_plugins = [
    "tests.fixtures_origin",
    "tests.fixtures_agent",
    "tests.s3_fixtures",
    "tests.oci_conformance",
    "tests.goflate.oracle",  # go_oracle: one `go build` per session, not one per module
]
