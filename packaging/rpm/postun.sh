# julia-fcgi %postun: %systemd_postun julia-fcgi.socket and
# %systemd_postun_with_restart julia-fcgi.service. On upgrade only the service
# is restarted (if it runs); the socket stays open, so requests that arrive
# meanwhile wait in its backlog instead of failing.
if [ "$1" -eq 0 ]; then
    # Erased: links enabling a pool (julia-fcgi@NAME) that %preun could not
    # disable point at the templates just removed.
    for link in /etc/systemd/system/*.wants/julia-fcgi@?*.socket \
        /etc/systemd/system/*.wants/julia-fcgi@?*.service \
        /etc/systemd/system/*.requires/julia-fcgi@?*.socket \
        /etc/systemd/system/*.requires/julia-fcgi@?*.service; do
        [ -L "$link" ] && rm -f "$link"
    done
fi
systemctl daemon-reload >/dev/null 2>&1 || :
if [ "$1" -ge 1 ]; then
    systemctl try-restart julia-fcgi.service >/dev/null 2>&1 || :
    # Every pool that runs (julia-fcgi@NAME), its socket staying open.
    systemctl try-restart 'julia-fcgi@*.service' >/dev/null 2>&1 || :
fi
if [ "$1" -eq 0 ]; then
    # Erased: the pool sysimage goes with it (it is rebuilt on installation).
    rm -rf /var/cache/julia-fcgi
fi
