# julia-fcgi %post: what %sysusers_create, %tmpfiles_create and %systemd_post
# expand to. The user comes from the installed sysusers.d file (it owns no
# packaged file, so it need not exist before the files are unpacked).
systemd-sysusers julia-fcgi.conf || :
systemd-tmpfiles --create julia-fcgi.conf >/dev/null 2>&1 || :
if [ "$1" -eq 1 ]; then
    # Initial installation: enable the units if the system's presets say so
    # (systemctl enable --now julia-fcgi.socket otherwise).
    systemctl --no-reload preset julia-fcgi.socket julia-fcgi.service >/dev/null 2>&1 || :
fi
# The pool sysimage (README: "Pool sysimage"), as the .deb's postinst does
# it: for the configured julia, worker and sysimage_packages, as root into
# /var/cache/julia-fcgi, unless the one there fits; in the background under
# systemd (a transient unit at low priority, which reloads the service onto
# the new image), else here. Never fatal: without it workers start from source.
jf="STATE_DIRECTORY=/var/lib/julia-fcgi julia-fcgi --config /etc/julia-fcgi/julia-fcgi.toml sysimage"
if sh -c "$jf status" >/dev/null 2>&1; then
    echo "julia-fcgi: the pool sysimage is up to date"
elif [ -n "${JULIA_FCGI_NO_SYSIMAGE:-}" ]; then
    echo "julia-fcgi: pool sysimage not built (JULIA_FCGI_NO_SYSIMAGE); workers start from source"
elif ! command -v cc >/dev/null 2>&1; then
    echo "julia-fcgi: pool sysimage not built: linking it needs a C compiler (dnf install gcc)," \
        "then: julia-fcgi --config /etc/julia-fcgi/julia-fcgi.toml sysimage build;" \
        "until then workers start from source"
elif [ -d /run/systemd/system ]; then
    systemctl stop julia-fcgi-sysimage.service >/dev/null 2>&1 || :
    systemd-run --quiet --no-block --unit=julia-fcgi-sysimage.service \
        --description="julia-fcgi: build the pool sysimage" \
        --property=CollectMode=inactive-or-failed \
        --property=Nice=10 --property=IOSchedulingClass=idle --property=CPUWeight=20 \
        /bin/sh -c "$jf build --if-stale && systemctl try-reload-or-restart julia-fcgi.service" &&
        echo "julia-fcgi: building the pool sysimage in the background (journalctl -fu julia-fcgi-sysimage)" || :
else
    sh -c "$jf build --if-stale" || echo "julia-fcgi: no pool sysimage; workers start from source"
fi
