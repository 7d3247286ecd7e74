# shellcheck shell=bash
# Sourced by scripts/web/run: private configurations and start/stop of switchfs, PHP-FPM,
# nginx and Apache, all inside the work directory $W, listening on 127.0.0.1 only.
# Every process is started in the foreground of a background job so its pid is known, and is
# stopped by that pid (never by name). Nothing under /etc, /run or /var is written.
#
# Expects: $W (work dir, mode 0755), $BIN (switchfs binaries), $HERE (scripts/web),
# $OPC_SCRIPT and $OPC_SECRET (the OPcache endpoint switchfs --php-http calls in Apache).

declare -A PIDS=()  # name -> pid of every long-running process the suite started
PID_ORDER=()        # start order; stopped in reverse

# Runs "$@" in the background with stdin closed and output in $W/logs/NAME.out; records the pid.
# Each process gets its own session (setsid keeps the pid: a background job is no group
# leader): Apache's prefork parent sends SIGTERM to its whole process group when it stops,
# which would otherwise hit this script and every other server.
spawn() {
  local name=$1
  shift
  setsid "$@" </dev/null >"$W/logs/$name.out" 2>&1 &
  PIDS[$name]=$!
  PID_ORDER+=("$name")
}

# Stops one process by its recorded pid: SIGTERM, then SIGKILL after 10 s.
stop_one() {
  local name=$1 pid=${PIDS[$1]:-}
  [ -n "$pid" ] || return 0
  if kill -0 "$pid" 2>/dev/null; then
    kill -TERM "$pid" 2>/dev/null || true
    local _
    for _ in $(seq 100); do
      kill -0 "$pid" 2>/dev/null || break
      sleep 0.1
    done
    if kill -0 "$pid" 2>/dev/null; then
      echo "web: $name (pid $pid) ignored SIGTERM for 10 s; sending SIGKILL" >&2
      kill -KILL "$pid" 2>/dev/null || true
    fi
  fi
  wait "$pid" 2>/dev/null || true
  unset "PIDS[$name]"
}

# Children of a pid (worker processes), sorted.
children_of() {
  ps -o pid= --ppid "$1" 2>/dev/null | tr -d ' ' | sort -n
}

# Free TCP ports on 127.0.0.1, all distinct: held open together while they are picked.
free_ports() {
  php -n -r '
    $socks = []; $ports = [];
    for ($i = 0; $i < (int)$argv[1]; $i++) {
        $s = stream_socket_server("tcp://127.0.0.1:0", $errno, $errstr);
        if (!$s) { fwrite(STDERR, "free_ports: $errstr\n"); exit(1); }
        $socks[] = $s;
        $ports[] = substr(strrchr(stream_socket_get_name($s, false), ":"), 1);
    }
    echo implode(" ", $ports), "\n";' "$1"
}

# Waits until a TCP port on 127.0.0.1 accepts connections, while process NAME is alive.
wait_port() {
  local name=$1 port=$2 _
  for _ in $(seq 100); do
    if ! kill -0 "${PIDS[$name]}" 2>/dev/null; then
      return 1
    fi
    if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
      return 0
    fi
    sleep 0.1
  done
  return 1
}

wait_socket() {
  local name=$1 sock=$2 _
  for _ in $(seq 100); do
    kill -0 "${PIDS[$name]}" 2>/dev/null || return 1
    [ -S "$sock" ] && return 0
    sleep 0.1
  done
  return 1
}

# ---------------------------------------------------------------------------------------------
# switchfs

# start_switchfs INITIAL [switchfs options...]
start_switchfs() {
  local initial=$1 _
  shift
  mkdir -p "$W/docroot"
  # Not when a bind-mode docroot is already mounted there (read-only; a restart adopts it).
  mountpoint -q "$W/docroot" || chmod 0755 "$W/docroot"
  # NOTIFY_SOCKET is cleared so a suite started under systemd does not notify systemd.
  # SWITCHFS_LOG=info logs each OPcache invalidation per pool (with its duration).
  # SWITCHFS_EXE: the copy phase L replaces to upgrade (default: the built binary).
  spawn switchfs env -u NOTIFY_SOCKET RUST_LOG=${SWITCHFS_LOG:-warn} "${SWITCHFS_EXE:-$BIN/switchfs}" \
    --releases "$W/releases" --initial "$initial" \
    --control "$W/ctl.sock" --state "$W/state" "$@" "$W/docroot"
  for _ in $(seq 100); do
    kill -0 "${PIDS[switchfs]}" 2>/dev/null || return 1
    if mountpoint -q "$W/docroot" && [ -S "$W/ctl.sock" ] \
      && "$BIN/switchctl" --control "$W/ctl.sock" status >/dev/null 2>&1; then
      return 0
    fi
    sleep 0.1
  done
  return 1
}

# switchctl against the suite's daemon.
ctl() {
  "$BIN/switchctl" --control "$W/ctl.sock" --timeout 30 "$@"
}

# ---------------------------------------------------------------------------------------------
# PHP: one private php.ini for PHP-FPM and mod_php. PHP_INI_SCAN_DIR is set empty wherever PHP
# starts, so /etc/php/8.2/*/conf.d is not read: these are the only settings besides defaults.

write_php_ini() {
  mkdir -p "$W/php"
  cat >"$W/php/php.ini" <<EOF
; Production settings that matter for deploys (see scripts/web/NOTES.md).
zend_extension=opcache.so
realpath_cache_size=4096K
realpath_cache_ttl=600
opcache.enable=1
opcache.enable_cli=0
opcache.validate_timestamps=1
opcache.revalidate_freq=0
opcache.memory_consumption=64
opcache.max_accelerated_files=4000
display_errors=Off
log_errors=On
expose_php=Off
EOF
}

# start_fpm NAME CHILDREN [php -d settings...]: a PHP-FPM master with pm=static and CHILDREN
# workers running as www-data, listening on $W/NAME/fpm.sock.
start_fpm() {
  local name=$1 children=$2
  shift 2
  local dir=$W/$name
  local args=() setting
  for setting in "$@"; do
    args+=(-d "$setting")
  done
  mkdir -p "$dir"
  cat >"$dir/fpm.conf" <<EOF
[global]
pid = $dir/fpm.pid
error_log = $dir/error.log
daemonize = no
; A reload (SIGUSR2, as systemctl reload sends) lets running requests finish, as in production.
process_control_timeout = 10s

[app]
user = www-data
group = www-data
listen = $dir/fpm.sock
listen.owner = www-data
listen.group = www-data
listen.mode = 0660
listen.backlog = 511
pm = static
pm.max_children = $children
catch_workers_output = yes
clear_env = yes
EOF
  spawn "$name" env PHP_INI_SCAN_DIR= php-fpm8.2 --nodaemonize --fpm-config "$dir/fpm.conf" \
    -c "$W/php/php.ini" "${args[@]}"
  wait_socket "$name" "$dir/fpm.sock" || return 1
  # Wait until all workers are forked.
  local _
  for _ in $(seq 50); do
    [ "$(children_of "${PIDS[$name]}" | wc -l)" -ge "$children" ] && return 0
    sleep 0.1
  done
  return 1
}

# ---------------------------------------------------------------------------------------------
# nginx: one master, 2 workers, one server block per port.
#   P_NGX        root = switchfs mount                 -> fpm
#   P_NGX_LINK   root = symlink current -> releases/N  -> fpm (the control case)
#   P_NGX_OFC    root = switchfs mount, open_file_cache on (static files only)
#   P_NGX_FREQ   root = switchfs mount                 -> fpm-freq (opcache.revalidate_freq=2)
#   P_NGX_NOVAL  root = switchfs mount                 -> fpm-noval (opcache.validate_timestamps=0)

nginx_php_location() {
  cat <<EOF
    location ~ \.php\$ {
      try_files \$uri =404;
      include /etc/nginx/fastcgi_params;
      fastcgi_param SCRIPT_FILENAME \$document_root\$fastcgi_script_name;
      fastcgi_pass unix:$W/$1/fpm.sock;
    }
EOF
}

start_nginx() {
  local dir=$W/nginx
  mkdir -p "$dir/tmp"
  cat >"$dir/nginx.conf" <<EOF
user www-data;
worker_processes 2;
pid $dir/nginx.pid;
error_log $dir/error.log warn;
events { worker_connections 1024; }
http {
  include /etc/nginx/mime.types;
  default_type application/octet-stream;
  access_log off;
  sendfile on;
  tcp_nopush on;
  keepalive_timeout 30;
  keepalive_requests 100000;
  client_body_temp_path $dir/tmp/body;
  proxy_temp_path $dir/tmp/proxy;
  fastcgi_temp_path $dir/tmp/fastcgi;
  uwsgi_temp_path $dir/tmp/uwsgi;
  scgi_temp_path $dir/tmp/scgi;
  index index.php;

  server {
    listen 127.0.0.1:$P_NGX;
    root $W/docroot/public;
$(nginx_php_location fpm)
  }
  server {
    listen 127.0.0.1:$P_NGX_LINK;
    root $W/current/public;
$(nginx_php_location fpm)
  }
  server {
    listen 127.0.0.1:$P_NGX_OFC;
    root $W/docroot/public;
    open_file_cache max=1000 inactive=60s;
    open_file_cache_valid 60s;
  }
  server {
    listen 127.0.0.1:$P_NGX_FREQ;
    root $W/docroot/public;
$(nginx_php_location fpm-freq)
  }
  server {
    listen 127.0.0.1:$P_NGX_NOVAL;
    root $W/docroot/public;
$(nginx_php_location fpm-noval)
  }
}
EOF
  spawn nginx nginx -p "$dir/" -c "$dir/nginx.conf" -e "$dir/error.log" -g 'daemon off;'
  local port
  for port in "$P_NGX" "$P_NGX_LINK" "$P_NGX_OFC" "$P_NGX_FREQ" "$P_NGX_NOVAL"; do
    wait_port nginx "$port" || return 1
  done
}

# ---------------------------------------------------------------------------------------------
# Apache: mpm_prefork with exactly 4 children, mod_php, one virtual host per port.
#   P_AP        DocumentRoot = switchfs mount (EnableMMAP On, EnableSendfile On)
#   P_AP_LINK   DocumentRoot = symlink current -> releases/N (the control case)

start_apache() {
  local dir=$W/apache m=/usr/lib/apache2/modules
  mkdir -p "$dir/run"
  cat >"$dir/apache.conf" <<EOF
ServerRoot "$dir"
DefaultRuntimeDir "$dir/run"
PidFile "$dir/apache.pid"
ErrorLog "$dir/error.log"
LogLevel warn
ServerName 127.0.0.1
Listen 127.0.0.1:$P_AP
Listen 127.0.0.1:$P_AP_LINK

LoadModule mpm_prefork_module $m/mod_mpm_prefork.so
LoadModule authz_core_module $m/mod_authz_core.so
LoadModule mime_module $m/mod_mime.so
LoadModule dir_module $m/mod_dir.so
LoadModule php_module $m/libphp8.2.so
LoadModule alias_module $m/mod_alias.so
LoadModule env_module $m/mod_env.so
LoadModule authz_host_module $m/mod_authz_host.so

User www-data
Group www-data
StartServers 4
MinSpareServers 1
MaxSpareServers 4
ServerLimit 4
MaxRequestWorkers 4
MaxConnectionsPerChild 0
KeepAlive On
KeepAliveTimeout 5
MaxKeepAliveRequests 100

TypesConfig /etc/mime.types
PHPINIDir "$W/php"
DirectoryIndex index.php
<FilesMatch "\.php\$">
  SetHandler application/x-httpd-php
</FilesMatch>
<Directory />
  AllowOverride None
  Require all denied
</Directory>
<Directory "$W">
  Options FollowSymLinks
  AllowOverride None
  Require all granted
</Directory>

<VirtualHost 127.0.0.1:$P_AP>
  DocumentRoot "$W/docroot/public"
  EnableMMAP On
  EnableSendfile On
  # switchfs --php-http: the shipped script, outside the docroot, loopback only, and only
  # with the secret (docs/web-servers.md).
  Alias /.switchfs/opcache-invalidate "$OPC_SCRIPT"
  <Location /.switchfs/opcache-invalidate>
    Require local
    SetEnv SWITCHFS_SECRET $OPC_SECRET
  </Location>
</VirtualHost>
<Directory "$(dirname "$OPC_SCRIPT")">
  <Files "$(basename "$OPC_SCRIPT")">
    Require local
  </Files>
</Directory>
<VirtualHost 127.0.0.1:$P_AP_LINK>
  DocumentRoot "$W/current/public"
</VirtualHost>
EOF
  spawn apache env PHP_INI_SCAN_DIR= apache2 -f "$dir/apache.conf" -d "$dir" -DFOREGROUND
  wait_port apache "$P_AP" || return 1
  wait_port apache "$P_AP_LINK" || return 1
  local _
  for _ in $(seq 50); do
    [ "$(children_of "${PIDS[apache]}" | wc -l)" -ge 4 ] && return 0
    sleep 0.1
  done
  return 1
}

# ---- shared with scripts/bench and scripts/web/deploy-tools-test ---------------------------------

# start_switchfs_named NAME RELEASES MOUNT [switchfs options...]: one more switchfs daemon,
# recorded as switchfs-NAME (stop it with `stop_one switchfs-NAME`), control socket and state
# in $W/NAME.sock and $W/NAME.state, output in $W/logs/switchfs-NAME.out, log level
# $SWITCHFS_LOG (default warn). Returns 0 once the mount answers `switchctl status`, 1 when the
# daemon exits first or after 10 s.
start_switchfs_named() {
  local name=$1 releases=$2 mount=$3 _
  shift 3
  spawn "switchfs-$name" env -u NOTIFY_SOCKET RUST_LOG=${SWITCHFS_LOG:-warn} "$BIN/switchfs" \
    --releases "$releases" --control "$W/$name.sock" --state "$W/$name.state" "$@" "$mount"
  for _ in $(seq 100); do
    kill -0 "${PIDS[switchfs-$name]}" 2>/dev/null || return 1
    if mountpoint -q "$mount" \
      && "$BIN/switchctl" --control "$W/$name.sock" status >/dev/null 2>&1; then
      return 0
    fi
    sleep 0.1
  done
  return 1
}

# run_recorded NAME COMMAND...: runs COMMAND in the background (output where the caller sends
# it), recorded as NAME so a cleanup can `stop_one NAME` while it runs, and waits for it;
# returns its status. Waiting on a background job lets SIGINT/SIGTERM reach the caller's trap
# at once.
run_recorded() {
  local name=$1
  shift
  "$@" &
  PIDS[$name]=$!
  local rc=0
  wait "${PIDS[$name]}" || rc=$?
  unset "PIDS[$name]"
  return "$rc"
}
