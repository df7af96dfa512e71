#!/usr/bin/env bash
# The production topology on loopback, without Docker: a private redis-server, N gateway nodes,
# M bot workers and nginx balancing the gateways (WebSocket upgrade included), optionally
# Prometheus scraping every node. Every file, log and PID lives in one run directory.
#
#   deploy/loopback.sh start  --gateways N --workers M [--base-port P] [--dir D] [--prometheus]
#   deploy/loopback.sh render --gateways N --workers M [--base-port P] --dir D [--prometheus]
#   deploy/loopback.sh status --dir D
#   deploy/loopback.sh stop   --dir D
#
# `render` writes the configuration files only. Ports are free ones picked at start, or P, P+1, ...
# in the order: load balancer, gateways, workers, redis, prometheus. Port 6379 is never used.
#
# Environment: CHAT_* settings reach every node (CHAT_JWT_SECRET is generated and written to
# topology.env when unset); PYTHON is the interpreter with the project installed (default python3);
# REDIS_SERVER, NGINX and PROMETHEUS name the binaries; LOOPBACK_START_TIMEOUT bounds the wait
# for health in seconds (default 30).
set -euo pipefail

DEPLOY_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
PROJECT_DIR=$(dirname "$DEPLOY_DIR")
PYTHON=${PYTHON:-python3}
REDIS_SERVER=${REDIS_SERVER:-redis-server}
NGINX=${NGINX:-nginx}
PROMETHEUS=${PROMETHEUS:-prometheus}
START_TIMEOUT=${LOOPBACK_START_TIMEOUT:-30}

die() {
	echo "loopback: $*" >&2
	exit 1
}

usage() {
	sed -n '2,17s/^# \{0,1\}//p' "${BASH_SOURCE[0]}" >&2
	exit 2
}

# ---------------------------------------------------------------- arguments

COMMAND=${1:-}
[[ -n $COMMAND ]] || usage
shift
GATEWAYS=""
WORKERS=""
BASE_PORT=""
RUN_DIR=""
WITH_PROMETHEUS=0
while (($#)); do
	case $1 in
	--gateways) GATEWAYS=${2:?--gateways needs a number} && shift 2 ;;
	--workers) WORKERS=${2:?--workers needs a number} && shift 2 ;;
	--base-port) BASE_PORT=${2:?--base-port needs a port} && shift 2 ;;
	--dir) RUN_DIR=${2:?--dir needs a directory} && shift 2 ;;
	--prometheus) WITH_PROMETHEUS=1 && shift ;;
	-h | --help) usage ;;
	*) die "unknown argument: $1" ;;
	esac
done

is_count() { [[ $1 =~ ^[0-9]+$ ]]; }

check_topology_args() {
	if ! is_count "$GATEWAYS" || ((GATEWAYS < 1)); then die "--gateways must be a number >= 1"; fi
	is_count "$WORKERS" || die "--workers must be a number >= 0"
	if [[ -n $BASE_PORT ]] && ! { is_count "$BASE_PORT" && ((BASE_PORT >= 1024 && BASE_PORT < 65000)); }; then
		die "--base-port must be between 1024 and 65000"
	fi
}

# The run directory ends up in nginx and shell syntax, so it must be a plain path.
use_run_dir() {
	if [[ -z $RUN_DIR ]]; then
		[[ $COMMAND == start ]] || die "--dir is required"
		RUN_DIR=$(mktemp -d "${TMPDIR:-/tmp}/chat-loopback.XXXXXX")
	fi
	[[ $RUN_DIR =~ ^[A-Za-z0-9_./+@:-]+$ ]] || die "--dir may only hold letters, digits and _./+@:-"
	if [[ $COMMAND == start || $COMMAND == render ]]; then mkdir -p "$RUN_DIR"; fi
	[[ -d $RUN_DIR ]] || die "no such directory: $RUN_DIR"
	RUN_DIR=$(cd "$RUN_DIR" && pwd)
}

# ---------------------------------------------------------------- ports

# Prints COUNT distinct free loopback ports, one a line; never 6379, which belongs to someone else.
pick_ports() {
	"$PYTHON" - "$1" "$BASE_PORT" <<'PY'
import socket, sys

count, base = int(sys.argv[1]), sys.argv[2]

def bind(port):
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", port))
    return sock

held = []
if base:
    wanted = range(int(base), int(base) + count)
    if 6379 in wanted:
        sys.exit("loopback: port 6379 falls in the range; pick another --base-port")
    for port in wanted:
        try:
            held.append(bind(port))
        except OSError:
            sys.exit(f"loopback: port {port} is in use; pick another --base-port")
else:
    while len(held) < count:
        sock = bind(0)
        if sock.getsockname()[1] == 6379:
            continue
        held.append(sock)
for sock in held:
    print(sock.getsockname()[1])
for sock in held:
    sock.close()
PY
}

assign_ports() {
	local count=$((GATEWAYS + WORKERS + 3))
	local ports
	ports=$(pick_ports "$count") || exit 1
	mapfile -t PORTS <<<"$ports"
	LB_PORT=${PORTS[0]}
	GATEWAY_PORTS=("${PORTS[@]:1:GATEWAYS}")
	WORKER_PORTS=("${PORTS[@]:1+GATEWAYS:WORKERS}")
	REDIS_PORT=${PORTS[1 + GATEWAYS + WORKERS]}
	PROMETHEUS_PORT=${PORTS[2 + GATEWAYS + WORKERS]}
}

join_by() {
	local IFS=$1
	shift
	echo "$*"
}

# ---------------------------------------------------------------- configuration files

render_nginx() {
	local servers="" port template
	for port in "${GATEWAY_PORTS[@]}"; do
		servers+="        server 127.0.0.1:$port max_fails=1 fail_timeout=5s;"$'\n'
	done
	template=$(<"$DEPLOY_DIR/nginx/loopback.conf.template")
	template=${template//@RUN_DIR@/$RUN_DIR}
	template=${template//@DEPLOY_DIR@/$DEPLOY_DIR}
	template=${template//@LB_PORT@/$LB_PORT}
	template=${template//@UPSTREAM_SERVERS@/${servers%$'\n'}}
	printf '%s\n' "$template" >"$RUN_DIR/nginx.conf"
}

# Static targets (the compose file discovers replicas through DNS instead); `node` names each process.
render_prometheus() {
	local i
	{
		echo "# Written by deploy/loopback.sh for the processes of this run directory."
		echo "global:"
		echo "  scrape_interval: 5s"
		echo "  evaluation_interval: 5s"
		echo "rule_files:"
		echo "  - $DEPLOY_DIR/prometheus/alerts.yml"
		echo "scrape_configs:"
		echo "  - job_name: gateway"
		echo "    static_configs:"
		for i in "${!GATEWAY_PORTS[@]}"; do
			echo "      - targets: ['127.0.0.1:${GATEWAY_PORTS[i]}']"
			echo "        labels: {node: gateway-$((i + 1))}"
		done
		echo "  - job_name: worker"
		echo "    static_configs:"
		if ((WORKERS == 0)); then
			echo "      []"
		fi
		for i in "${!WORKER_PORTS[@]}"; do
			echo "      - targets: ['127.0.0.1:${WORKER_PORTS[i]}']"
			echo "        labels: {node: worker-$((i + 1))}"
		done
	} >"$RUN_DIR/prometheus.yml"
}

render_topology() {
	local gateway_urls=() worker_urls=() port
	for port in "${GATEWAY_PORTS[@]}"; do gateway_urls+=("http://127.0.0.1:$port"); done
	for port in "${WORKER_PORTS[@]}"; do worker_urls+=("http://127.0.0.1:$port"); done
	{
		echo "# Written by deploy/loopback.sh: KEY=VALUE lines, lists comma-separated."
		echo "LOOPBACK_DIR=$RUN_DIR"
		echo "LOOPBACK_LB_URL=http://127.0.0.1:$LB_PORT"
		echo "LOOPBACK_LB_PORT=$LB_PORT"
		echo "LOOPBACK_GATEWAY_PORTS=$(join_by , "${GATEWAY_PORTS[@]}")"
		echo "LOOPBACK_GATEWAY_URLS=$(join_by , "${gateway_urls[@]}")"
		echo "LOOPBACK_WORKER_PORTS=$(join_by , "${WORKER_PORTS[@]}")"
		echo "LOOPBACK_WORKER_URLS=$(join_by , "${worker_urls[@]}")"
		echo "LOOPBACK_REDIS_PORT=$REDIS_PORT"
		if ((WITH_PROMETHEUS)); then
			echo "LOOPBACK_PROMETHEUS_PORT=$PROMETHEUS_PORT"
			echo "LOOPBACK_PROMETHEUS_URL=http://127.0.0.1:$PROMETHEUS_PORT"
		fi
		echo "LOOPBACK_STOP_TIMEOUT=$STOP_TIMEOUT"
		echo "CHAT_REDIS_URL=redis://127.0.0.1:$REDIS_PORT/0"
		if ((GENERATED_SECRET)); then
			echo "CHAT_JWT_SECRET=$CHAT_JWT_SECRET"
		fi
	} >"$RUN_DIR/topology.env"
	chmod 600 "$RUN_DIR/topology.env"
}

render_all() {
	mkdir -p "$RUN_DIR/logs" "$RUN_DIR/pids" "$RUN_DIR/nginx" "$RUN_DIR/redis"
	GENERATED_SECRET=0
	if [[ -z ${CHAT_JWT_SECRET:-} ]]; then
		CHAT_JWT_SECRET=$("$PYTHON" -c 'import secrets; print(secrets.token_urlsafe(32))')
		GENERATED_SECRET=1
	fi
	# A gateway may take its whole drain to exit; give it that and a margin.
	local drain=${CHAT_DRAIN_SECONDS:-10}
	STOP_TIMEOUT=$((${drain%.*} + 20))
	render_nginx
	render_prometheus
	render_topology
}

# ---------------------------------------------------------------- processes

# launch NAME MARKER COMMAND...: start COMMAND in the background with its own session, output to
# logs/NAME.log, PID to pids/NAME.pid. MARKER is a piece of its command line that `stop` checks
# so that a PID reused by an unrelated process is never signalled.
launch() {
	local name=$1 marker=$2
	shift 2
	local detach=()
	if command -v setsid >/dev/null; then detach=(setsid); fi
	"${detach[@]}" "$@" </dev/null >"$RUN_DIR/logs/$name.log" 2>&1 &
	echo $! >"$RUN_DIR/pids/$name.pid"
	printf '%s\n' "$marker" >"$RUN_DIR/pids/$name.marker"
	STARTED+=("$name")
}

# True when pids/NAME.pid names a live process that is still the one started.
owns() {
	local name=$1 pid marker
	[[ -f $RUN_DIR/pids/$name.pid ]] || return 1
	pid=$(<"$RUN_DIR/pids/$name.pid")
	kill -0 "$pid" 2>/dev/null || return 1
	[[ -r /proc/$pid/cmdline ]] || return 0
	marker=$(<"$RUN_DIR/pids/$name.marker")
	tr '\0' ' ' <"/proc/$pid/cmdline" | grep -qF -- "$marker"
}

# wait_for SECONDS NAME=URL...: poll each URL (http:// must answer 200, tcp:// must accept) until
# all do; fail early when the process NAME has exited.
wait_for() {
	local timeout=$1
	shift
	local checks=() item name
	for item in "$@"; do
		name=${item%%=*}
		checks+=("$name=$(<"$RUN_DIR/pids/$name.pid")=${item#*=}")
	done
	"$PYTHON" - "$timeout" "${checks[@]}" <<'PY'
import http.client, os, socket, sys, time, urllib.request

deadline = time.monotonic() + float(sys.argv[1])
pending = [item.split("=", 2) for item in sys.argv[2:]]

def alive(pid):
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except FileNotFoundError:
        return False
    except OSError:  # no /proc here
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            return False
        return True

def answers(url):
    try:
        if url.startswith("tcp://"):
            host, port = url[6:].rsplit(":", 1)
            with socket.create_connection((host, int(port)), timeout=1):
                return True
        with urllib.request.urlopen(url, timeout=2) as response:
            return response.status == 200
    except (OSError, http.client.HTTPException):
        return False

while pending:
    for name, pid, url in list(pending):
        if not alive(pid):
            sys.exit(f"loopback: {name} exited during start (see logs/{name}.log)")
        if answers(url):
            pending.remove([name, pid, url])
    if pending and time.monotonic() > deadline:
        sys.exit("loopback: timed out waiting for " + ", ".join(f"{n} at {u}" for n, _, u in pending))
    if pending:
        time.sleep(0.1)
PY
}

show_logs() {
	local name
	for name in "${STARTED[@]}"; do
		echo "---- $name (last lines of logs/$name.log)" >&2
		tail -n 15 "$RUN_DIR/logs/$name.log" >&2 || true
	done
}

# terminate NAME...: SIGTERM each owned process, wait up to STOP_TIMEOUT for all, then SIGKILL.
terminate() {
	local names=() name deadline
	for name in "$@"; do
		if owns "$name"; then
			kill -TERM "$(<"$RUN_DIR/pids/$name.pid")" 2>/dev/null || true
			names+=("$name")
		fi
	done
	deadline=$((SECONDS + STOP_TIMEOUT))
	for name in "${names[@]}"; do
		while owns "$name" && ((SECONDS < deadline)); do sleep 0.1; done
		if owns "$name"; then
			echo "loopback: $name ignored SIGTERM for ${STOP_TIMEOUT}s; killing it" >&2
			kill -KILL "$(<"$RUN_DIR/pids/$name.pid")" 2>/dev/null || true
		fi
	done
	for name in "$@"; do rm -f "$RUN_DIR/pids/$name.pid" "$RUN_DIR/pids/$name.marker"; done
}

names_like() {
	local file
	for file in "$RUN_DIR/pids/$1"*.pid; do
		[[ -e $file ]] && basename "$file" .pid
	done
	return 0
}

# Front to back: nothing new arrives while gateways drain and workers hand work back,
# and Redis, which both need for that, goes last.
stop_all() {
	[[ -f $RUN_DIR/topology.env ]] || die "$RUN_DIR holds no loopback topology"
	STOP_TIMEOUT=$(sed -n 's/^LOOPBACK_STOP_TIMEOUT=//p' "$RUN_DIR/topology.env")
	STOP_TIMEOUT=${STOP_TIMEOUT:-30}
	local front=() back=()
	mapfile -t front < <(names_like nginx; names_like prometheus)
	mapfile -t back < <(names_like gateway-; names_like worker-)
	terminate "${front[@]}"
	terminate "${back[@]}"
	terminate redis
}

abandon_start() {
	local status=$?
	show_logs
	stop_all >/dev/null 2>&1 || true
	echo "loopback: start failed; logs are in $RUN_DIR/logs" >&2
	exit "$((status ? status : 1))"
}

start_all() {
	check_topology_args
	use_run_dir
	local name
	for name in $(names_like ""); do
		if owns "$name"; then die "$RUN_DIR already runs $name; stop it first"; fi
	done
	command -v "$REDIS_SERVER" >/dev/null || die "redis-server not found (apt-get install redis-server)"
	command -v "$NGINX" >/dev/null || die "nginx not found (apt-get install nginx)"
	if ((WITH_PROMETHEUS)); then
		command -v "$PROMETHEUS" >/dev/null || die "prometheus not found (apt-get install prometheus)"
	fi
	assign_ports
	render_all
	STARTED=()
	# Any failure from here on stops what was started, so nothing is left behind.
	trap abandon_start EXIT

	export CHAT_JWT_SECRET CHAT_REDIS_URL="redis://127.0.0.1:$REDIS_PORT/0" CHAT_HOST=127.0.0.1
	export PYTHONUNBUFFERED=1 PYTHONPATH="$PROJECT_DIR${PYTHONPATH:+:$PYTHONPATH}"

	launch redis ":$REDIS_PORT" "$REDIS_SERVER" --port "$REDIS_PORT" --bind 127.0.0.1 \
		--save "" --appendonly no --dir "$RUN_DIR/redis"
	wait_for "$START_TIMEOUT" "redis=tcp://127.0.0.1:$REDIS_PORT"

	local i port checks=()
	for i in "${!GATEWAY_PORTS[@]}"; do
		port=${GATEWAY_PORTS[i]}
		name=gateway-$((i + 1))
		launch "$name" "--port $port --node-id $name" "$PYTHON" -m gateway --host 127.0.0.1 --port "$port" --node-id "$name"
		checks+=("$name=http://127.0.0.1:$port/healthz")
	done
	for i in "${!WORKER_PORTS[@]}"; do
		port=${WORKER_PORTS[i]}
		name=worker-$((i + 1))
		launch "$name" "--node-id $name --metrics-port $port" "$PYTHON" -m worker --node-id "$name" --metrics-port "$port"
		checks+=("$name=http://127.0.0.1:$port/healthz")
	done
	launch nginx "$RUN_DIR/nginx.conf" "$NGINX" -p "$RUN_DIR/nginx/" -c "$RUN_DIR/nginx.conf" \
		-e "$RUN_DIR/logs/nginx-error.log"
	checks+=("nginx=http://127.0.0.1:$LB_PORT/nginx-health")
	if ((WITH_PROMETHEUS)); then
		launch prometheus "$RUN_DIR/prometheus.yml" "$PROMETHEUS" --config.file="$RUN_DIR/prometheus.yml" \
			--storage.tsdb.path="$RUN_DIR/prometheus-data" --web.listen-address="127.0.0.1:$PROMETHEUS_PORT"
		checks+=("prometheus=http://127.0.0.1:$PROMETHEUS_PORT/-/ready")
	fi
	wait_for "$START_TIMEOUT" "${checks[@]}"
	trap - EXIT

	echo "loopback: $GATEWAYS gateway(s), $WORKERS worker(s), redis on $REDIS_PORT; run dir $RUN_DIR"
	echo "http://127.0.0.1:$LB_PORT"
}

status_all() {
	use_run_dir
	local name state=0
	for name in $(names_like ""); do
		if owns "$name"; then
			echo "$name running (pid $(<"$RUN_DIR/pids/$name.pid"))"
		else
			echo "$name gone"
			state=1
		fi
	done
	return "$state"
}

case $COMMAND in
start) start_all ;;
render)
	check_topology_args
	[[ -n $RUN_DIR ]] || die "--dir is required"
	use_run_dir
	assign_ports
	render_all
	echo "$RUN_DIR"
	;;
stop)
	use_run_dir
	stop_all
	;;
status) status_all ;;
*) usage ;;
esac
