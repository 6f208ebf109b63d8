"""
    Server

The worker's accept loop and FastCGI connection handling. One connection and
one request at a time: the pool of worker processes provides concurrency, so
the loop can block in `poll(2)` on (listening socket or connection, control
channel) without any scheduler in the way.

A connection is read into one reused buffer; records are assembled into a
request (BEGIN_REQUEST, PARAMS to the empty record, STDIN to the empty
record), the page runs, and the response goes out (see `Output`). A stream
that breaks the protocol closes that connection with one warning; the worker
then serves the next one.

Kept connections (FCGI_KEEP_CONN) never starve the pool: front ends keep more
connections open than there are workers, so a worker idle between requests
on one also watches the listening socket, and connections waiting there win
(see [`wait_between_requests`](@ref)).
"""
module Server

using ..Posix
using ..Log
using ..Control
using ..Access
using ..FastCGI
using ..FastCGI: ByteBuf
using ..Config: Settings
using ..Output
using ..Output: ResponseIO
using ..Params
using ..Pages
using ..Scoreboard

const LISTEN_FD = Cint(0)        # FCGI_LISTENSOCK_FILENO, as inherited
const ACCEPT_POLL_MS = 1000       # wake up this often to let page tasks run
const READ_BUF = 128 * 1024       # > one maximal record (8 + 65535 + 255)
const IDLE_RESTORE_MS = 2         # idle this long → restore the worker's ENV
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

# Outcome of waiting for / reading a record.
const REC_OK        = 0
const REC_EOF       = 1   # clean end of file between records
const REC_TRUNCATED = 2   # end of file inside a record
const REC_TIMEOUT   = 3
const REC_STOP      = 4   # told to stop while the connection was idle
const REC_ERROR     = 5   # read(2) failed (ECONNRESET…)
const REC_VERSION   = 6   # not a FastCGI 1 record
const REC_YIELD     = 7   # idle kept connection given up for a waiting one

# What to do after a record.
const CONTINUE = 0
const CLOSE    = 1

"""One FastCGI connection: read buffer, current record, request being read."""
mutable struct Conn
    fd::Cint
    buf::Vector{UInt8}
    head::Int              # first unread byte
    tail::Int              # last valid byte
    rtype::UInt8           # current record
    rid::Int
    clen::Int
    cstart::Int
    rlen::Int
    active::Bool           # a request is being read
    busy::Bool             # the scoreboard says so (params were complete)
    req_id::Int
    keep::Bool
    params_done::Bool
    params::ByteBuf
    body::Vector{UInt8}
    env::Dict{String,String}
    fresh::Bool            # accepted, no request begun yet: the client's first
                           # request is on its way, so a STOP must not drop it
    started::UInt64        # time_ns() when the params were complete
    spared::Int            # requests served after this connection was to end (`spare!`)
end

Conn() = Conn(Cint(-1), Vector{UInt8}(undef, READ_BUF), 1, 0, 0x00, 0, 0, 0, 0,
              false, false, 0, false, false, ByteBuf(8192), UInt8[], Dict{String,String}(),
              true, UInt64(0), 0)

function reset!(c::Conn, fd::Cint)
    c.fd = fd
    c.head = 1
    c.tail = 0
    c.active = false
    c.busy = false
    c.fresh = true
    c.spared = 0
    return c
end

buffered(c::Conn) = c.tail - c.head + 1
"""Waiting between requests on a kept connection: a STOP may close it."""
idle(c::Conn) = !c.fresh && !c.active && buffered(c) == 0

"""The worker: settings, page runtime, the (single) connection and buffers."""
struct Worker
    listen_fd::Cint        # the listening socket (moved off fd 0 by main)
    scoreboard::Bool       # report requests in the scoreboard (not while warming up)
    settings::Settings
    rt::Pages.Runtime
    conn::Conn
    out::ByteBuf           # small replies (GET_VALUES_RESULT, END_REQUEST…)
    resp::ResponseIO
    handover::Base.RefValue{Cint}  # accepted while idle on a kept connection: served next
    keep_idle_ms::Int      # KEEP_IDLE_MS (shorter in tests)
end

Worker(s::Settings, listen_fd::Integer=LISTEN_FD; scoreboard::Bool=true,
       keep_idle_ms::Int=KEEP_IDLE_MS) =
    Worker(Cint(listen_fd), scoreboard, s, Pages.Runtime(s), Conn(), ByteBuf(256), ResponseIO(),
           Ref(Cint(-1)), keep_idle_ms)

"""The scoreboard: this request's params are complete."""
function mark_busy!(w::Worker, c::Conn)
    w.scoreboard || return nothing
    c.busy = true
    Scoreboard.busy!(get(c.env, "REQUEST_METHOD", ""), get(c.env, "REQUEST_URI", ""))
    return nothing
end

"""
    log_access(w, c, status)

The access log entry of the request just finished (when the master asked for
an access log): sent after the response, so the client never waits for it.
`status` is the HTTP status the page answered, or 499 (nginx's "client closed
request") when the client went away first.
"""
function log_access(w::Worker, c::Conn, status::Int)
    w.settings.access_log || return nothing
    env = c.env
    uri = get(env, "REQUEST_URI", "")
    isempty(uri) && (uri = get(env, "SCRIPT_NAME", ""))
    now = time_ns()
    Access.record(get(env, "REQUEST_METHOD", ""), uri, status, (now - c.started) ÷ 1000,
                  get(env, "REMOTE_ADDR", ""), now)
    return nothing
end

"""The scoreboard: the request is over (`answered`: END_REQUEST was sent)."""
function mark_done!(w::Worker, c::Conn, answered::Bool)
    c.busy || return nothing
    c.busy = false
    Scoreboard.done!(answered)
    return nothing
end

# ------------------------------------------------------------------ reading

"""
    idle_poll(w, fd, timeout_ms) -> (rc, revents_fd, revents_control)

Poll `fd` together with the control channel. A worker with nothing to do
gets its own environment back (see `Env`) and sends the access log entries
it holds (see `Access`), but only after IDLE_RESTORE_MS of silence: a client
sending requests back to back would otherwise pay for a full environment
swap twice per request, and for a `send(2)` per entry.
"""
function idle_poll(w::Worker, fd::Cint, timeout_ms::Int)
    if !Pages.isidle(w.rt) || Access.pending()
        r = Posix.poll2(fd, Posix.POLLIN, Control.pollfd(), Posix.POLLIN,
                        min(IDLE_RESTORE_MS, timeout_ms))
        (r[1] != 0 || timeout_ms <= IDLE_RESTORE_MS) && return r
        Pages.idle!(w.rt)
        Access.flush!()
        timeout_ms -= IDLE_RESTORE_MS
    end
    return Posix.poll2(fd, Posix.POLLIN, Control.pollfd(), Posix.POLLIN, timeout_ms)
end

"""
    wait_readable(w, c) -> REC_OK, REC_TIMEOUT, REC_STOP or REC_YIELD

Before a blocking read: poll the connection together with the control
channel, with the read timeout, so a silent client cannot hold the worker.
Between requests on a kept connection, see [`wait_between_requests`](@ref).
"""
function wait_readable(w::Worker, c::Conn)::Int
    idle(c) && return wait_between_requests(w, c)
    while true
        rc, rconn, rctl = idle_poll(w, c.fd, w.settings.read_timeout_ms)
        rc == 0 && return REC_TIMEOUT
        rc < 0 && return REC_OK               # let read(2) report the error
        rctl != 0 && Control.on_readable!()   # a STOP: this request is finished first
        rconn != 0 && return REC_OK
    end
end

# ------------------------------------------------------ kept connections

const POLLSET3 = Vector{Posix.PollFD}(undef, 3)

"""
    poll3(fd1, fd2, fd3, timeout_ms) -> (rc, revents1, revents2, revents3)

`poll(2)` for POLLIN on three fds (a negative one is ignored), EINTR retried:
[`Posix.poll2`](@ref) with the listening socket added.
"""
function poll3(fd1::Cint, fd2::Cint, fd3::Cint, timeout_ms::Int)
    set = POLLSET3
    while true
        @inbounds set[1] = Posix.PollFD(fd1, Posix.POLLIN, Cshort(0))
        @inbounds set[2] = Posix.PollFD(fd2, Posix.POLLIN, Cshort(0))
        @inbounds set[3] = Posix.PollFD(fd3, Posix.POLLIN, Cshort(0))
        rc = ccall(:poll, Cint, (Ptr{Posix.PollFD}, Culong, Cint), set, 3, timeout_ms)
        rc < 0 && Posix.errno() == Posix.EINTR && continue
        return (Int(rc), @inbounds(set[1].revents), @inbounds(set[2].revents),
                @inbounds(set[3].revents))
    end
end

"""[`idle_poll`](@ref) on the connection, the listener and the control channel."""
function idle_poll3(w::Worker, fd::Cint, lfd::Cint, timeout_ms::Int)
    if !Pages.isidle(w.rt) || Access.pending()
        r = poll3(fd, lfd, Control.pollfd(), min(IDLE_RESTORE_MS, timeout_ms))
        (r[1] != 0 || timeout_ms <= IDLE_RESTORE_MS) && return r
        Pages.idle!(w.rt)
        Access.flush!()
        timeout_ms -= IDLE_RESTORE_MS
    end
    return poll3(fd, lfd, Control.pollfd(), timeout_ms)
end

ms_since(t0::UInt64) = Int((time_ns() - t0) ÷ 1_000_000)

"""
    wait_between_requests(w, c) -> REC_OK, REC_TIMEOUT, REC_STOP or REC_YIELD

Idle on a kept connection: its last request answered, nothing buffered. The
front end may send the next request at any moment or never (nginx with
`keepalive`, HAProxy's `fcgi-app` keep more connections open than there are
workers), and a worker waiting here while connections queue on the listener
would starve them until the front end times out (504). So the listener is
polled too, and waiting work wins: once this connection has been idle for
KEEP_GRACE_MS the worker accepts the waiting one (see
[`take_waiting!`](@ref)) and gives this one up, closing it between
requests, which every front end handles. Every idle worker wakes on a new
connection; only the one whose `accept` succeeds gives its connection up,
and a request that arrives on this connection first is served first.

Also closes the connection after `w.keep_idle_ms` of silence, and on STOP
after at most one more request (STOP_LINGER_MS).
"""
function wait_between_requests(w::Worker, c::Conn)::Int
    # Accepted before this connection's last response: serve it, unless the
    # front end sent another request here meanwhile (see `spare!`).
    w.handover[] >= 0 && return has_input(c.fd) ? REC_OK : REC_YIELD
    t0 = time_ns()
    listening = w.listen_fd >= 0
    while true
        Control.stopping() && return linger(w, c)
        left = w.keep_idle_ms - ms_since(t0)
        left <= 0 && return REC_TIMEOUT
        rc, rconn, rlisten, rctl = idle_poll3(w, c.fd, listening ? w.listen_fd : Cint(-1), left)
        rc == 0 && return REC_TIMEOUT
        rc < 0 && return REC_OK                # let read(2) report the error
        rctl != 0 && Control.on_readable!()
        rconn != 0 && return REC_OK
        (rlisten == 0 || Control.stopping()) && continue   # a stopping worker accepts nothing
        grace(w, c, max(KEEP_GRACE_MS - ms_since(t0), 1)) && return REC_OK
        (Control.stopping() || !has_input(w.listen_fd)) && continue   # a free worker took it
        took, listening = take_waiting!(w)
        took || continue
        # The front end may have reused this connection in the meantime:
        # that request is served first, then the handover (see the top).
        return has_input(c.fd) ? REC_OK : REC_YIELD
    end
end

"""Wait up to `ms` for a request on `c` alone (the control channel is
still read): true when one came."""
function grace(w::Worker, c::Conn, ms::Int)::Bool
    _, rconn, _, rctl = poll3(c.fd, Cint(-1), Control.pollfd(), ms)
    rctl != 0 && Control.on_readable!()
    return rconn != 0
end

"""Is `fd` readable right now (data, end of file or an error)?"""
has_input(fd::Cint) = poll3(fd, Cint(-1), Cint(-1), 0)[1] > 0

"""
    take_waiting!(w) -> (took, keep_listening)

Accept the connection waiting on the listener into `w.handover`. When
another worker was faster (EAGAIN) this worker keeps its kept connection;
an accept error that would make the listener readable forever (EMFILE…)
stops watching it for this idle period (the accept loop reports it).
"""
function take_waiting!(w::Worker)
    fd = Posix.accept(w.listen_fd)
    fd >= 0 && (w.handover[] = fd; return (true, true))
    e = -fd
    return (false, e == Posix.EAGAIN || e == Posix.EINTR || e == Posix.ECONNABORTED)
end

"""Told to stop while idle on a kept connection: serve one more request if
the front end sends it within STOP_LINGER_MS (`respond!` closes after it),
else close. The front end may reuse a connection at the moment it is closed
idle (nginx then fails a POST: it never retries one); right after a response
it sees the close before it could."""
function linger(w::Worker, c::Conn)::Int
    w.handover[] >= 0 && return REC_YIELD   # its first request is on its way: serve it
    rc, rconn, _, _ = idle_poll3(w, c.fd, Cint(-1), STOP_LINGER_MS)
    return rc != 0 && rconn != 0 ? REC_OK : REC_STOP
end

"""Make sure `need` bytes are buffered (reading as needed)."""
function ensure!(w::Worker, c::Conn, need::Int)::Int
    while buffered(c) < need
        if c.head + need - 1 > length(c.buf)          # compact to the front
            n = buffered(c)
            n > 0 && copyto!(c.buf, 1, c.buf, c.head, n)
            c.head = 1
            c.tail = n
        end
        st = wait_readable(w, c)
        st == REC_OK || return st
        n = Posix.read_some(c.fd, c.buf, c.tail, length(c.buf) - c.tail)
        n == -Int(Posix.EAGAIN) && continue
        n < 0 && return REC_ERROR
        n == 0 && return buffered(c) == 0 ? REC_EOF : REC_TRUNCATED
        c.tail += n
    end
    return REC_OK
end

"""Read the next whole record into the buffer and decode its header."""
function read_record!(w::Worker, c::Conn)::Int
    st = ensure!(w, c, FastCGI.HEADER_LEN)
    st == REC_OK || return st
    b = c.buf
    h = c.head
    @inbounds begin
        b[h] == FastCGI.VERSION_1 || return REC_VERSION
        c.rtype = b[h+1]
        c.rid = (Int(b[h+2]) << 8) | Int(b[h+3])
        c.clen = (Int(b[h+4]) << 8) | Int(b[h+5])
        plen = Int(b[h+6])
    end
    c.rlen = FastCGI.HEADER_LEN + c.clen + plen
    st = ensure!(w, c, c.rlen)
    st == REC_OK || return st == REC_EOF ? REC_TRUNCATED : st
    c.cstart = c.head + FastCGI.HEADER_LEN
    return REC_OK
end

# ------------------------------------------------------------------ records

"""Send `w.out` on the connection; CLOSE if the peer is gone."""
function send_out!(w::Worker, c::Conn)::Int
    rc = Posix.write_all(c.fd, w.out.data, w.out.len)
    FastCGI.reset!(w.out)
    return rc == 0 ? CONTINUE : CLOSE
end

function reply_end!(w::Worker, c::Conn, rid::Int, proto::UInt8)::Int
    FastCGI.put_end_request!(FastCGI.reset!(w.out), rid, 0, proto)
    return send_out!(w, c)
end

"""A protocol violation: one warning, then the connection is closed."""
function bad_stream(c::Conn, why::String)::Int
    Log.warn("closing FastCGI connection: $why")
    return CLOSE
end

function handle_record!(w::Worker, c::Conn)::Int
    t = c.rtype
    c.rid == 0 && return on_management!(w, c)
    t == FastCGI.BEGIN_REQUEST && return on_begin!(w, c)
    t == FastCGI.ABORT_REQUEST && return on_abort!(w, c)
    t == FastCGI.PARAMS        && return on_params!(w, c)
    t == FastCGI.STDIN         && return on_stdin!(w, c)
    t == FastCGI.DATA          && return CONTINUE     # FILTER role only: ignored
    return bad_stream(c, "unexpected record type $t for request $(c.rid)")
end

function on_management!(w::Worker, c::Conn)::Int
    FastCGI.reset!(w.out)
    if c.rtype == FastCGI.GET_VALUES
        FastCGI.values_result!(w.out, c.buf, c.cstart, c.cstart + c.clen - 1) ||
            return bad_stream(c, "malformed GET_VALUES record")
    else
        FastCGI.put_unknown_type!(w.out, c.rtype)
    end
    return send_out!(w, c)
end

function on_begin!(w::Worker, c::Conn)::Int
    c.clen >= 8 || return bad_stream(c, "BEGIN_REQUEST body of $(c.clen) bytes")
    b, i = c.buf, c.cstart
    role = (Int(b[i]) << 8) | Int(b[i+1])
    keep = (b[i+2] & FastCGI.KEEP_CONN) != 0
    if c.active
        c.rid == c.req_id && return bad_stream(c, "second BEGIN_REQUEST for request $(c.rid)")
        return reply_end!(w, c, c.rid, FastCGI.CANT_MPX_CONN)
    end
    if role != FastCGI.RESPONDER
        act = reply_end!(w, c, c.rid, FastCGI.UNKNOWN_ROLE)
        return keep ? act : CLOSE
    end
    c.active = true
    c.fresh = false
    c.req_id = c.rid
    c.keep = keep
    c.params_done = false
    FastCGI.reset!(c.params)
    empty!(c.body)
    return CONTINUE
end

function on_abort!(w::Worker, c::Conn)::Int
    (c.active && c.rid == c.req_id) || return CONTINUE
    c.active = false               # the page has not run: nothing to undo
    mark_done!(w, c, true)
    act = reply_end!(w, c, c.rid, FastCGI.REQUEST_COMPLETE)
    c.params_done && log_access(w, c, 499)
    return c.keep ? act : CLOSE
end

function on_params!(w::Worker, c::Conn)::Int
    (c.active && c.rid == c.req_id) || return CONTINUE
    c.params_done && return bad_stream(c, "PARAMS after the end of the params stream")
    if c.clen > 0
        c.params.len + c.clen > w.settings.max_params &&
            return bad_stream(c, "params exceed JULIA_FCGI_MAX_PARAMS ($(w.settings.max_params) bytes)")
        GC.@preserve c FastCGI.add!(c.params, pointer(c.buf, c.cstart), c.clen)
        return CONTINUE
    end
    c.params_done = true
    # A fresh Dict per request: Env keeps it as "what ENV holds now".
    env = Dict{String,String}()
    sizehint!(env, 48)
    FastCGI.parse_pairs!(env, c.params.data, 1, c.params.len) ||
        return bad_stream(c, "malformed name-value pair in PARAMS")
    Params.fixup!(env, w.settings)     # what each front end sends → CGI variables
    c.env = env
    c.started = time_ns()
    mark_busy!(w, c)
    FastCGI.shrink!(FastCGI.reset!(c.params), 64 * 1024)
    declared = tryparse(Int, get(env, "CONTENT_LENGTH", ""))
    declared !== nothing && declared > w.settings.max_body && return too_large!(w, c)
    return CONTINUE
end

function on_stdin!(w::Worker, c::Conn)::Int
    (c.active && c.rid == c.req_id) || return CONTINUE
    c.params_done || return bad_stream(c, "STDIN before the end of PARAMS")
    c.clen == 0 && return respond!(w, c)
    n = length(c.body)
    n + c.clen > w.settings.max_body && return too_large!(w, c)
    resize!(c.body, n + c.clen)
    copyto!(c.body, n + 1, c.buf, c.cstart, c.clen)
    return CONTINUE
end

"""The body is larger than JULIA_FCGI_MAX_BODY: 413, then close (the rest
of the body is still on its way and will not be read)."""
function too_large!(w::Worker, c::Conn)::Int
    resp = Output.reset!(w.resp, c.fd, c.req_id)
    Output.error_response!(resp, "413 Payload Too Large", "413 Payload Too Large\n",
        "request body exceeds JULIA_FCGI_MAX_BODY ($(w.settings.max_body) bytes)")
    mark_done!(w, c, true)
    sent = Output.finish!(resp, 0)
    Log.info("request body too large, answered 413",
             "REQUEST_URI" => get(c.env, "REQUEST_URI", ""))
    log_access(w, c, sent ? 413 : 499)
    c.active = false
    return CLOSE
end

"""The request is complete: run the page and send the response."""
function respond!(w::Worker, c::Conn)::Int
    resp = Output.reset!(w.resp, c.fd, c.req_id)
    status = Pages.serve!(w.rt, c.env, c.body, resp)
    # Idle in the scoreboard before the last send: whoever got the response
    # and looks at the scoreboard next must not see this worker still busy.
    mark_done!(w, c, true)
    ends = c.keep && (w.rt.exit_code >= 0 || Control.stopping() || gives_up!(w, c))
    last = !c.keep || ends
    sent = Output.finish!(resp, status)
    if sent && ends
        # The end of a kept connection follows its last response at once, so
        # the front end sees it before it could send another request there.
        spare!(w, c) ? (last = false) : Posix.shutdown_write(c.fd)
    end
    log_access(w, c, sent ? Output.status_code(resp) : 499)
    c.active = false
    length(c.body) > 1024 * 1024 ? (c.body = UInt8[]) : empty!(c.body)
    (!sent || last) && return CLOSE
    return CONTINUE
end

const MAX_SPARED = 8

"""
    spare!(w, c) -> Bool

Just after the response that was to end a kept connection: has the front
end already sent the next request on it (it cannot know the connection
ends; nothing in FastCGI says so)? Then that request is served rather than
cut off, and the connection ends after a later response. Not when a page called `exit()` (the worker is leaving),
and at most MAX_SPARED times, so a front end that always sends ahead
cannot keep a stopping worker.
"""
function spare!(w::Worker, c::Conn)::Bool
    (w.rt.exit_code >= 0 || c.spared >= MAX_SPARED) && return false
    has_input(c.fd) || return false
    c.spared += 1
    return true
end

"""
Before the response on a kept connection goes out: is a connection waiting
on the listener? Then it is accepted now (`w.handover`) and this response
is the last here. Deciding before the send, not after, lets the end of the
connection follow the response at once: the shorter the gap, the fewer
requests a front end sends into a connection being closed (HAProxy then
drops its client, nginx fails a POST; README, "Front ends"). One `accept` per request on
kept connections only; it fails with EAGAIN when nobody waits. (The
request's last record is still in the buffer here; anything after it is a
next request, and then this connection is not given up.)
"""
function gives_up!(w::Worker, c::Conn)::Bool
    buffered(c) == c.rlen || return false    # the next request is here already
    w.handover[] >= 0 && return true         # taken while this request was read
    return w.listen_fd >= 0 && first(take_waiting!(w))
end

# ------------------------------------------------------------------ loops

"""
    serve_connection!(w, fd)

Serve FastCGI requests on `fd` until the peer closes, the stream breaks the
protocol, a request without KEEP_CONN is done, or the worker must stop.
Closes `fd`. Never throws.
"""
function serve_connection!(w::Worker, fd::Cint)
    c = reset!(w.conn, fd)
    try
        Posix.set_send_timeout(fd, w.settings.read_timeout_ms)
        while true
            st = read_record!(w, c)
            st == REC_OK || (report(w, c, st); break)
            act = handle_record!(w, c)
            c.head += c.rlen
            act == CONTINUE || break
        end
    catch e
        # Pages.serve! catches page errors; this is a bug in the worker.
        Log.error("internal error while serving a connection: " *
                  sprint(showerror, e, catch_backtrace()))
    end
    Posix.closefd(fd)
    mark_done!(w, c, false)        # a request cut short by the connection
    c.fd = Cint(-1)
    c.active = false
    return nothing
end

function report(w::Worker, c::Conn, st::Int)
    if st == REC_TRUNCATED
        Log.warn("closing FastCGI connection: end of file inside a record")
    elseif st == REC_VERSION
        Log.warn("closing FastCGI connection: not a FastCGI 1 record (version byte $(c.buf[c.head]))")
    elseif st == REC_TIMEOUT
        c.active && Log.info("closing FastCGI connection: silent for $(w.settings.read_timeout_ms ÷ 1000) s in the middle of a request")
    elseif st == REC_ERROR
        Log.debug("closing FastCGI connection: read failed")
    end
    return nothing
end

"""
    accept_loop!(w) -> reason

Accept and serve connections on the listening socket until told to stop or
a page calls `exit()`. Returns the reason (for `EXITING`); a fatal accept
error returns `nothing`. No exception escapes: a bug in one iteration is
logged and the loop goes on.
"""
function accept_loop!(w::Worker)::Union{String,Nothing}
    while true
        # A connection accepted by the kept-connection path is always served.
        Control.stopping() && w.handover[] < 0 && return Control.CHAN.reason
        outcome = try
            accept_once!(w)
        catch e
            Log.error("internal error in the accept loop: " * sprint(showerror, e, catch_backtrace()))
            Posix.poll2(Cint(-1), Cshort(0), Cint(-1), Cshort(0), 100)   # never spin
            ACCEPTED
        end
        outcome == PAGE_EXIT && return "page called exit()"
        outcome == FATAL && return nothing
    end
end

const ACCEPTED  = 0
const PAGE_EXIT = 1
const FATAL     = 2

"""Accept one connection (or wait for one) and serve it."""
function accept_once!(w::Worker)::Int
    fd = w.handover[]
    w.handover[] = Cint(-1)
    fd < 0 && (fd = Posix.accept(w.listen_fd))
    if fd >= 0
        serve_connection!(w, fd)
        return w.rt.exit_code >= 0 ? PAGE_EXIT : ACCEPTED
    end
    e = -fd
    if e == Posix.EAGAIN
        wait_for_connection(w, ACCEPT_POLL_MS)
    elseif e in (Posix.EMFILE, Posix.ENFILE, Posix.ENOBUFS, Posix.ENOMEM)
        Log.warn("accept failed: $(Posix.strerror(e)); retrying in 1 s")
        wait_for_connection(w, 1000)
    elseif !(e in (Posix.EINTR, Posix.ECONNABORTED, Posix.EPROTO))
        Log.error("accept on the listening socket (fd 0) failed: $(Posix.strerror(e))")
        return FATAL
    end
    return ACCEPTED
end

"""Idle: wait for a connection or a control message; on timeout let tasks
started by pages run (with the worker's own environment back in place)."""
function wait_for_connection(w::Worker, timeout_ms::Int)
    rc, _, rctl = idle_poll(w, w.listen_fd, timeout_ms)
    rctl != 0 && Control.on_readable!()
    if rc == 0
        Pages.idle!(w.rt)
        yield()
    end
    return nothing
end

end # module Server
