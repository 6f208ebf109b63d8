# julia-fcgi %postun: %systemd_postun julia-fcgi.socket and
# %systemd_postun_with_restart julia-fcgi.service. On upgrade only the service
# is restarted (if it runs); the socket stays open, so requests that arrive
# meanwhile wait in its backlog instead of failing.
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
