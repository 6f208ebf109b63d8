# julia-fcgi %preun: %systemd_preun julia-fcgi.socket julia-fcgi.service.
if [ "$1" -eq 0 ]; then
    # Package removal, not upgrade: stop and disable.
    systemctl --no-reload disable --now julia-fcgi.socket julia-fcgi.service >/dev/null 2>&1 || :
    # And every pool (julia-fcgi@NAME); their enablement links stay, as
    # %systemd_preun leaves instances it is not given by name.
    systemctl stop 'julia-fcgi@*.socket' 'julia-fcgi@*.service' >/dev/null 2>&1 || :
    # A pool sysimage build still running in the background (%post).
    systemctl stop julia-fcgi-sysimage.service >/dev/null 2>&1 || :
fi
