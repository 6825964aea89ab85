#!/usr/bin/env bash
# The scaled topology on this machine, without Docker: the local Postgres and Redis, a schema
# migration, 2 `community-chat api` + 2 `community-chat gateway` processes on loopback ports, and
# nginx (Debian's package, installed if missing) in front with deploy/nginx.conf.
#
#   deploy/local-topology.sh start    # prints the URLs and the JWT secret; writes $STATE/topology.env
#   deploy/local-topology.sh status   # what runs; exit 0 only when everything does
#   deploy/local-topology.sh stop     # stops what start started (only that), drops its database
#
# Environment:
#   COMMUNITY_CHAT_BIN    the binary (default: `cargo build`, in CARGO_TARGET_DIR if set)
#   CC_TOPOLOGY_DIR       state folder: pids, logs, nginx config, topology.env (default deploy/.state)
#   CC_TOPOLOGY_PORT      nginx's loopback port (default: a free one)
#   PGHOST PGPORT PGUSER  the Postgres server (default 127.0.0.1 5432 postgres, trust auth); the
#                         topology gets its own database cc_topology_<id>, dropped on stop
#   CC_TOPOLOGY_REDIS_URL the Redis (default redis://127.0.0.1:6379); channels use their own prefix
#   RUST_LOG              the processes' log filter (default info)
#
# topology.env (KEY=value lines, `source`-able): CC_TOPOLOGY_URL (nginx), CC_API_URLS,
# CC_GATEWAY_URLS (each process, comma-separated), JWT_SECRET, DATABASE_URL, REDIS_CHANNEL_PREFIX,
# and E2E_API_URLS / E2E_GATEWAY_URLS / E2E_JWT_SECRET / E2E_REDIS_PREFIX for the Node e2e suite
# (tests/e2e): each process directly.
#
# nginx pins a client to one gateway by its address, so everything sent through nginx from this
# machine reaches the same gateway; use CC_GATEWAY_URLS to reach both.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
STATE=${CC_TOPOLOGY_DIR:-$ROOT/deploy/.state}
ENV_FILE=$STATE/topology.env
export PGHOST=${PGHOST:-127.0.0.1} PGPORT=${PGPORT:-5432} PGUSER=${PGUSER:-postgres}
REDIS_URL=${CC_TOPOLOGY_REDIS_URL:-redis://127.0.0.1:6379}
PROCESSES=(api-1 api-2 gateway-1 gateway-2)
# A gateway drains (disconnects its sockets, ends open long-polls) within one ping interval.
STOP_TIMEOUT=30

log() { printf 'local-topology: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

random_hex() { od -An -N"$1" -tx1 /dev/urandom | tr -d ' \n'; }

# Whether pid $1 is alive and still runs the command we started (its cmdline contains $2), so a
# recycled pid is never signalled.
owned_alive() {
    local pid=$1 needle=$2
    [[ -n $pid && -r /proc/$pid/cmdline ]] || return 1
    tr '\0' ' ' </proc/"$pid"/cmdline | grep -qF -- "$needle"
}

find_nginx() {
    command -v nginx 2>/dev/null || { [[ -x /usr/sbin/nginx ]] && echo /usr/sbin/nginx; } || return 1
}

ensure_nginx() {
    find_nginx && return 0
    log "nginx is missing: installing Debian's package (apt-get install nginx)"
    local sudo=()
    [[ $(id -u) -eq 0 ]] || sudo=(sudo)
    # Debian's postinst may start the system nginx service; this script never uses or changes it.
    "${sudo[@]}" apt-get update >&2
    DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y --no-install-recommends nginx >&2
    find_nginx || die "nginx is still missing after apt-get install"
}

find_binary() {
    if [[ -n ${COMMUNITY_CHAT_BIN:-} ]]; then
        [[ -x $COMMUNITY_CHAT_BIN ]] || die "COMMUNITY_CHAT_BIN=$COMMUNITY_CHAT_BIN is not an executable"
        echo "$COMMUNITY_CHAT_BIN"
        return
    fi
    log "building community-chat (cargo build)"
    (cd "$ROOT" && cargo build --quiet --bin community-chat >&2)
    echo "${CARGO_TARGET_DIR:-$ROOT/target}/debug/community-chat"
}

port_in_use() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

http_status() { curl -s -o /dev/null -m 3 -w '%{http_code}' "$1" || true; }

# Waits for `listening on http://ADDR` in a process's log; prints ADDR.
wait_listening() {
    local name=$1 pid=$2 addr
    for _ in $(seq 1 300); do
        addr=$(grep -o -m1 'listening on http://[0-9.:]*' "$STATE/$name.log" 2>/dev/null | sed 's#.*http://##') || true
        [[ -n $addr ]] && { echo "$addr"; return; }
        kill -0 "$pid" 2>/dev/null || { tail -n 20 "$STATE/$name.log" >&2; die "$name exited at start-up"; }
        sleep 0.1
    done
    die "$name did not start listening within 30 s (see $STATE/$name.log)"
}

wait_ready() {
    local url=$1
    for _ in $(seq 1 150); do
        [[ $(http_status "$url") == 200 ]] && return 0
        sleep 0.2
    done
    die "$url did not answer 200 within 30 s"
}

# Starts one long-running process in its own session, detached from the caller's stdio (a test
# harness waiting for our output must not wait for them), and records its pid.
spawn() {
    local name=$1; shift
    setsid "$@" </dev/null >"$STATE/$name.log" 2>&1 9>&- &
    echo $! >"$STATE/$name.pid"
}

write_nginx_config() {
    local port=$1 routes=$STATE/nginx/routes.conf
    mkdir -p "$STATE/nginx/tmp"
    local args=(-e "s#^\([[:space:]]*listen\) 8080;#\1 127.0.0.1:$port;#")
    local name
    for name in "${PROCESSES[@]}"; do
        args+=(-e "s#\bserver $name:8080\b#server ${ADDRS[$name]}#")
    done
    sed "${args[@]}" "$ROOT/deploy/nginx.conf" >"$routes"
    # deploy/nginx.conf changed shape if a substitution found nothing: fail rather than proxy wrongly.
    grep -q "listen 127.0.0.1:$port;" "$routes" || die "deploy/nginx.conf has no 'listen 8080;' line"
    for name in "${PROCESSES[@]}"; do
        grep -qF "server ${ADDRS[$name]}" "$routes" || die "deploy/nginx.conf has no 'server $name:8080' line"
    done
    local t=$STATE/nginx/tmp
    cat >"$STATE/nginx/nginx.conf" <<EOF
# Generated by deploy/local-topology.sh; the routes are deploy/nginx.conf's.
daemon off;
worker_processes 2;
pid $STATE/nginx/nginx.pid;
error_log $STATE/nginx.log warn;
events { worker_connections 1024; }
http {
    default_type application/octet-stream;
    access_log $STATE/nginx-access.log;
    client_body_temp_path $t/client_body;
    proxy_temp_path $t/proxy;
    fastcgi_temp_path $t/fastcgi;
    uwsgi_temp_path $t/uwsgi;
    scgi_temp_path $t/scgi;
    include $routes;
}
EOF
    # As root, nginx's workers run as nobody and buffer to these folders.
    if [[ $(id -u) -eq 0 ]]; then chown -R nobody "$t" 2>/dev/null || true; fi
}

start_nginx() {
    local nginx port tries
    nginx=$(ensure_nginx)
    for tries in 1 2 3 4 5; do
        port=${CC_TOPOLOGY_PORT:-$((20000 + RANDOM % 40000))}
        if port_in_use "$port"; then
            [[ -n ${CC_TOPOLOGY_PORT:-} ]] && die "CC_TOPOLOGY_PORT $port is in use"
            continue
        fi
        write_nginx_config "$port"
        "$nginx" -t -q -p "$STATE/nginx" -e "$STATE/nginx.log" -c "$STATE/nginx/nginx.conf" \
            || die "the generated nginx config does not pass nginx -t (see $STATE/nginx.log)"
        spawn nginx "$nginx" -p "$STATE/nginx" -e "$STATE/nginx.log" -c "$STATE/nginx/nginx.conf"
        for _ in $(seq 1 50); do
            if [[ $(http_status "http://127.0.0.1:$port/nginx-healthz") == 200 ]]; then
                NGINX_PORT=$port
                return
            fi
            kill -0 "$(cat "$STATE/nginx.pid")" 2>/dev/null || break
            sleep 0.1
        done
        # Lost a race for the port (or nginx failed): stop it and try another.
        kill "$(cat "$STATE/nginx.pid")" 2>/dev/null || true
        rm -f "$STATE/nginx.pid"
        [[ -n ${CC_TOPOLOGY_PORT:-} ]] && break
        log "nginx did not come up on port $port (attempt $tries); retrying"
    done
    tail -n 20 "$STATE/nginx.log" >&2 || true
    die "nginx did not start"
}

drop_database() {
    local db=$1
    [[ $db =~ ^cc_topology_[a-z0-9_]+$ ]] || return 0
    psql -q -v ON_ERROR_STOP=1 -d postgres -c "DROP DATABASE IF EXISTS $db WITH (FORCE)" >/dev/null \
        || log "warning: could not drop database $db"
}

cmd_start() {
    mkdir -p "$STATE"
    if [[ -f $ENV_FILE ]] || compgen -G "$STATE/*.pid" >/dev/null; then
        die "a topology is already set up in $STATE: run '$0 stop' first"
    fi
    command -v psql >/dev/null || die "psql is needed (apt-get install postgresql-client)"
    command -v curl >/dev/null || die "curl is needed"
    rm -f "$STATE"/*.log
    local bin id db prefix secret
    bin=$(find_binary)
    [[ -x $bin ]] || die "no binary at $bin"
    id=$(random_hex 6)
    db=cc_topology_$id
    prefix=cc-topology-$id
    secret=$(random_hex 32)
    local database_url="postgres://$PGUSER@$PGHOST:$PGPORT/$db"
    echo "$db" >"$STATE/database"
    echo "$bin" >"$STATE/binary"
    # From here on a failure undoes what was started.
    trap 'log "start failed: stopping what was started"; cmd_stop >/dev/null 2>&1 || true' EXIT

    psql -q -v ON_ERROR_STOP=1 -d postgres -c "CREATE DATABASE $db" >/dev/null \
        || die "cannot create database $db on $PGHOST:$PGPORT as $PGUSER"
    export DATABASE_URL=$database_url REDIS_URL REDIS_CHANNEL_PREFIX=$prefix JWT_SECRET=$secret
    export RUST_LOG=${RUST_LOG:-info} LOG_FORMAT=text NO_COLOR=1 LISTEN_ADDR=127.0.0.1:0 DATA_DIR=$STATE/data
    "$bin" migrate >"$STATE/migrate.log" 2>&1 || { cat "$STATE/migrate.log" >&2; die "migrate failed"; }

    declare -gA ADDRS=()
    local name
    for name in "${PROCESSES[@]}"; do
        spawn "$name" "$bin" "${name%-*}"
    done
    for name in "${PROCESSES[@]}"; do
        ADDRS[$name]=$(wait_listening "$name" "$(cat "$STATE/$name.pid")")
    done
    for name in "${PROCESSES[@]}"; do
        wait_ready "http://${ADDRS[$name]}/readyz"
    done
    start_nginx

    local front="http://127.0.0.1:$NGINX_PORT"
    local api_urls="http://${ADDRS[api-1]},http://${ADDRS[api-2]}"
    local gateway_urls="http://${ADDRS[gateway-1]},http://${ADDRS[gateway-2]}"
    cat >"$ENV_FILE.tmp" <<EOF
CC_TOPOLOGY_URL=$front
CC_API_URLS=$api_urls
CC_GATEWAY_URLS=$gateway_urls
JWT_SECRET=$secret
DATABASE_URL=$database_url
REDIS_URL=$REDIS_URL
REDIS_CHANNEL_PREFIX=$prefix
COMMUNITY_CHAT_BIN=$bin
E2E_API_URLS=$api_urls
E2E_GATEWAY_URLS=$gateway_urls
E2E_JWT_SECRET=$secret
E2E_REDIS_PREFIX=$prefix
EOF
    mv "$ENV_FILE.tmp" "$ENV_FILE"
    trap - EXIT

    cat <<EOF
community-chat topology is up (state: $STATE)
  through nginx:  $front
    REST          $front/client/community/groups
    socket.io     $front  (path /socket.io, namespace /community-chat)
  api:            $api_urls
  gateway:        $gateway_urls
  JWT secret:     $secret
  database:       $database_url
  redis prefix:   $prefix
  env file:       $ENV_FILE
A token: JWT_SECRET=$secret $bin token --org acme --email you@acme.test
Stop it with: $0 stop
EOF
}

cmd_stop() {
    [[ -d $STATE ]] || { log "nothing to stop ($STATE does not exist)"; return 0; }
    local bin="" name pid pids=()
    [[ -f $STATE/binary ]] && bin=$(cat "$STATE/binary")
    for name in nginx "${PROCESSES[@]}"; do
        [[ -f $STATE/$name.pid ]] || continue
        pid=$(cat "$STATE/$name.pid")
        local needle=$bin
        [[ $name == nginx ]] && needle=$STATE/nginx/nginx.conf
        if [[ -n $needle ]] && owned_alive "$pid" "$needle"; then
            kill -TERM "$pid" 2>/dev/null || true
            pids+=("$pid:$needle")
        fi
        rm -f "$STATE/$name.pid"
    done
    local deadline=$((SECONDS + STOP_TIMEOUT)) entry
    for entry in "${pids[@]}"; do
        pid=${entry%%:*}
        while owned_alive "$pid" "${entry#*:}" && ((SECONDS < deadline)); do sleep 0.1; done
        if owned_alive "$pid" "${entry#*:}"; then
            log "pid $pid did not stop within ${STOP_TIMEOUT}s: killing it"
            kill -KILL "$pid" 2>/dev/null || true
        fi
    done
    if [[ -f $STATE/database ]]; then
        drop_database "$(cat "$STATE/database")"
        rm -f "$STATE/database"
    fi
    rm -rf "$STATE/nginx" "$STATE/data" "$STATE/binary" "$ENV_FILE"
    log "stopped (logs kept in $STATE)"
}

cmd_status() {
    [[ -f $ENV_FILE ]] || { echo "not running (no $ENV_FILE)"; return 3; }
    local bin name pid needle down=0
    bin=$(cat "$STATE/binary")
    for name in "${PROCESSES[@]}" nginx; do
        pid=$(cat "$STATE/$name.pid" 2>/dev/null || true)
        needle=$bin
        [[ $name == nginx ]] && needle=$STATE/nginx/nginx.conf
        if owned_alive "$pid" "$needle"; then
            echo "$name: running (pid $pid)"
        else
            echo "$name: NOT running"
            down=1
        fi
    done
    cat "$ENV_FILE"
    return $down
}

main() {
    local cmd=${1:-}
    case $cmd in
        start | stop | status) ;;
        *) echo "usage: $0 start|stop|status" >&2; exit 2 ;;
    esac
    mkdir -p "$STATE"
    # One command at a time per state folder.
    exec 9>"$STATE/.lock"
    flock -w 120 9 || die "another local-topology command holds $STATE/.lock"
    "cmd_$cmd"
}

main "$@"
