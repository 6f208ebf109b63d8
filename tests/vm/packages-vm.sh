#!/bin/bash
# Runs INSIDE the VM (real systemd 252 as PID 1, nginx, julia 1.5.3 at
# /usr/bin/julia, no network) via tests/vm/run-vm-package-test. Installs the
# .deb the way a user does and checks what they get: the socket enabled and
# listening, nginx with the shipped snippet serving an example page through a
# service that the first request starts, an upgrade under load that fails no
# request, a missing Julia explained, and a purge that leaves nothing behind
# but nginx as it was. Everything is ~9x slower here (emulated CPU): timeouts
# are generous. Prints "N passed, M failed"; exits non-zero on any failure.
set -u
PASS=0 FAIL=0
ok()   { PASS=$((PASS+1)); echo "PASS: $*"; }
bad()  { FAIL=$((FAIL+1)); echo "FAIL: $*"; }
check() { local d=$1; shift; if "$@"; then ok "$d"; else bad "$d"; fi; }
F=$FILES_DIR/pkg
DEB=$(ls "$F"/julia-fcgi_*.deb)
VERSION=$(cat "$F/VERSION")
URL=http://127.0.0.1:8080
export DEBIAN_FRONTEND=noninteractive
unit_state() { systemctl show -p "$2" --value "$1"; }
journal() { journalctl -u julia-fcgi.service -b --no-pager -q "$@"; }

echo "== before: no julia-fcgi on the image"
check "no julia-fcgi user yet" bash -c '! getent passwd julia-fcgi'
check "nginx running" systemctl is-active -q nginx

echo "== dpkg -i $(basename "$DEB")"
dpkg -i "$DEB"; rc=$?
check "dpkg -i succeeds offline (dependencies already on the image)" test "$rc" = 0
check "package installed" test "$(dpkg-query -W -f='${Status}' julia-fcgi)" = "install ok installed"
check "julia-fcgi --version is the package's version" \
    test "$(julia-fcgi --version)" = "julia-fcgi $VERSION"
check "dpkg has the version" test "$(dpkg-query -W -f='${Version}' julia-fcgi)" = "$VERSION-1"
check "julia-fcgi user and group created (sysusers.d)" \
    bash -c 'getent passwd julia-fcgi && getent group julia-fcgi'
check "julia-fcgi is a system user" test "$(id -u julia-fcgi)" -lt 1000
check "its home is /var/lib/julia-fcgi, with no login shell" \
    test "$(getent passwd julia-fcgi | cut -d: -f6,7)" = "/var/lib/julia-fcgi:/usr/sbin/nologin"
check "home directory made (tmpfiles.d), owned by julia-fcgi" \
    test "$(stat -c %U:%G /var/lib/julia-fcgi)" = julia-fcgi:julia-fcgi
check "worker installed where the binary looks for it" test -f /usr/share/julia-fcgi/worker.jl
check "socket unit enabled" test "$(systemctl is-enabled julia-fcgi.socket)" = enabled
check "socket unit listening" systemctl is-active -q julia-fcgi.socket
check "service not running yet" test "$(systemctl is-active julia-fcgi.service)" = inactive
check "socket is root:www-data 0660" \
    test "$(stat -c '%U:%G %a' /run/julia-fcgi/julia-fcgi.sock)" = "root:www-data 660"
check "conffiles: config and nginx snippet" \
    bash -c "dpkg-query -W -f='\${Conffiles}' julia-fcgi | grep -q ' /etc/julia-fcgi/julia-fcgi.toml ' &&
             dpkg-query -W -f='\${Conffiles}' julia-fcgi | grep -q ' /etc/nginx/snippets/julia-fcgi.conf '"
check "man page julia-fcgi(8) with its FILES section" \
    bash -c "zcat /usr/share/man/man8/julia-fcgi.8.gz | grep -q '^\.SH FILES'"
check "bash completion" test -s /usr/share/bash-completion/completions/julia-fcgi

echo "== configure: slow emulated CPU (this also edits the conffile)"
cat >> /etc/julia-fcgi/julia-fcgi.toml <<'TOML'

# Added by the VM test: Julia starts slowly on an emulated CPU.
worker_start_timeout = "600s"
TOML
mkdir -p /var/www/jl
if [ -f /usr/share/doc/julia-fcgi/examples/hello.jl ]; then
    cp /usr/share/doc/julia-fcgi/examples/hello.jl /var/www/jl/hello.jl
else
    cp "$F/hello.jl" /var/www/jl/hello.jl
fi
echo static > /var/www/jl/static.txt
chmod -R a+rX /var/www/jl
cat > /etc/nginx/sites-enabled/default <<'NGINX'
server {
    listen 127.0.0.1:8080 default_server;
    root /var/www/jl;
    # Julia starts slowly in this emulated VM.
    fastcgi_read_timeout 600s;
    include snippets/julia-fcgi.conf;
}
NGINX
check "nginx accepts the shipped snippet" nginx -t -q
systemctl reload nginx

echo "== the first request starts the service"
t0=$(date +%s)
CODE=$(curl -sS -m 600 -o /tmp/body -w '%{http_code}' $URL/hello.jl); cat /tmp/body; echo
echo "first request took $(( $(date +%s) - t0 ))s"
check "example page through nginx: 200" test "$CODE" = 200
check "example page body" grep -q "Hello, world!" /tmp/body
check "service started by that request" systemctl is-active -q julia-fcgi.service
MAIN=$(unit_state julia-fcgi.service MainPID)
check "master runs as julia-fcgi" test "$(ps -o user:32= -p "$MAIN")" = julia-fcgi
WORKERS=$(pgrep -P "$MAIN" | paste -sd, -)
check "workers run as julia-fcgi" \
    test -n "$WORKERS" -a "$(ps -o user:32= -p "$WORKERS" | sort -u | tr -d ' ')" = julia-fcgi
check "workers' HOME is the state directory" \
    bash -c "tr '\0' '\n' < /proc/${WORKERS%%,*}/environ | grep -qx HOME=/var/lib/julia-fcgi"

load() { # $1 = output file; runs until /tmp/stop-load exists
    local ok=0 failed=0 code
    while [ ! -e /tmp/stop-load ]; do
        code=$(curl -s -m 600 -o /dev/null -w '%{http_code}' $URL/hello.jl)
        if [ "$code" = 200 ]; then ok=$((ok+1)); else failed=$((failed+1)); echo "load: got $code"; fi
    done
    echo "$ok $failed" > "$1"
}

echo "== upgrade: dpkg -i the same package again, under load"
SOCKET_SINCE=$(unit_state julia-fcgi.socket ActiveEnterTimestampMonotonic)
rm -f /tmp/stop-load /tmp/load1 /tmp/load2
load /tmp/load1 & l1=$!
load /tmp/load2 & l2=$!
sleep 3
t0=$(date +%s)
dpkg -i "$DEB"; rc=$?
echo "dpkg -i (upgrade) took $(( $(date +%s) - t0 ))s"
sleep 3
touch /tmp/stop-load; wait $l1 $l2
read -r ok1 f1 < /tmp/load1; read -r ok2 f2 < /tmp/load2
echo "during the upgrade: $((ok1+ok2)) requests ok, $((f1+f2)) failed"
check "upgrade succeeds" test "$rc" = 0
check "upgrade under load: 0 failed requests" test $((f1+f2)) = 0
check "requests were served during the upgrade" test $((ok1+ok2)) -gt 0
NEW_MAIN=$(unit_state julia-fcgi.service MainPID)
check "service restarted by the upgrade" test "$NEW_MAIN" != "$MAIN" -a "$NEW_MAIN" != 0
check "service active after the upgrade" systemctl is-active -q julia-fcgi.service
check "socket never closed during the upgrade" \
    test "$(unit_state julia-fcgi.socket ActiveEnterTimestampMonotonic)" = "$SOCKET_SINCE"
check "edited config survived the upgrade" \
    grep -q '^worker_start_timeout = "600s"' /etc/julia-fcgi/julia-fcgi.toml
check "no .dpkg-dist/.dpkg-new config left" \
    bash -c '! ls /etc/julia-fcgi/ /etc/nginx/snippets/ | grep -q dpkg'
check "socket still enabled" test "$(systemctl is-enabled julia-fcgi.socket)" = enabled

echo "== a missing Julia is explained"
systemctl stop julia-fcgi.service
mv /usr/bin/julia /usr/bin/julia.away
systemctl start julia-fcgi.service 2>/dev/null
sleep 3
journal | grep 'invalid value for julia' | tail -1
check "service fails to start without /usr/bin/julia" \
    bash -c '! systemctl is-active -q julia-fcgi.service'
check "the log says how to point -b / the config at a Julia" \
    bash -c "journalctl -u julia-fcgi.service -b --no-pager -q | grep -q 'point -b/--julia (or \`julia\` in the config file)'"
systemctl stop julia-fcgi.service
mv /usr/bin/julia.away /usr/bin/julia
systemctl reset-failed julia-fcgi.service julia-fcgi.socket
systemctl is-active -q julia-fcgi.socket || systemctl restart julia-fcgi.socket
CODE=$(curl -sS -m 600 -o /dev/null -w '%{http_code}' $URL/hello.jl)
check "served again once Julia is back" test "$CODE" = 200

echo "== dpkg --purge"
NGINX_PID=$(unit_state nginx.service MainPID)
nginx_conf() { find /etc/nginx -type f ! -path /etc/nginx/snippets/julia-fcgi.conf -exec md5sum {} + | sort; }
NGINX_CONF=$(nginx_conf)
dpkg --purge julia-fcgi; rc=$?
check "purge succeeds" test "$rc" = 0
check "package gone" bash -c '! dpkg-query -W -f="\${Status}" julia-fcgi 2>/dev/null | grep -q installed'
check "no julia-fcgi process left" test -z "$(pgrep -u julia-fcgi)"
check "units gone" test -z "$(systemctl list-unit-files --no-legend 'julia-fcgi*')"
check "socket unit no longer loaded/listening" bash -c '! systemctl is-active -q julia-fcgi.socket'
check "enablement symlink gone" test ! -e /etc/systemd/system/sockets.target.wants/julia-fcgi.socket -a ! -L /etc/systemd/system/sockets.target.wants/julia-fcgi.socket
check "no deb-systemd-helper state left" bash -c '! ls /var/lib/systemd/deb-systemd-helper-enabled/ 2>/dev/null | grep -q julia-fcgi'
check "state directory gone" test ! -e /var/lib/julia-fcgi
check "runtime directory and socket gone" test ! -e /run/julia-fcgi
check "config gone" test ! -e /etc/julia-fcgi
check "binary, worker and docs gone" \
    test ! -e /usr/sbin/julia-fcgi -a ! -e /usr/share/julia-fcgi -a ! -e /usr/share/doc/julia-fcgi
check "system user kept, as Debian does (files it owns keep an owner)" getent passwd julia-fcgi
check "nginx untouched: still running, same process" \
    test "$(unit_state nginx.service MainPID)" = "$NGINX_PID" -a "$(systemctl is-active nginx)" = active
check "nginx untouched: its configuration unchanged" test "$(nginx_conf)" = "$NGINX_CONF"
CODE=$(curl -sS -m 60 -o /dev/null -w '%{http_code}' $URL/static.txt)
check "nginx still serves" test "$CODE" = 200

# For a failed run: run-vm-package-test keeps $OUT_DIR (journal.txt is there).
cp /var/log/nginx/error.log "$OUT_DIR/nginx-error.log" 2>/dev/null
echo "== journal (last 30 lines)"
journalctl -u julia-fcgi.service -u julia-fcgi.socket -b --no-pager | tail -30
echo
echo "$PASS passed, $FAIL failed"
[ "$FAIL" = 0 ]
