#!/bin/bash
# Runs INSIDE the VM (real systemd 252 as PID 1, cgroup v2, journald, nginx,
# julia 1.5.3) via tests/vm/run-vm-pools-test: two pools as instances of the
# template units, julia-fcgi@a and julia-fcgi@b, one worker each, behind
# nginx. Each has its own uid, socket, runtime and state directory, cgroup,
# status socket, health listener and journal field; pool a's page cannot
# reach pool b; then pool a is broken on purpose (a bad config on reload,
# then a crash loop) while pool b serves a light load without a failure;
# (and a page of pool a past its memory_max); stopping pool b turns its
# /ready to 503 before its worker is gone. Then, with the package
# ($FILES_DIR/pkg/*.deb) in place of the files: an upgrade while both pools
# are under load restarts every running pool and fails no request, and its
# removal stops and disables every pool and its purge leaves no link.
# Prints "N passed, M failed"; exits non-zero on any failure.
set -u
PASS=0 FAIL=0
ok()   { PASS=$((PASS+1)); echo "PASS: $*"; }
bad()  { FAIL=$((FAIL+1)); echo "FAIL: $*"; }
check() { local d=$1; shift; if "$@"; then ok "$d"; else bad "$d"; fi; }
F=$FILES_DIR/jf
T0=$(date +%s)
elapsed() { echo "$(( $(date +%s) - T0 ))s"; }

echo "== install (as the packages lay it out)"
useradd --system --home-dir /var/lib/julia-fcgi --no-create-home --shell /usr/sbin/nologin julia-fcgi
install -D -m 0644 "$F/tmpfiles.conf" /usr/lib/tmpfiles.d/julia-fcgi.conf
systemd-tmpfiles --create /usr/lib/tmpfiles.d/julia-fcgi.conf
install -D -m 0755 "$F/julia-fcgi" /usr/sbin/julia-fcgi
mkdir -p /usr/share/julia-fcgi && cp -r "$F/julia/." /usr/share/julia-fcgi/
for unit in julia-fcgi@.socket julia-fcgi@.service; do
    install -D -m 0644 "$F/systemd/$unit" "/etc/systemd/system/$unit"
done
mkdir -p /etc/julia-fcgi/pools
pool_file() { # $1 = name, $2 = health address
    cat > "/etc/julia-fcgi/pools/$1.toml" <<TOML
workers = 1
document_roots = ["/var/www/$1"]
worker_start_timeout = "600s"
shutdown_grace = "20s"
memory_max = "700M"
pids_max = "48"
health_listen = "$2:9001"
TOML
}
pool_file a 127.0.0.2
pool_file b 127.0.0.3
for p in a b; do
    mkdir -p /var/www/$p
    cat > /var/www/$p/hello.jl <<JL
print("Content-Type: text/plain\r\n\r\nhello from $p")
JL
done
cat > /var/www/b/slow.jl <<'JL'
sleep(6); print("Content-Type: text/plain\r\n\r\nslow done")
JL
# Pool b keeps something in its state directory (its HOME).
cat > /var/www/b/secret.jl <<'JL'
# (A page's ENV is its request's: HOME is the service's, not in it.)
write("/var/lib/julia-fcgi/b/secret.txt", "b's secret")
print("Content-Type: text/plain\r\n\r\nwrote /var/lib/julia-fcgi/b/secret.txt")
JL
# Pool a's page tries to reach pool b: its state, its status socket, its
# worker (pid in the query), its runtime directory.
cat > /var/www/a/spy.jl <<'JL'
using Sockets
function try_(what, f)
    r = try
        f(); "REACHED"
    catch e
        "denied (" * sprint(showerror, e)[1:min(end, 60)] * ")"
    end
    println(what, ": ", r)
end
print("Content-Type: text/plain\r\n\r\n")
try_("read b's state", () -> read("/var/lib/julia-fcgi/b/secret.txt", String))
try_("list b's state", () -> readdir("/var/lib/julia-fcgi/b"))
try_("connect b's status socket", () -> close(connect("/run/julia-fcgi/b/status.sock")))
pid = parse(Int, ENV["QUERY_STRING"])
try_("signal b's worker", () -> ccall(:kill, Cint, (Cint, Cint), pid, 0) == 0 || error("kill: ", Libc.strerror(Libc.errno())))
try_("see b's worker in /proc", () -> read("/proc/$pid/status", String))
JL
chmod -R a+rX /var/www
cat > /etc/nginx/sites-enabled/default <<'NGINX'
server {
    listen 127.0.0.1:8081;
    root /var/www/a;
    fastcgi_read_timeout 600s;
    location ~ \.jl$ {
        include fastcgi_params;
        fastcgi_param SCRIPT_FILENAME $document_root$fastcgi_script_name;
        fastcgi_pass unix:/run/julia-fcgi/a.sock;
    }
}
server {
    listen 127.0.0.1:8082;
    root /var/www/b;
    fastcgi_read_timeout 600s;
    location ~ \.jl$ {
        include fastcgi_params;
        fastcgi_param SCRIPT_FILENAME $document_root$fastcgi_script_name;
        fastcgi_pass unix:/run/julia-fcgi/b.sock;
    }
}
NGINX
systemctl daemon-reload
systemctl reload-or-restart nginx

echo "== both pools (the operator's one command each, after the pool file)"
systemctl enable --now julia-fcgi@a.socket julia-fcgi@b.socket
check "sockets listening" systemctl is-active -q julia-fcgi@a.socket julia-fcgi@b.socket
check "socket a is root:www-data 0660" test "$(stat -c '%U:%G %a' /run/julia-fcgi/a.sock)" = "root:www-data 660"
# Both warm up at once (one Julia start each: the long part here).
t0=$(date +%s)
curl -s -m 600 -o /tmp/a1 http://127.0.0.1:8081/hello.jl & ca=$!
curl -s -m 600 -o /tmp/b1 http://127.0.0.1:8082/hello.jl & cb=$!
wait $ca $cb
echo "FIGURE both pools' first request after socket activation: $(( $(date +%s) - t0 ))s"
check "pool a serves its page" test "$(cat /tmp/a1)" = "hello from a"
check "pool b serves its page" test "$(cat /tmp/b1)" = "hello from b"

echo "== each pool its own"
pid_a=$(systemctl show -P MainPID julia-fcgi@a.service)
pid_b=$(systemctl show -P MainPID julia-fcgi@b.service)
uid_a=$(stat -c %u /proc/$pid_a); uid_b=$(stat -c %u /proc/$pid_b)
echo "pool a: pid $pid_a uid $uid_a; pool b: pid $pid_b uid $uid_b"
check "each pool its own uid, neither root nor julia-fcgi" test "$uid_a" != "$uid_b" -a "$uid_a" != 0 -a "$uid_b" != 0 -a "$uid_a" != "$(id -u julia-fcgi)" -a "$uid_b" != "$(id -u julia-fcgi)"
# Dynamic users are in no /etc/passwd (this image has no nss-systemd): the
# unit's User= and systemd's range for them (61184-65519) say it.
echo "users: $(systemctl show -P User julia-fcgi@a.service) $uid_a, $(systemctl show -P User julia-fcgi@b.service) $uid_b"
check "pool a runs as the dynamic user julia-fcgi-a" test "$(systemctl show -P User julia-fcgi@a.service)" = julia-fcgi-a -a "$uid_a" -ge 61184 -a "$uid_a" -le 65519
check "runtime directories /run/julia-fcgi/a and b" test -S /run/julia-fcgi/a/status.sock -a -S /run/julia-fcgi/b/status.sock
ls -la /var/lib/julia-fcgi/ /var/lib/private/julia-fcgi/ 2>&1
check "state directory of b is b's" test "$(stat -L -c %u /var/lib/julia-fcgi/b)" = "$uid_b"
cg_a=/sys/fs/cgroup$(systemctl show -P ControlGroup julia-fcgi@a.service)
cg_b=/sys/fs/cgroup$(systemctl show -P ControlGroup julia-fcgi@b.service)
echo "cgroups: $cg_a $cg_b"; ls "$cg_a"
check "pool a's worker in its own cgroup with memory_max" test "$(cat "$cg_a"/worker-1/memory.max 2>/dev/null)" = $((700*1024*1024))
check "pool b's worker in its own cgroup with pids_max" test "$(cat "$cg_b"/worker-1/pids.max 2>/dev/null)" = 48
julia-fcgi --runtime-dir /run/julia-fcgi status --all
check "status --pool a says pool a" bash -c "julia-fcgi status --pool a --json | grep -q '\"pool\":\"a\"'"
check "status --all finds both" bash -c "julia-fcgi status --all --json | grep -o '\"pool\":\"[ab]\"' | sort | tr -d '\n' | grep -qx '\"pool\":\"a\"\"pool\":\"b\"'"
check "metrics carry pool=\"b\"" bash -c "curl -s --unix-socket /run/julia-fcgi/b/status.sock 'http://x/status?openmetrics' | grep -q 'julia_fcgi_total_processes{pool=\"b\"} 1'"
check "health: a ready on 127.0.0.2:9001" test "$(curl -s -o /dev/null -w '%{http_code}' http://127.0.0.2:9001/ready)" = 200
check "health: b ready on 127.0.0.3:9001" test "$(curl -s -o /dev/null -w '%{http_code}' http://127.0.0.3:9001/ready)" = 200
check "health listener keeps the status page to itself" test "$(curl -s -o /dev/null -w '%{http_code}' http://127.0.0.2:9001/status)" = 404
entries=$(journalctl -b --no-pager -q -o json _SYSTEMD_UNIT=julia-fcgi@a.service SYSLOG_IDENTIFIER=julia-fcgi | wc -l)
tagged=$(journalctl -b --no-pager -q -o json _SYSTEMD_UNIT=julia-fcgi@a.service SYSLOG_IDENTIFIER=julia-fcgi POOL=a | wc -l)
echo "pool a: $entries journal entries, $tagged with POOL=a"
check "every entry of pool a carries POOL=a" test "$entries" -gt 0 -a "$entries" = "$tagged"
check "journalctl POOL=b is pool b's" bash -c "journalctl -b --no-pager -q POOL=b -o json | grep -q 'julia-fcgi@b.service' && ! journalctl -b --no-pager -q POOL=b -o json | grep -q 'julia-fcgi@a.service'"

echo "== pool a cannot reach pool b"
curl -s -m 60 http://127.0.0.1:8082/secret.jl; echo
worker_b=$(cat /sys/fs/cgroup$(systemctl show -P ControlGroup julia-fcgi@b.service)/worker-1/cgroup.procs | head -1)
curl -s -m 60 -o /tmp/spy "http://127.0.0.1:8081/spy.jl?$worker_b"; cat /tmp/spy
check "b's secret exists (the spy has something to find)" test -s /var/lib/private/julia-fcgi/b/secret.txt
for what in "read b's state" "list b's state" "connect b's status socket" "signal b's worker" "see b's worker in /proc"; do
    check "a's page: $what denied" grep -q "^$what: denied" /tmp/spy
done

LOAD_TIMEOUT=120
load() { # $1 = url, $2 = output file; runs until /tmp/stop-load exists
    local ok=0 failed=0 code
    while [ ! -e /tmp/stop-load ]; do
        code=$(curl -s -m "$LOAD_TIMEOUT" -o /tmp/load-body.$$ -w '%{http_code}' "$1")
        if [ "$code" = 200 ]; then ok=$((ok+1)); else
            [ $failed = 0 ] && echo "first failure: HTTP $code: $(head -c 200 /tmp/load-body.$$)" >&2
            failed=$((failed+1))
        fi
        sleep 0.05
    done
    echo "$ok $failed" > "$2"
}

echo "== pool a broken on purpose; pool b under light load meanwhile"
rm -f /tmp/stop-load
load http://127.0.0.1:8082/hello.jl /tmp/load-b & lb=$!
load http://127.0.0.1:8081/hello.jl /tmp/load-a & la=$!
sleep 3
# 1. A bad config on reload: refused, pool a keeps its workers.
echo 'workers = "many"' >> /etc/julia-fcgi/pools/a.toml
systemctl reload julia-fcgi@a.service
sleep 3
check "a's bad config on reload refused, in a's journal" bash -c "journalctl -b --no-pager -q -u julia-fcgi@a.service | grep -q 'reload refused'"
check "a still active after the bad reload" systemctl is-active -q julia-fcgi@a.service
touch /tmp/stop-load; wait $la
read -r ok_a f_a < /tmp/load-a
echo "pool a through its refused reload: $ok_a ok, $f_a failed"
check "pool a lost no request to its refused reload" test "$f_a" = 0 -a "$ok_a" -gt 0
rm -f /tmp/stop-load
# 2. A page past memory_max (700M): the kernel kills its worker in its own
# cgroup; the master says so and replaces it, pool b never notices.
cat > /var/www/a/hog.jl <<'JL'
hog = ones(UInt8, 1_500_000_000)
print("Content-Type: text/plain\r\n\r\n", sum(hog))
JL
chmod a+r /var/www/a/hog.jl
code=$(curl -s -m 120 -o /tmp/hog -w '%{http_code}' http://127.0.0.1:8081/hog.jl)
echo "pool a's page past memory_max: HTTP $code"
sleep 2
journalctl -b --no-pager -q -u julia-fcgi@a.service | grep -i -m3 "oom\|memory" || true
check "a's worker killed by the OOM killer, said in a's journal" bash -c "journalctl -b --no-pager -q -u julia-fcgi@a.service | grep -qi 'out of memory\|oom'"
check "a's master survived its worker's OOM" test "$(systemctl show -P MainPID julia-fcgi@a.service)" = "$pid_a"
check "b's worker untouched by a's OOM" test -n "$(cat "$cg_b"/worker-1/cgroup.procs 2>/dev/null)"
# 3. A crash loop: a julia that dies at once; the master gives up, systemd
# restarts it (Restart=on-failure), again and again.
sed -i '/workers = "many"/d' /etc/julia-fcgi/pools/a.toml
echo 'julia = "/bin/false"' >> /etc/julia-fcgi/pools/a.toml
systemctl restart --no-block julia-fcgi@a.service
sleep 30
n_starts=$(journalctl -b --no-pager -q -u julia-fcgi@a.service | grep -c "starting 1 worker")
echo "pool a started $n_starts times so far"
check "pool a is crash-looping" test "$n_starts" -ge 3
code=$(curl -s -o /dev/null -w '%{http_code}' http://127.0.0.2:9001/ready)
check "a's /ready is not 200 while it crash-loops (got $code)" test "$code" != 200
touch /tmp/stop-load; wait $lb
read -r ok_b f_b < /tmp/load-b
echo "FIGURE pool b while pool a was broken: $ok_b requests ok, $f_b failed"
check "pool b served every request while a was broken" test "$f_b" = 0 -a "$ok_b" -gt 5
check "b still ready" test "$(curl -s -o /dev/null -w '%{http_code}' http://127.0.0.3:9001/ready)" = 200
check "b's master never restarted" test "$(systemctl show -P MainPID julia-fcgi@b.service)" = "$pid_b"
systemctl stop julia-fcgi@a.socket julia-fcgi@a.service

echo "== stopping pool b: /ready 503 while its worker drains"
curl -s -m 60 -o /tmp/slow http://127.0.0.1:8082/slow.jl & cs=$!
sleep 2
systemctl stop --no-block julia-fcgi@b.service
sleep 0.5
code=$(curl -s -o /tmp/ready-b -w '%{http_code}' http://127.0.0.3:9001/ready)
echo "b's /ready while stopping: $code $(cat /tmp/ready-b)"
check "b's /ready is 503 once the stop began" test "$code" = 503
check "b's worker still finishing" test -n "$(cat "$cg_b"/worker-1/cgroup.procs 2>/dev/null)"
wait $cs
check "the request in progress finished" test "$(cat /tmp/slow)" = "slow done"

pool_units() { systemctl list-units --all --plain --no-legend 'julia-fcgi@*' | awk '{print $1}' | sort | tr '\n' ' '; }
pool_links() { find /etc/systemd/system -name 'julia-fcgi@*' | sort | tr '\n' ' '; }

package_part() {
    export DEBIAN_FRONTEND=noninteractive JULIA_FCGI_NO_SYSIMAGE=1
    echo "== the package in place of the files: pools a and b again"
    systemctl stop julia-fcgi@a.socket julia-fcgi@a.service julia-fcgi@b.socket julia-fcgi@b.service
    systemctl disable julia-fcgi@a.socket julia-fcgi@b.socket
    rm -f /etc/systemd/system/julia-fcgi@.socket /etc/systemd/system/julia-fcgi@.service \
        /usr/sbin/julia-fcgi /usr/lib/tmpfiles.d/julia-fcgi.conf
    rm -rf /usr/share/julia-fcgi
    sed -i '/^julia = /d' /etc/julia-fcgi/pools/a.toml
    systemctl daemon-reload
    dpkg -i "$DEB" > /tmp/install.out 2>&1; rc=$?
    tail -5 /tmp/install.out
    check "dpkg -i $(basename "$DEB")" test "$rc" = 0
    check "the package ships the templates" test -f /usr/lib/systemd/system/julia-fcgi@.socket -a -f /usr/lib/systemd/system/julia-fcgi@.service
    # The operator's command, and b's service enabled too (its [Install]
    # links the socket as well): both kinds of link for the removal.
    systemctl enable --now julia-fcgi@a.socket julia-fcgi@b.socket
    systemctl enable julia-fcgi@b.service
    echo "links: $(pool_links)"
    t0=$(date +%s)
    curl -s -m 600 -o /tmp/a2 http://127.0.0.1:8081/hello.jl & ca=$!
    curl -s -m 600 -o /tmp/b2 http://127.0.0.1:8082/hello.jl & cb=$!
    wait $ca $cb
    echo "FIGURE both pools' first request from the package: $(( $(date +%s) - t0 ))s"
    check "pool a serves from the package" test "$(cat /tmp/a2)" = "hello from a"
    check "pool b serves from the package" test "$(cat /tmp/b2)" = "hello from b"

    echo "== upgrade (dpkg -i the same package) while both pools are under load"
    local before_a before_b
    before_a=$(systemctl show -P MainPID julia-fcgi@a.service)
    before_b=$(systemctl show -P MainPID julia-fcgi@b.service)
    rm -f /tmp/stop-load
    LOAD_TIMEOUT=600
    load http://127.0.0.1:8081/hello.jl /tmp/load-a & la=$!
    load http://127.0.0.1:8082/hello.jl /tmp/load-b & lb=$!
    sleep 3
    t0=$(date +%s)
    dpkg -i "$DEB" > /tmp/upgrade.out 2>&1; rc=$?
    echo "dpkg -i (upgrade) took $(( $(date +%s) - t0 ))s"
    check "the upgrade succeeds" test "$rc" = 0
    # Once both serve again from their new masters, a few more requests.
    for _ in $(seq 1 120); do
        [ "$(curl -s -o /dev/null -w '%{http_code}' http://127.0.0.2:9001/ready)" = 200 ] &&
            [ "$(curl -s -o /dev/null -w '%{http_code}' http://127.0.0.3:9001/ready)" = 200 ] && break
        sleep 5
    done
    sleep 5
    touch /tmp/stop-load; wait $la $lb
    read -r ok_a f_a < /tmp/load-a; read -r ok_b f_b < /tmp/load-b
    after_a=$(systemctl show -P MainPID julia-fcgi@a.service)
    after_b=$(systemctl show -P MainPID julia-fcgi@b.service)
    echo "FIGURE upgrade under load: pool a $ok_a ok, $f_a failed; pool b $ok_b ok, $f_b failed; masters a $before_a -> $after_a, b $before_b -> $after_b"
    check "no request failed during the upgrade" test "$f_a" = 0 -a "$f_b" = 0 -a "$ok_a" -gt 0 -a "$ok_b" -gt 0
    check "the upgrade restarted every running pool" test "$after_a" != "$before_a" -a "$after_b" != "$before_b" -a "$after_a" != 0 -a "$after_b" != 0
    LOAD_TIMEOUT=120

    echo "== removal with both pools enabled and running"
    echo "before: units $(pool_units); links $(pool_links)"
    dpkg --remove julia-fcgi > /tmp/remove.out 2>&1; rc=$?
    tail -5 /tmp/remove.out
    check "dpkg --remove succeeds" test "$rc" = 0
    echo "after removal: units '$(pool_units)'; links '$(pool_links)'"
    check "no pool unit left loaded or running" test -z "$(pool_units)"
    check "no pool left enabled (no link)" test -z "$(pool_links)"
    check "no pool socket listening" bash -c '! curl -s -m 5 --unix-socket /run/julia-fcgi/a.sock http://x/ && ! curl -s -m 5 --unix-socket /run/julia-fcgi/b.sock http://x/'
    ps -eo pid,user,args | grep -E '[j]ulia-fcgi|[w]orker\.jl' || true
    # (The brackets keep pgrep from finding its own bash -c.)
    check "no master or worker left" bash -c '! pgrep -x julia-fcgi >/dev/null && ! pgrep -f "[w]orker\.jl" >/dev/null'
    dpkg --purge julia-fcgi > /tmp/purge.out 2>&1; rc=$?
    check "dpkg --purge succeeds" test "$rc" = 0
    echo "after purge: $(find /etc/systemd/system -name 'julia-fcgi*' | tr '\n' ' ')"
    check "purge leaves no julia-fcgi link or unit in /etc/systemd/system" test -z "$(find /etc/systemd/system -name 'julia-fcgi*')"
    check "purge removes the pools' state (/var/lib/private/julia-fcgi)" test ! -e /var/lib/private/julia-fcgi -a ! -e /var/lib/julia-fcgi
}

DEB=$(ls "$FILES_DIR"/pkg/julia-fcgi_*.deb 2>/dev/null | head -1)
if [ -z "$DEB" ]; then
    bad "no package in $FILES_DIR/pkg: the upgrade and removal of pools are not tested"
else
    package_part
fi

echo "elapsed in the guest: $(elapsed)"
echo
echo "$PASS passed, $FAIL failed"
[ "$FAIL" = 0 ]
