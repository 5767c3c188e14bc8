#!/usr/bin/env bash
# Runs the MLflow tracking server that a team (or one person) logs sslscale runs to.
#
#   cluster/mlflow-server.sh [--backend-store-uri URI] [--artifacts-destination URI] [--host ADDR] [--port N]
#                            [--workers N] [--allow-any-host] [--daemon [--pid-file F] [--log-file F]] [-- MLFLOW_ARGS]
#
# Backend store (runs, params, metrics): a database.
#   team:       --backend-store-uri postgresql://USER@DBHOST:5432/mlflow
#               The password comes from PGPASSWORD or ~/.pgpass (libpq reads both), never from the command line:
#               every user of the machine can read command lines (`ps`), so a URI with a password in
#               --backend-store-uri is refused. PostgreSQL needs psycopg2 beside mlflow: pip install -e .[cluster];
#               postgresql:// is passed on as postgresql+psycopg2:// (SQLAlchemy 2.1 would pick psycopg 3).
#   one person: the default, sqlite:///$HOME/mlflow/mlflow.db
#   Or set MLFLOW_BACKEND_STORE_URI. Both URIs reach mlflow through its environment, not its command line.
# Artifacts (checkpoints, plots): --artifacts-destination (or MLFLOW_ARTIFACTS_DESTINATION), default
#   $HOME/mlflow/artifacts. The server runs with --serve-artifacts: clients upload and download through it
#   (mlflow-artifacts:/ URIs), so workers need no storage credentials. Give an s3://bucket/path or a persistent path
#   (a disk that outlives the head node, or a shared path); for an S3-compatible endpoint (SeaweedFS, MinIO, Ceph)
#   export MLFLOW_S3_ENDPOINT_URL, AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY here; boto3 comes with .[cluster].
# Network: binds 127.0.0.1 by default. On a Ray cluster pass the head's PRIVATE address (--host 10.0.1.23), never
#   0.0.0.0 on a public interface: the server has no authentication. Workers log to http://HEAD_PRIVATE_IP:5000;
#   people reach the UI through an SSH tunnel:  ssh -L 5000:HEAD_PRIVATE_IP:5000 user@HEAD_PUBLIC_ADDR
#   then open http://localhost:5000. --host 0.0.0.0 (or ::) is refused unless --allow-any-host is given.
# --daemon: starts the server in the background in its own session, writes its pid (the process group's id) to
#   --pid-file, waits until /health answers (SSLSCALE_MLFLOW_START_TIMEOUT s, default 60) and prints the server's
#   URI; on failure prints the log's tail and exits 1. Stop it with:  kill -TERM -- -"$(cat PID_FILE)"
#   Without --daemon the server runs in the foreground (exec).
# mlflow: $MLFLOW_BIN, else the `mlflow` on PATH (the one of the active virtual environment).
# Arguments after `--` go to `mlflow server` unchanged (e.g. --allowed-hosts mlflow.internal:5000).
# MLflow's job runner (8 processes, ~1.3 GB, unused by sslscale) stays off: MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false.
set -euo pipefail

NAME=mlflow-server.sh
SYNOPSIS="usage: cluster/$NAME [--backend-store-uri URI] [--artifacts-destination URI] [--host ADDR] [--port N]\
 [--workers N] [--allow-any-host] [--daemon [--pid-file F] [--log-file F]] [-- MLFLOW_ARGS]"

bad() {  # a wrong argument: one line naming it, with the usage; exit 2
    echo "$NAME: $1 ($SYNOPSIS; --help explains each)" >&2
    exit 2
}

help() {
    cat <<EOF
$SYNOPSIS

Runs \`mlflow server\` with --serve-artifacts for sslscale runs.
  --backend-store-uri URI      postgresql://USER@HOST:PORT/DB (password from PGPASSWORD or ~/.pgpass) or sqlite:///PATH;
                               default \$MLFLOW_BACKEND_STORE_URI, else sqlite:///\$HOME/mlflow/mlflow.db
  --artifacts-destination URI  s3://BUCKET/PATH (with MLFLOW_S3_ENDPOINT_URL for S3-compatible stores) or a path;
                               default \$MLFLOW_ARTIFACTS_DESTINATION, else \$HOME/mlflow/artifacts
  --host ADDR                  address to bind, default 127.0.0.1; on a cluster the head's private address
  --allow-any-host             permit --host 0.0.0.0 / :: (only behind a firewall: the server has no authentication)
  --port N                     default 5000
  --workers N                  server worker processes, default 2
  --daemon                     run in the background, wait until /health answers, print the URI
  --pid-file F                 with --daemon, default \$HOME/mlflow/mlflow-server.pid; stop: kill -TERM -- -\$(cat F)
  --log-file F                 with --daemon, default \$HOME/mlflow/mlflow-server.log
  -- MLFLOW_ARGS               passed to \`mlflow server\` unchanged
People reach a cluster's server through an SSH tunnel: ssh -L 5000:HEAD_PRIVATE_IP:5000 user@HEAD_PUBLIC_ADDR
EOF
}

backend="${MLFLOW_BACKEND_STORE_URI:-sqlite:///$HOME/mlflow/mlflow.db}"
artifacts="${MLFLOW_ARTIFACTS_DESTINATION:-$HOME/mlflow/artifacts}"
host=127.0.0.1 port=5000 workers=2 allow_any=0 daemon=0 pid_file="" log_file=""
extra=()
while (($#)); do
    case "$1" in
        -h | --help) help; exit 0 ;;
        --allow-any-host) allow_any=1; shift; continue ;;
        --daemon) daemon=1; shift; continue ;;
        --) shift; extra=("$@"); break ;;
        --backend-store-uri | --artifacts-destination | --host | --port | --workers | --pid-file | --log-file)
            (($# >= 2)) && [[ -n "$2" && "$2" != --* ]] || bad "$1 needs a value" ;;
        --*=*) bad "write '${1%%=*} ${1#*=}' instead of '$1'" ;;
        *) bad "unknown argument '$1'" ;;
    esac
    case "$1" in
        --backend-store-uri)
            [[ "$2" =~ ^[A-Za-z0-9+.-]+://[^/@:]*:[^/@]*@ ]] &&
                bad "--backend-store-uri carries a password, which every user sees in ps: put it in PGPASSWORD or ~/.pgpass"
            backend="$2" ;;
        --artifacts-destination) artifacts="$2" ;;
        --host) host="$2" ;;
        --port)
            if ! [[ "$2" =~ ^[0-9]{1,5}$ ]] || ((10#$2 < 1 || 10#$2 > 65535)); then
                bad "--port '$2' is not a port (1-65535)"
            fi
            port=$((10#$2)) ;;
        --workers)
            if ! [[ "$2" =~ ^[0-9]{1,3}$ ]] || ((10#$2 < 1)); then bad "--workers '$2' is not a number from 1 to 999"; fi
            workers=$((10#$2)) ;;
        --pid-file) pid_file="$2" ;;
        --log-file) log_file="$2" ;;
    esac
    shift 2
done

if [[ "$host" == 0.0.0.0 || "$host" == :: || "$host" == "[::]" ]] && ((!allow_any)); then
    echo "$NAME: refusing --host $host (every interface, public ones too, and the server has no authentication):" \
         "pass the head's private address, or --allow-any-host behind a firewall" >&2
    exit 2
fi
if ((!daemon)) && [[ -n "$pid_file$log_file" ]]; then
    bad "--pid-file and --log-file go with --daemon"
fi

MLFLOW_BIN="${MLFLOW_BIN:-$(command -v mlflow || true)}"
if [[ -z "$MLFLOW_BIN" || ! -x "$MLFLOW_BIN" ]]; then
    echo "$NAME: no mlflow found (MLFLOW_BIN unset, none on PATH): install sslscale (pip install -e .[cluster])" \
         "in the environment you run this from" >&2
    exit 1
fi

# SQLAlchemy 2.1 reads postgresql:// as psycopg 3; sslscale[cluster] installs psycopg2, so name it.
if [[ "$backend" == postgresql://* || "$backend" == postgres://* ]]; then
    backend="postgresql+psycopg2://${backend#*://}"
fi
# Local folders are made absolute (the server may run from anywhere) and created.
if [[ "$backend" == sqlite:///* ]]; then
    mkdir -p "$(dirname "${backend#sqlite:///}")"
fi
if [[ "$artifacts" != *://* ]]; then
    mkdir -p "$artifacts"
    artifacts="$(cd "$artifacts" && pwd)"
fi

export MLFLOW_BACKEND_STORE_URI="$backend" MLFLOW_ARTIFACTS_DESTINATION="$artifacts"
export MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false
cmd=("$MLFLOW_BIN" server --host "$host" --port "$port" --workers "$workers" --serve-artifacts ${extra[@]+"${extra[@]}"})

if ((!daemon)); then
    exec "${cmd[@]}"
fi

pid_file="${pid_file:-$HOME/mlflow/mlflow-server.pid}"
log_file="${log_file:-$HOME/mlflow/mlflow-server.log}"
mkdir -p "$(dirname "$pid_file")" "$(dirname "$log_file")"
if [[ -s "$pid_file" ]] && kill -0 "$(cat "$pid_file")" 2>/dev/null; then
    echo "$NAME: already running with pid $(cat "$pid_file") ($pid_file); stop it first: kill -TERM -- -$(cat "$pid_file")" >&2
    exit 1
fi
case "$host" in
    0.0.0.0 | :: | "[::]") probe=127.0.0.1 ;;
    *:*) probe="[${host#[}"; probe="${probe%]}]" ;;
    *) probe="$host" ;;
esac
if (exec 3<>"/dev/tcp/${probe//[\[\]]/}/$port") 2>/dev/null; then
    echo "$NAME: $probe:$port is already in use" >&2
    exit 1
fi

healthy() {  # GET /health answers 200 (bash's /dev/tcp: no curl needed on slim images)
    (
        exec 3<>"/dev/tcp/${probe//[\[\]]/}/$port" || exit 1
        printf 'GET /health HTTP/1.0\r\nHost: %s:%s\r\n\r\n' "$probe" "$port" >&3
        IFS= read -r -t 5 status <&3 && [[ "$status" == HTTP/*" 200"* ]]
    ) 2>/dev/null
}

# A background job of a non-interactive shell is no process-group leader, so setsid execs mlflow in place: $! is
# mlflow's pid, and the id of its new session and process group (which holds its uvicorn workers too).
setsid "${cmd[@]}" </dev/null >>"$log_file" 2>&1 &
pid=$!
echo "$pid" >"$pid_file"
url="http://$probe:$port"
limit="${SSLSCALE_MLFLOW_START_TIMEOUT:-60}"
deadline=$((SECONDS + limit))
while ((SECONDS < deadline)); do
    if ! kill -0 "$pid" 2>/dev/null; then
        echo "$NAME: mlflow server exited at start; the end of $log_file:" >&2
        tail -n 30 "$log_file" >&2
        rm -f "$pid_file"
        exit 1
    fi
    if healthy; then
        echo "$url"
        exit 0
    fi
    sleep 0.5
done
echo "$NAME: mlflow server did not answer $url/health within ${limit}s; stopped it; the end of $log_file:" >&2
tail -n 30 "$log_file" >&2
kill -TERM -- "-$pid" 2>/dev/null || true
sleep 2
kill -KILL -- "-$pid" 2>/dev/null || true
rm -f "$pid_file"
exit 1
