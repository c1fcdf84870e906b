"""The ``streamflow`` command: local runs, cluster roles, and the nimbus client commands.

Exit codes: 0 success, 1 a run that failed (a component could not start), 2 bad input
(one line on stderr, never a traceback), 130 interrupted by Ctrl-C. Every option of the
server roles also reads an environment variable, ``STREAMFLOW_<OPTION>`` (for example
``STREAMFLOW_ZK`` for ``--zk``), so containers need no command-line flags.
"""

from __future__ import annotations

import argparse
import base64
import importlib
import importlib.util
import json
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any, Callable, Sequence

from streamflow import __version__, devcluster
from streamflow.argtypes import positive_float, positive_int, switch
from streamflow.config import parse_overrides, parse_value
from streamflow.errors import StreamflowError
from streamflow.executor import TaskFailed
from streamflow.loader import load_topology
from streamflow.local import run_local
from streamflow.logpump import DEFAULT_MAX_BYTES
from streamflow.logs import LEVELS, format_line
from streamflow.status_view import format_status
from streamflow.worker_command import WorkerCommand, WorkerSecrets

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130
DRAIN_SECS = 30.0
"""How long nimbus, on SIGTERM, lets the API calls in flight finish (the manifests give
the pod 60 s between SIGTERM and SIGKILL)."""
SIGNAL_WAKE_SECS = 0.2
"""How often nimbus's main thread wakes while it waits for SIGTERM: a wait with no timeout
was seen to miss the signal (readyz still answered 200 ten seconds later, about one run
in six of the SIGTERM test), and a handler only runs when the main thread does."""
log = logging.getLogger("streamflow.cli")
COMMAND_MODULES = ("streamflow_connectors.commands",)
"""Modules that add commands when they are installed: each has ``register(command)``,
which calls ``command(name, handler, help, description)`` (it returns the command's
argparse parser) once per command it adds. The engine imports none of them otherwise."""


def _env(option: str, default: Any = None) -> Any:
    return os.environ.get("STREAMFLOW_" + option.upper().replace("-", "_"), default)


def _add(parser: argparse.ArgumentParser, option: str, help: str, default: Any = None,
         kind: Callable[[str], Any] = str, required: bool = False) -> None:
    """An option that falls back on its environment variable, then on ``default``. A value
    from the environment is checked as the command line's would be (argparse converts a
    text default with ``kind``): a bad one is a usage error, not a traceback."""
    value = _env(option.lstrip("-"), default)
    parser.add_argument(option, default=value, type=kind,
                        required=required and value is None,
                        help=f"{help} (env STREAMFLOW_{option.lstrip('-').upper().replace('-', '_')})")


def _log_level(text: str) -> str:
    """A log level's name, in any case (a type, not ``choices``: argparse checks the
    choices of a value given on the command line only, not of one from the environment)."""
    if text.upper() not in LEVELS:
        raise argparse.ArgumentTypeError(f"invalid level {text!r} (choose from {', '.join(LEVELS)})")
    return text.upper()


def _add_switch(parser: argparse.ArgumentParser, option: str, help: str) -> None:
    """An on/off option (``--x``/``--no-x``), off unless given or its environment variable
    says on (1/0, true/false, yes/no, on/off; see :func:`_switch`)."""
    variable = "STREAMFLOW_" + option.lstrip("-").upper().replace("-", "_")
    parser.add_argument(option, action=argparse.BooleanOptionalAction, default=os.environ.get(variable, False),
                        help=f"{help} (env {variable}=1)")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="streamflow", description="Real-time stream processing in the model of Apache Storm.")
    parser.add_argument("--version", action="version", version=f"streamflow {__version__}")
    _add(parser, "--log-level", f"level of the log lines written to stderr ({', '.join(LEVELS)})",
         "WARNING", _log_level)
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    def command(name: str, handler: Callable[[argparse.Namespace], int], help: str,
                description: str | None = None) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, help=help, description=description or help)
        sub.set_defaults(handler=handler)
        return sub

    def topology_file(sub: argparse.ArgumentParser) -> None:
        sub.add_argument("file", metavar="FILE", help="Python file defining build(config)")
        sub.add_argument("-c", dest="config", action="append", default=[], metavar="KEY=VALUE",
                         help="config value, given to build() and laid over the topology's config; "
                              "VALUE is read as JSON when it parses (4, true, null), else as a string")

    local = command("local", _local, "run a topology in this process, with no servers",
                    "Run the topology that FILE defines (a function build(config) returning a "
                    "Topology) in one process. Ends when every spout is exhausted and every tuple "
                    "tree is done, after --timeout, or on Ctrl-C; then prints a summary per "
                    "component on stderr.")
    topology_file(local)
    local.add_argument("--timeout", type=positive_float, metavar="SECONDS",
                       help="stop after this many seconds (default: run until finished)")

    describe = command("describe", _describe, "print a topology file's topology as JSON")
    topology_file(describe)

    def tls_options(sub: argparse.ArgumentParser, what: str) -> None:
        for option, file in (("--tls-cert", "certificate chain"), ("--tls-key", "key"), ("--tls-ca", "CA")):
            _add(sub, option, f"PEM file of {what}: {file}")

    def client(sub: argparse.ArgumentParser) -> None:
        _add(sub, "--nimbus", "URL of any nimbus (standbys forward to the leader)")
        _add(sub, "--token", "API token, when nimbus requires one")
        _add(sub, "--tls-ca", "PEM file of the CA that signed nimbus's HTTPS certificate (default: the system's)")

    submit = command("submit", _submit, "upload a topology to the cluster and start it",
                     "Validate FILE's topology here, then upload the file and the directory it "
                     "lives in to nimbus, which schedules it onto worker slots.")
    topology_file(submit)
    submit.add_argument("--name", required=True, help="name of the running topology")
    submit.add_argument("--workers", type=positive_int, help="worker processes (topology.workers)")
    client(submit)

    for name, handler, help in (
        ("list", _list, "list the running topologies"),
        ("status", _status, "workers, tasks, counters and last errors of a topology"),
        ("top", _top, "the status table of a topology, refreshed until Ctrl-C (status --watch)"),
        ("logs", _logs, "log lines of a topology's workers, from every node"),
        ("set-log-level", _set_log_level, "change the log level of a topology's workers at run time"),
        ("kill", _kill, "deactivate a topology, let in-flight tuples finish, then stop it"),
        ("activate", _activate, "let a topology's spouts emit again"),
        ("deactivate", _deactivate, "stop a topology's spouts from emitting"),
        ("rebalance", _rebalance, "move a topology to a new worker count or parallelism"),
        ("set-config", _set_config, "change config of a running topology (spouts apply it at once, "
                                    "e.g. -c kafka.quotas='{\"CLIENT\": {\"records_per_sec\": 100}}')"),
    ):
        sub = command(name, handler, help)
        if name != "list":
            sub.add_argument("name", metavar="NAME")
        if name in ("list", "status", "logs"):
            sub.add_argument("--json", action="store_true", help="print the answer as JSON")
        if name in ("status", "top"):
            sub.add_argument("--watch", type=positive_float, nargs="?", const=2.0, default=2.0 if name == "top"
                             else None, metavar="SECONDS", help="refresh every SECONDS (default 2) until Ctrl-C")
        if name == "logs":
            sub.add_argument("--component", metavar="C", help="only the lines of this component's tasks")
            sub.add_argument("--follow", "-f", action="store_true", help="keep printing new lines until Ctrl-C")
        if name == "set-log-level":
            sub.add_argument("level", metavar="LEVEL", type=str.upper, choices=LEVELS)
        if name == "kill":
            sub.add_argument("--wait", type=float, metavar="SECONDS",
                             help="seconds to let tuples in flight finish (default: the message timeout)")
        if name == "set-config":
            sub.add_argument("-c", dest="config", action="append", required=True, metavar="KEY=VALUE")
        if name == "rebalance":
            sub.add_argument("--workers", type=positive_int)
            sub.add_argument("--parallelism", action="append", default=[], metavar="COMPONENT=N")
        client(sub)

    for name in COMMAND_MODULES:
        if importlib.util.find_spec(name.rpartition(".")[0]) is not None:
            importlib.import_module(name).register(command)

    def coordinated(sub: argparse.ArgumentParser) -> None:
        _add(sub, "--zk", "ZooKeeper hosts, host:port[,host:port...]", required=True)
        _add(sub, "--zk-root", "root znode of this streamflow cluster", "/streamflow")
        _add(sub, "--zk-auth", "user:password: streamflow's znodes get a digest ACL for it")
        _add(sub, "--zk-session-timeout", "ZooKeeper session timeout in seconds", 10.0, float)
        _add(sub, "--zk-connect-timeout", "how long to keep trying to reach ZooKeeper at start, in seconds "
             "(default: the session timeout; a Kubernetes pod starting beside its ensemble wants minutes)",
             None, float)

    nimbus = command("nimbus", _nimbus, "run a nimbus (master); several may run, one leads")
    coordinated(nimbus)
    _add(nimbus, "--host", "address other processes reach this nimbus at; without a token it must be a "
         "loopback address (protected mode) unless --insecure", "127.0.0.1")
    _add(nimbus, "--port", "HTTP API port", 8080, int)
    _add(nimbus, "--token-file", "file holding the API token; calls without it get 401")
    _add_switch(nimbus, "--insecure", "serve the API without a token on a non-loopback --host: anyone "
                "who reaches it can run code on the cluster")
    _add_switch(nimbus, "--metrics-open", "serve GET /metrics without the token")
    tls_options(nimbus, "HTTPS for the API (cert and key; the CA to check other nimbus's certificates)")
    _add(nimbus, "--worker-timeout", "seconds without heartbeat before a worker's tasks move", 30.0, float)
    _add(nimbus, "--launch-timeout", "seconds a new worker has to send its first heartbeat", 120.0, float)

    supervisor = command("supervisor", _supervisor, "run a supervisor: starts the workers of this node")
    coordinated(supervisor)
    _add(supervisor, "--slots", "worker slots (ports) this node offers", 4, int)
    _add(supervisor, "--host", "address its workers and health port listen on, and other nodes reach", "127.0.0.1")
    _add(supervisor, "--base-port", "first worker port; slots use consecutive ports", 6700, int)
    _add(supervisor, "--id", "supervisor id (default: HOST-BASE_PORT)")
    _add(supervisor, "--data-dir", "code packages, worker logs, virtualenvs", "streamflow-data/supervisor")
    _add(supervisor, "--health-port", "port of GET /healthz, /readyz and /metrics (0: none)", 8081, int)
    _add(supervisor, "--token-file", "file holding the API token, which GET /metrics then needs")
    _add_switch(supervisor, "--metrics-open", "serve GET /metrics (its own and its workers') without the token")
    _add(supervisor, "--worker-memory-mb", "each worker's address-space cap (RLIMIT_AS), MiB", kind=positive_int)
    _add(supervisor, "--log-max-bytes", "rotate a worker's log past this size", DEFAULT_MAX_BYTES, positive_int)
    _add_switch(supervisor, "--worker-logs-to-stdout", "also write every worker's log lines to stdout")
    tls_options(supervisor, "the worker links' TLS (all three or none)")
    _add_switch(supervisor, "--virtualenvs", "build a virtualenv (pip install -r) for each topology with a "
                "streamparse virtualenvs/NAME.txt, once per distinct file, and run its components in it")

    worker = command("worker", _worker, "run one worker process (started by a supervisor)")
    WorkerCommand.add_arguments(worker)

    dev = command("dev-cluster", _dev_cluster, "run ZooKeeper, a nimbus and supervisors on this machine, "
                  "for trying topologies as a cluster runs them; Ctrl-C stops them all")
    devcluster.add_arguments(dev)
    return parser


# -- local mode ---------------------------------------------------------------------------


def _local(args: argparse.Namespace) -> int:
    topology = load_topology(args.file, parse_overrides(args.config))
    result = run_local(topology, timeout=args.timeout)
    print(result.summary(), file=sys.stderr)
    return EXIT_INTERRUPTED if result.outcome == "interrupted" else EXIT_OK


def _describe(args: argparse.Namespace) -> int:
    topology = load_topology(args.file, parse_overrides(args.config))
    print(json.dumps(topology.describe(), indent=2))
    return EXIT_OK


# -- client commands ----------------------------------------------------------------------


def _client(args: argparse.Namespace) -> Any:
    from streamflow.client import NimbusClient

    return NimbusClient(args.nimbus, args.token, tls_ca=args.tls_ca)


def _submit(args: argparse.Namespace) -> int:
    from streamflow.package import pack

    overrides = parse_overrides(args.config)
    if args.workers is not None:
        overrides["topology.workers"] = args.workers
    path = Path(args.file)
    load_topology(path, overrides)  # refuse an invalid topology before uploading it
    file, package = pack(path)
    answer = _client(args).call("POST", "submit", body={
        "name": args.name, "file": file, "config": overrides, "workers": args.workers,
        "package": base64.b64encode(package).decode(),
    })
    print(f"submitted {answer['name']} as {answer['id']}")
    return EXIT_OK


def _list(args: argparse.Namespace) -> int:
    answer = _client(args).call("GET", "list")
    if args.json:
        print(json.dumps(answer, indent=2))
        return EXIT_OK
    rows = [("name", "status", "workers", "tasks", "uptime")] + [
        (t["name"], t["status"], str(t["workers"]), str(t["tasks"]), f"{t['uptime']:.0f} s")
        for t in answer["topologies"]
    ]
    widths = [max(len(r[i]) for r in rows) for i in range(5)]
    for row in rows:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())
    return EXIT_OK


def _status(args: argparse.Namespace) -> int:
    client = _client(args)
    while True:
        answer = client.call("GET", "status", args.name)
        text = json.dumps(answer, indent=2) if args.json else format_status(answer)
        if args.watch is None:
            print(text)
            return EXIT_OK
        if sys.stdout.isatty():
            print("\033[H\033[2J", end="")  # clear the terminal, as top does
        print(text + "\n", flush=True)
        time.sleep(args.watch)


def _top(args: argparse.Namespace) -> int:
    args.json = False
    return _status(args)


def _logs(args: argparse.Namespace) -> int:
    client = _client(args)
    query = {"component": args.component} if args.component else {}
    cursor: dict[str, int] | None = None
    while True:
        answer = client.call("GET", "logs", args.name,
                             query={**query, **({"cursor": json.dumps(cursor)} if cursor else {})})
        for line in answer["lines"]:
            print(json.dumps(line) if args.json else format_line(line))
        for missing in answer["unreachable"]:
            print(f"streamflow: cannot read the logs of worker {missing['worker']}: {missing['error']}",
                  file=sys.stderr)
        sys.stdout.flush()
        if not args.follow:
            return EXIT_OK
        cursor = answer["cursor"]
        time.sleep(1.0)


def _set_log_level(args: argparse.Namespace) -> int:
    _client(args).call("POST", "log-level", args.name, {"level": args.level})
    print(f"log level of {args.name} is now {args.level}")
    return EXIT_OK


def _kill(args: argparse.Namespace) -> int:
    answer = _client(args).call("POST", "kill", args.name, {"wait": args.wait})
    print(f"killed {args.name}: its workers stop in {answer['wait']:g} s")
    return EXIT_OK


def _activate(args: argparse.Namespace) -> int:
    _client(args).call("POST", "activate", args.name)
    print(f"activated {args.name}")
    return EXIT_OK


def _deactivate(args: argparse.Namespace) -> int:
    _client(args).call("POST", "deactivate", args.name)
    print(f"deactivated {args.name}")
    return EXIT_OK


def _rebalance(args: argparse.Namespace) -> int:
    parallelism = {}
    for option in args.parallelism:
        component, sep, value = option.partition("=")
        parsed = parse_value(value)
        if not sep or not component or not isinstance(parsed, int):
            raise StreamflowError(f"malformed --parallelism {option!r}: expected COMPONENT=N")
        parallelism[component] = parsed
    answer = _client(args).call("POST", "rebalance", args.name,
                                {"workers": args.workers, "parallelism": parallelism})
    print(f"rebalancing {args.name} to {answer['workers']} workers")
    return EXIT_OK


def _set_config(args: argparse.Namespace) -> int:
    _client(args).call("POST", "config", args.name, {"config": parse_overrides(args.config)})
    print(f"changed the config of {args.name}")
    return EXIT_OK


# -- cluster roles ------------------------------------------------------------------------


def _state(args: argparse.Namespace) -> Any:
    from streamflow.zkstate import ClusterState

    state = ClusterState(args.zk, args.zk_root, args.zk_auth, args.zk_session_timeout)
    state.start(timeout=args.zk_connect_timeout or args.zk_session_timeout)
    return state


def _nimbus(args: argparse.Namespace) -> int:
    import signal
    import threading

    from streamflow.httpapi import is_loopback, read_token, serve
    from streamflow.nimbus import Nimbus
    from streamflow.nimbus_api import nimbus_api
    from streamflow.transport.tls import api_contexts

    token = read_token(args.token_file)
    insecure = switch("INSECURE", args.insecure)
    if token is None and not insecure and not is_loopback(args.host):
        raise StreamflowError(f"nimbus has no API token and --host {args.host} is not a loopback address: "
                              "give it --token-file, or --insecure to let anyone who reaches it run code")
    server_tls, client_tls = api_contexts(args.tls_cert, args.tls_key, args.tls_ca)
    state = _state(args)
    nimbus = Nimbus(state, args.host, args.port, args.worker_timeout, args.launch_timeout, client_tls)
    stopped = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stopped.set())
    api = nimbus_api(nimbus, token, metrics_open=switch("METRICS_OPEN", args.metrics_open))
    server = serve(api, "0.0.0.0" if token or insecure else args.host, args.port, "nimbus", tls=server_tls)
    nimbus.start()
    print(f"nimbus serving {nimbus.url}", file=sys.stderr, flush=True)
    while not stopped.wait(SIGNAL_WAKE_SECS):
        pass
    nimbus.drain()
    if not server.drain(DRAIN_SECS):
        log.warning("nimbus %s: calls still running after %.0f s; stopping anyway", nimbus.url, DRAIN_SECS)
    nimbus.stop()
    state.stop()
    return EXIT_OK


def _supervisor(args: argparse.Namespace) -> int:
    from streamflow.httpapi import read_token
    from streamflow.supervisor import Supervisor, serve_health
    from streamflow.worker_slot import Launch, tls_files
    token = read_token(args.token_file)
    launch = Launch(WorkerSecrets(args.zk_auth, token), args.worker_memory_mb, args.log_max_bytes,
                    switch("WORKER_LOGS_TO_STDOUT", args.worker_logs_to_stdout),
                    tls_files(args.tls_cert, args.tls_key, args.tls_ca),
                    token is None or switch("METRICS_OPEN", args.metrics_open))
    supervisor = Supervisor(_state(args), args.id or f"{args.host}-{args.base_port}", args.host,
                            list(range(args.base_port, args.base_port + args.slots)), Path(args.data_dir), launch,
                            args.health_port, switch("VIRTUALENVS", args.virtualenvs))
    try:
        serve_health(supervisor)
        supervisor.run()
    finally:
        supervisor.state.stop()
    return EXIT_OK


def _dev_cluster(args: argparse.Namespace) -> int:
    return devcluster.run(devcluster.options_of(args))


def _worker(args: argparse.Namespace) -> int:
    from streamflow.worker_process import run_worker

    return run_worker(WorkerCommand.from_args(args), WorkerSecrets.read_stdin())


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the console script; returns the exit code."""
    args = _parser().parse_args(argv)
    logging.basicConfig(level=args.log_level,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        return int(args.handler(args))
    except StreamflowError as exc:
        print(f"streamflow: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except TaskFailed as exc:
        print(f"streamflow: failed: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
