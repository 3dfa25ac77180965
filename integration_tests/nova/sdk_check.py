"""Debian's unchanged python3-openstacksdk against the scheduler's Compute API subset.

Run with /usr/bin/python3 (Debian's modules) by //integration_tests/nova:nova_client_test:
live-migrates a server with conn.compute.live_migrate_server, waits for the migration in
conn.compute.migrations(), then reads the server's actions (conn.compute.server_actions) and the
newest one's events. Exits non-zero naming the first failed expectation; on success prints a JSON
summary on stdout for the C++ test to check.
"""

import argparse
import json
import sys
import time

import openstack
from openstack.compute.v2 import server_action as _server_action


def fail(msg):
    print("sdk_check: " + msg, file=sys.stderr)
    sys.exit(1)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--endpoint", required=True)  # https://127.0.0.1:PORT/v2.1
    p.add_argument("--token", required=True)
    p.add_argument("--cacert", required=True)
    p.add_argument("--server", required=True)  # server UUID
    p.add_argument("--host", required=True)  # destination host
    p.add_argument("--timeout", type=float, default=60)
    a = p.parse_args()

    conn = openstack.connection.Connection(
        auth_type="admin_token",
        auth={"endpoint": a.endpoint, "token": a.token},
        compute_endpoint_override=a.endpoint,
        cacert=a.cacert,
        compute_api_version="2.79",
    )
    server = conn.compute.get_server(a.server)
    source = server.compute_host
    if source == a.host:
        fail("the server is already on %s" % a.host)
    before = {m.id for m in conn.compute.migrations() if m.server_id == a.server}

    conn.compute.live_migrate_server(server, host=a.host)

    # The new migration, polled until it reaches a terminal status (with a deadline).
    deadline = time.monotonic() + a.timeout
    mig = None
    while time.monotonic() < deadline:
        new = [m for m in conn.compute.migrations()
               if m.server_id == a.server and m.id not in before]
        if new and new[0].status in ("completed", "failed", "cancelled", "error"):
            mig = new[0]
            break
        time.sleep(0.2)
    if mig is None:
        fail("no finished migration of %s within %.0f s" % (a.server, a.timeout))
    if mig.status != "completed":
        fail("migration %s ended %s" % (mig.id, mig.status))
    if mig.dest_compute != a.host or mig.source_compute != source:
        fail("migration %s went %s -> %s, expected %s -> %s" %
             (mig.id, mig.source_compute, mig.dest_compute, source, a.host))
    if conn.compute.get_server(a.server).compute_host != a.host:
        fail("the server is not on %s after the migration" % a.host)

    # openstacksdk 0.101's ServerAction has base_path '/servers/{server_id}/os-instance-actions'
    # (new-style braces; every other resource uses '%(server_id)s'), so its server_actions()
    # refuses server_id ("Invalid query params") and get_server_action() requests a literal
    # '{server_id}', against any cloud. The defect is checked to be exactly that, then the path
    # corrected, and the SDK's own calls are made.
    defects = []
    try:
        actions = list(conn.compute.server_actions(a.server))
    except openstack.exceptions.InvalidResourceQuery as e:
        if _server_action.ServerAction.base_path != "/servers/{server_id}/os-instance-actions":
            raise
        print("sdk_check: openstacksdk %s server_actions: %s; correcting ServerAction.base_path"
              % (openstack.version.__version__, e), file=sys.stderr)
        _server_action.ServerAction.base_path = "/servers/%(server_id)s/os-instance-actions"
        defects.append("ServerAction.base_path")
        actions = list(conn.compute.server_actions(a.server))
    if len(actions) < len(before) + 1:
        fail("%d actions for %d migrations" % (len(actions), len(before) + 1))
    newest = actions[0]  # newest first, as Nova lists them
    if newest.action != "live-migration":
        fail("newest action is %r, not live-migration" % newest.action)
    # 0.101's get_server_action passes the request id as an unknown `action_id` attribute and
    # then finds no id ("Request requires an ID"), against any cloud; the proxy's generic _get
    # with the same resource class is what it means to do.
    try:
        detail = conn.compute.get_server_action(newest.request_id, a.server)
    except openstack.exceptions.InvalidRequest as e:
        if "requires an ID" not in str(e):
            raise
        print("sdk_check: openstacksdk get_server_action: %s; using the proxy's _get" % e,
              file=sys.stderr)
        defects.append("get_server_action")
        detail = conn.compute._get(_server_action.ServerAction, newest.request_id,
                                   server_id=a.server)
    events = {e.event: e.result for e in detail.events}
    for name in ("compute_check_can_live_migrate_destination",
                 "compute_check_can_live_migrate_source", "compute_pre_live_migration",
                 "compute_live_migration", "compute_post_live_migration_at_destination"):
        if events.get(name) != "Success":
            fail("event %s of %s: %r (events: %s)" %
                 (name, newest.request_id, events.get(name), events))
    print(json.dumps({
        "migration": {"id": mig.id, "status": mig.status, "source": mig.source_compute,
                      "dest": mig.dest_compute},
        "actions": [{"action": x.action, "request_id": x.request_id, "user_id": x.user_id}
                    for x in actions],
        "events": events,
        "sdk_defects_worked_around": defects,
    }))


if __name__ == "__main__":
    main()
