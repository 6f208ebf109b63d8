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
