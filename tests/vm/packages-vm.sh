#!/bin/bash
# Runs INSIDE the VM (real systemd 252 as PID 1, nginx, julia 1.5.3 at
# /usr/bin/julia, no network) via tests/vm/run-vm-package-test. Installs the
# .deb the way a user does and checks what they get: the socket enabled and
# listening, nginx with the shipped snippet serving an example page through a
# service that the first request starts, the pool sysimage postinst builds
# and the service then uses (first request and restart timed with and
# without it; a changed julia refused), an upgrade under load that fails no
# request, a missing Julia explained, and a purge that leaves nothing behind
# but nginx as it was. Everything is ~9x slower here (emulated CPU): timeouts
# are generous. The pool sysimage build takes ~40 min here, so by default it
# is checked under way and stopped; with run-vm-package-test
# --sysimage-build it is waited for and the figures taken. Prints "N passed, M failed"; exits non-zero on any failure.
set -u
PASS=0 FAIL=0
ok()   { PASS=$((PASS+1)); echo "PASS: $*"; }
bad()  { FAIL=$((FAIL+1)); echo "FAIL: $*"; }
check() { local d=$1; shift; if "$@"; then ok "$d"; else bad "$d"; fi; }
F=$FILES_DIR/pkg
DEB=$(ls "$F"/julia-fcgi_*.deb)
VERSION=$(cat "$F/VERSION")
URL=http://127.0.0.1:8080
# --sysimage-build: wait for the whole pool sysimage build (see below).
SYSIMAGE_WAIT=0
[ -f "$F/sysimage-wait" ] && SYSIMAGE_WAIT=1
export DEBIAN_FRONTEND=noninteractive
unit_state() { systemctl show -p "$2" --value "$1"; }
journal() { journalctl -u julia-fcgi.service -b --no-pager -q "$@"; }

echo "== before: no julia-fcgi on the image"
check "no julia-fcgi user yet" bash -c '! getent passwd julia-fcgi'
check "nginx running" systemctl is-active -q nginx

echo "== dpkg -i $(basename "$DEB")"
dpkg -i "$DEB" | tee /tmp/install.out; rc=${PIPESTATUS[0]}
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

echo "== the pool sysimage, built by postinst in the background"
check "dpkg said the build runs in the background" \
    grep -q 'building the pool sysimage in the background' /tmp/install.out
check "postinst started the build as a transient unit" \
    bash -c "journalctl -u julia-fcgi-sysimage.service -b --no-pager -q | grep -q 'sysimage build'"
if [ "$SYSIMAGE_WAIT" = 1 ]; then
    # The whole build, as a user meets it: ~40 min on this emulated CPU
    # (Julia runs ~15x slower here), so only with --sysimage-build.
    # The build runs as a transient unit (postinst); on this emulated CPU it
    # takes long, so the service above started from source meanwhile.
    t0=$(date +%s)
    while systemctl is-active -q julia-fcgi-sysimage.service; do
        sleep 10
        [ $(( $(date +%s) - t0 )) -lt 7200 ] || break
    done
    echo "waited $(( $(date +%s) - t0 ))s for the build to finish"
    journalctl -u julia-fcgi-sysimage.service -b --no-pager -q | grep -v '… still' | tail -25
    check "postinst built the pool sysimage (its unit's journal says so)" \
        bash -c "journalctl -u julia-fcgi-sysimage.service -b --no-pager -q | grep -q 'sysimage build: /var/cache/julia-fcgi/sysimage.so'"
    check "image, metadata and statements under /var/cache/julia-fcgi" \
        test -s /var/cache/julia-fcgi/sysimage.so -a -s /var/cache/julia-fcgi/sysimage.json -a -s /var/cache/julia-fcgi/sysimage.precompile.jl
    check "the image is root's, readable by the service user" \
        test "$(stat -c '%U %a' /var/cache/julia-fcgi /var/cache/julia-fcgi/sysimage.so | paste -sd' ')" = "root 755 root 644"
    check "no build work directory left" bash -c '! ls -a /var/cache/julia-fcgi | grep -q sysimage-build'
    check "julia-fcgi sysimage status: the pool uses it" \
        julia-fcgi --config /etc/julia-fcgi/julia-fcgi.toml sysimage status
    # The build reloaded the running service: its new workers start from the image.
    wait_for_journal() { # $1 = pattern, $2 = seconds
        local t=0
        until journal | grep -q "$1"; do sleep 2; t=$((t+2)); [ $t -lt "$2" ] || return 1; done
    }
    check "the service says its workers start from the image" \
        wait_for_journal 'workers start from the pool sysimage /var/cache/julia-fcgi/sysimage.so' 900
    journal | grep 'pool sysimage' | tail -3
    first_request() { # prints seconds from socket activation to the first 200
        systemctl stop julia-fcgi.service
        local t0 code
        t0=$(date +%s.%N)
        code=$(curl -sS -m 900 -o /dev/null -w '%{http_code}' $URL/hello.jl)
        echo "$code $(awk "BEGIN { printf \"%.1f\", $(date +%s.%N) - $t0 }")"
    }
    read -r CODE IMAGE_FIRST < <(first_request)
    check "first request after socket activation, from the image: 200" test "$CODE" = 200
    MAIN=$(unit_state julia-fcgi.service MainPID)
    WORKER=$(pgrep -P "$MAIN" | head -1)
    check "the worker runs julia -J /var/cache/julia-fcgi/sysimage.so" \
        bash -c "tr '\0' ' ' < /proc/$WORKER/cmdline | grep -q -- '-J /var/cache/julia-fcgi/sysimage.so'"
    restart_time() {
        local t0
        t0=$(date +%s.%N)
        systemctl restart julia-fcgi.service
        awk "BEGIN { printf \"%.1f\", $(date +%s.%N) - $t0 }"
    }
    IMAGE_RESTART=$(restart_time)
    cp /etc/julia-fcgi/julia-fcgi.toml /tmp/config.saved
    echo 'sysimage = "off"' >> /etc/julia-fcgi/julia-fcgi.toml
    read -r CODE SOURCE_FIRST < <(first_request)
    check "with sysimage = \"off\": served from source" test "$CODE" = 200
    SOURCE_RESTART=$(restart_time)
    cp /tmp/config.saved /etc/julia-fcgi/julia-fcgi.toml
    echo "FIGURE first request after socket activation: image ${IMAGE_FIRST}s, source ${SOURCE_FIRST}s"
    echo "FIGURE systemctl restart (until ready): image ${IMAGE_RESTART}s, source ${SOURCE_RESTART}s"
    echo "$IMAGE_FIRST $SOURCE_FIRST $IMAGE_RESTART $SOURCE_RESTART" > "$OUT_DIR/sysimage-figures.txt"
    # Built on this VM's CPU and julia: tests/vm/julia-fcgi-systemd.sh can run on it.
    cp -a /var/cache/julia-fcgi "$OUT_DIR/sysimage"

    echo "== a julia that changed since the build: the image is refused, workers from source"
    SYS=/usr/lib/x86_64-linux-gnu/julia/sys.so
    touch -r "$SYS" /tmp/sys.so.stamp
    touch "$SYS"
    check "sysimage status says julia changed" \
        bash -c "julia-fcgi --config /etc/julia-fcgi/julia-fcgi.toml sysimage status | grep -q 'julia changed since the build'"
    SKIP=$(journal | wc -l)
    systemctl restart julia-fcgi.service
    check "the log says why the image is not used, in one line" \
        bash -c "journalctl -u julia-fcgi.service -b --no-pager -q | tail -n +$((SKIP+1)) | grep 'not used, julia changed' | grep -q 'workers start from source'"
    CODE=$(curl -sS -m 600 -o /dev/null -w '%{http_code}' $URL/hello.jl)
    check "served from source meanwhile" test "$CODE" = 200
    touch -r /tmp/sys.so.stamp "$SYS"
    systemctl restart julia-fcgi.service
    check "the same julia again: the image is used again" \
        bash -c "journalctl -u julia-fcgi.service -b --no-pager -q | grep 'pool sysimage' | tail -1 | grep -q 'workers start from the pool sysimage'"
else
    # In CI: the build is under way and breaks nothing; then it is stopped
    # (a stopped build installs nothing, and the next one cleans up after
    # it). The whole build: run-vm-package-test --sysimage-build.
    wait_for_unit_journal() { # $1 = pattern, $2 = seconds
        local t=0
        until journalctl -u julia-fcgi-sysimage.service -b --no-pager -q | grep -q "$1"; do
            sleep 2; t=$((t+2)); [ $t -lt "$2" ] || return 1
        done
    }
    check "the build shows progress: it records what a worker compiles" \
        wait_for_unit_journal 'recording what a worker compiles' 600
    journalctl -u julia-fcgi-sysimage.service -b --no-pager -q | tail -5
    check "sysimage status: none yet, workers start from source (exit 1)" \
        bash -c "! julia-fcgi --config /etc/julia-fcgi/julia-fcgi.toml sysimage status > /tmp/sysimage.status; cat /tmp/sysimage.status; grep -q 'none at /var/cache/julia-fcgi/sysimage.so; workers start from source' /tmp/sysimage.status"
    check "the service says why its workers start from source" \
        bash -c "journalctl -u julia-fcgi.service -b --no-pager -q | grep -q 'workers start from source: no pool sysimage at /var/cache/julia-fcgi/sysimage.so'"
    ABANDONED=$(ls -d /var/cache/julia-fcgi/.sysimage-build-* 2>/dev/null | head -1)
    systemctl stop julia-fcgi-sysimage.service
    check "a stopped build installs nothing" test ! -e /var/cache/julia-fcgi/sysimage.so
    CODE=$(curl -sS -m 600 -o /dev/null -w '%{http_code}' $URL/hello.jl)
    check "the service serves on, from source" test "$CODE" = 200
fi

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
dpkg -i "$DEB" | tee /tmp/upgrade.out; rc=${PIPESTATUS[0]}
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
if [ "$SYSIMAGE_WAIT" = 1 ]; then
    check "the same package again: the pool sysimage is up to date, not rebuilt" \
        grep -q 'the pool sysimage is up to date' /tmp/upgrade.out
    check "the restarted service starts its workers from the image" \
        bash -c "journalctl -u julia-fcgi.service -b --no-pager -q | grep 'pool sysimage' | tail -1 | grep -q 'workers start from the pool sysimage'"
else
    check "without an image, the upgrade starts a build again" \
        grep -q 'building the pool sysimage in the background' /tmp/upgrade.out
    if [ -n "$ABANDONED" ]; then
        t=0
        while [ -e "$ABANDONED" ] && [ $t -lt 300 ]; do sleep 2; t=$((t+2)); done
        check "the new build removed the stopped one's work directory" test ! -e "$ABANDONED"
    fi
    # Not waited for (see above); stopped so that the steps below have the
    # CPU (purge would stop it too: prerm).
    systemctl stop julia-fcgi-sysimage.service
fi

echo "== without a C compiler (the package only recommends gcc)"
# Said before anything is compiled (which takes ~50 min here), and nothing
# is installed.
IMAGE_BEFORE=$(stat -c %Y /var/cache/julia-fcgi/sysimage.so 2>/dev/null || echo none)
CC_LINK=$(command -v cc)
mv "$CC_LINK" "$CC_LINK.away"
STATE_DIRECTORY=/var/lib/julia-fcgi julia-fcgi --config /etc/julia-fcgi/julia-fcgi.toml sysimage build > /tmp/nocc.out 2>&1; rc=$?
mv "$CC_LINK.away" "$CC_LINK"
cat /tmp/nocc.out
check "the build fails (exit 1)" test "$rc" = 1
check "it says a C compiler is missing and how to install one" \
    grep -q 'no C compiler to link the image: `cc` is not installed. Install gcc (Debian, Ubuntu: apt install gcc' /tmp/nocc.out
check "before compiling anything" bash -c '! grep -q "recording what a worker compiles" /tmp/nocc.out'
check "nothing installed" \
    test "$(stat -c %Y /var/cache/julia-fcgi/sysimage.so 2>/dev/null || echo none)" = "$IMAGE_BEFORE"
check "no work directory left (the stopped build's removed too)" \
    bash -c '! ls -a /var/cache/julia-fcgi 2>/dev/null | grep -q sysimage-build'

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
check "pool sysimage gone" test ! -e /var/cache/julia-fcgi
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
