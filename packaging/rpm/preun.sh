# julia-fcgi %preun: %systemd_preun julia-fcgi.socket julia-fcgi.service.
if [ "$1" -eq 0 ]; then
    # Package removal, not upgrade: stop and disable.
    systemctl --no-reload disable --now julia-fcgi.socket julia-fcgi.service >/dev/null 2>&1 || :
    # And every pool (julia-fcgi@NAME): stopped, sockets first so none
    # restarts one; then disabled by name, the names found where enabling
    # linked them (%systemd_preun knows no instance it is not given).
    systemctl stop 'julia-fcgi@*.socket' 'julia-fcgi@*.service' >/dev/null 2>&1 || :
    pools=$(for link in /etc/systemd/system/*.wants/julia-fcgi@?*.socket \
        /etc/systemd/system/*.wants/julia-fcgi@?*.service \
        /etc/systemd/system/*.requires/julia-fcgi@?*.socket \
        /etc/systemd/system/*.requires/julia-fcgi@?*.service; do
        [ -L "$link" ] && basename "$link"
    done | sort -u)
    if [ -n "$pools" ]; then
        # shellcheck disable=SC2086 # one unit name per word
        systemctl --no-reload disable $pools >/dev/null 2>&1 || :
    fi
    # A pool sysimage build still running in the background (%post).
    systemctl stop julia-fcgi-sysimage.service >/dev/null 2>&1 || :
fi
