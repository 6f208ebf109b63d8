"""
    KeepAlive

Kept connections (FCGI_KEEP_CONN) never starve the pool. Front ends keep
more connections open than there are workers (nginx with `keepalive`,
HAProxy's `fcgi-app`), and a worker serves one connection at a time, so a
worker idle between requests on one also watches the listening socket, and
connections waiting there win (see [`wait_between_requests`](@ref)); the
decision to give a kept connection up is taken before its last response,
so that the close follows that response at once ([`gives_up!`](@ref)).
"""
module KeepAlive

using ..Posix
using ..Control
using ..Pages
using ..Connection: Conn, ReadStatus, READ_OK, READ_TIMEOUT, READ_STOP, READ_YIELD, buffered
using ..Waiting
using ..Waiting: has_input, ms_since

# A kept connection with nobody waiting is closed after this long idle:
# longer than nginx's upstream keepalive_timeout (60 s), so with default
# settings the front end closes first, which is the race-free side.
const KEEP_IDLE_MS = 65_000
# A kept connection that was answered less than this long ago is "hot":
# its front end is likely sending the next request right now, and closing it
# then is the race front ends handle worst (HAProxy drops the client, nginx
# fails a POST). A connection that waits meanwhile is taken at this
# connection's next response instead (see `gives_up!`), or when this one
# has been idle this long. Workers idle in accept take it first meanwhile.
const KEEP_GRACE_MS = 2
# Told to stop while idle on a kept connection: wait this long for the
# front end's next request on it and close right after that response (the
# front end then sees the close with the response, before it could reuse
# the connection), else close it idle.
const STOP_LINGER_MS = 1000
# Requests served on a connection after the response that was to end it.
const MAX_SPARED = 8

"""
    Keeper

A worker's side of kept connections: the listener it watches while idle
(-1: none, as in the warm-up), the connection it accepted meanwhile
(`handover`, served next; -1: none) and when, the idle limit, and how many
requests the current connection was spared.
"""
mutable struct Keeper
    listen_fd::Cint
    handover::Cint
    handover_at::UInt64
    idle_ms::Int
    spared::Int
    rt::Pages.Runtime
end

Keeper(listen_fd::Cint, idle_ms::Int, rt::Pages.Runtime) =
    Keeper(listen_fd, Cint(-1), UInt64(0), idle_ms, 0, rt)

"""
    wait_between_requests(k, c) -> READ_OK, READ_TIMEOUT, READ_STOP or READ_YIELD

Idle on a kept connection: its last request answered, nothing buffered. The
front end may send the next request at any moment or never, and a worker
waiting here while connections queue on the listener would starve them
until the front end times out (504). So the listener is polled too, and
waiting work wins: once this connection has been idle for KEEP_GRACE_MS the
worker accepts the waiting one (see [`take_waiting!`](@ref)) and gives this
one up, closing it between requests, which every front end handles. Every
idle worker wakes on a new connection; only the one whose `accept` succeeds
gives its connection up, and a request that arrives on this connection
first is served first.

Also closes the connection after `k.idle_ms` of silence, and on STOP
after at most one more request (STOP_LINGER_MS).
"""
function wait_between_requests(k::Keeper, c::Conn)::ReadStatus
    # Accepted before this connection's last response: serve it, unless the
    # front end sent another request here meanwhile (see `spare!`).
    k.handover >= 0 && return has_input(c.fd) ? READ_OK : READ_YIELD
    t0 = time_ns()
    listening = k.listen_fd >= 0
    while true
        Control.stopping() && return linger(k, c)
        left = k.idle_ms - ms_since(t0)
        left <= 0 && return READ_TIMEOUT
        rc, rconn, rlisten, rctl =
            Waiting.idle_poll(k.rt, c.fd, listening ? k.listen_fd : Cint(-1), left)
        rc == 0 && return READ_TIMEOUT
        rc < 0 && return READ_OK                # let recv(2) report the error
        rctl != 0 && Control.on_readable!()
        rconn != 0 && return READ_OK
        (rlisten == 0 || Control.stopping()) && continue   # a stopping worker accepts nothing
        Waiting.grace(c.fd, max(KEEP_GRACE_MS - ms_since(t0), 1)) && return READ_OK
        (Control.stopping() || !has_input(k.listen_fd)) && continue   # a free worker took it
        took, listening = take_waiting!(k)
        took || continue
        # The front end may have reused this connection in the meantime:
        # that request is served first, then the handover (see the top).
        return has_input(c.fd) ? READ_OK : READ_YIELD
    end
end

"""
    take_waiting!(k) -> (took, keep_listening)

Accept the connection waiting on the listener into `k.handover`. When
another worker was faster (EAGAIN) this worker keeps its kept connection;
an accept error that would make the listener readable forever (EMFILE…)
stops watching it for this idle period (the accept loop reports it).
"""
function take_waiting!(k::Keeper)
    fd = Posix.accept(k.listen_fd)
    if fd >= 0
        k.handover = fd
        k.handover_at = time_ns()
        return (true, true)
    end
    e = -fd
    return (false, e == Posix.EAGAIN || e == Posix.EINTR || e == Posix.ECONNABORTED)
end

"""Told to stop while idle on a kept connection: serve one more request if
the front end sends it within STOP_LINGER_MS (the response closes it),
else close. The front end may reuse a connection at the moment it is closed
idle (nginx then fails a POST: it never retries one); right after a response
it sees the close before it could."""
function linger(k::Keeper, c::Conn)::ReadStatus
    k.handover >= 0 && return READ_YIELD   # its first request is on its way: serve it
    rc, rconn, _, _ = Waiting.idle_poll(k.rt, c.fd, Cint(-1), STOP_LINGER_MS)
    return rc != 0 && rconn != 0 ? READ_OK : READ_STOP
end

"""
    gives_up!(k, c) -> Bool

Before the response on a kept connection goes out: is a connection waiting
on the listener? Then it is accepted now (`k.handover`) and this response
is the last here. Deciding before the send, not after, lets the end of the
connection follow the response at once: the shorter the gap, the fewer
requests a front end sends into a connection being closed (HAProxy then
drops its client, nginx fails a POST; README, "Front ends"). One `accept`
per request on kept connections only; it fails with EAGAIN when nobody
waits. (The request's last record is still in the buffer here; anything
after it is a next request, and then this connection is not given up.)
"""
function gives_up!(k::Keeper, c::Conn)::Bool
    buffered(c) == c.rlen || return false    # the next request is here already
    k.handover >= 0 && return true           # taken while this request was read
    return k.listen_fd >= 0 && first(take_waiting!(k))
end

"""
    spare!(k, c, leaving) -> Bool

Just after the response that was to end a kept connection: has the front
end already sent the next request on it (it cannot know the connection
ends; nothing in FastCGI says so)? Then that request is served rather than
cut off, and the connection ends after a later response. Not when the
worker is `leaving` (a page called `exit()`), and at most MAX_SPARED times,
so a front end that always sends ahead cannot keep a stopping worker.
"""
function spare!(k::Keeper, c::Conn, leaving::Bool)::Bool
    (leaving || k.spared >= MAX_SPARED) && return false
    has_input(c.fd) || return false
    k.spared += 1
    return true
end

end # module KeepAlive
