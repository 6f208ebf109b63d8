"""
    Requests

The request layer: a connection's requests, one at a time, from their
records (BEGIN_REQUEST, PARAMS to the empty record, STDIN to the empty
record) to the response. Where the current request is, is one [`Phase`](@ref),
and each phase has its deadline (INTERFACE.md, "Deadlines"):

| phase    | until                              | deadline |
|----------|------------------------------------|----------|
| `FRESH`  | BEGIN_REQUEST                      | `header_timeout` from the start |
| `PARAMS` | the empty PARAMS record            | the same |
| `BODY`   | the empty STDIN record             | `body_timeout` from the end of the params, plus a second per `body_min_rate` bytes received |
| `KEPT`   | the next request's first byte      | `KeepAlive` decides |

The start is the accept (a new connection) or the first byte of a kept
connection's next request; no wait may be longer than `read_timeout`
either. The scoreboard says busy from the start, as soon as the worker has
to wait for any of it, and a request that misses its deadline is closed (in
`BODY`: answered 408 first). A stream that breaks the protocol closes that
connection with one warning; the worker then serves the next one.
"""
module Requests

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
using ..Connection
using ..Connection: Conn, ReadStatus, READ_OK, READ_EOF, READ_TRUNCATED, READ_TIMEOUT,
                    READ_STOP, READ_ERROR, READ_VERSION, READ_YIELD, buffered
using ..Waiting
using ..Waiting: ms_until, ns
using ..KeepAlive

"""Where a connection's current request is."""
@enum Phase begin
    FRESH     # no BEGIN_REQUEST yet: a new connection, or a kept one's next request arriving
    PARAMS    # BEGIN_REQUEST read: reading the params
    BODY      # the params are complete: reading the body
    KEPT      # answered: waiting for the next request on a kept connection
end

"""What the caller does after a record."""
@enum Next CONTINUE CLOSE

"""The request being read on the worker's connection (one object, reused)."""
mutable struct Request
    phase::Phase
    id::Int                  # its request id; 0 before the connection's first one
    keep::Bool               # FCGI_KEEP_CONN: the connection outlives it
    params::ByteBuf
    body::Vector{UInt8}
    env::Dict{String,String}
    started::UInt64          # time_ns() of the accept, or of the next request's first byte
    params_at::UInt64        # time_ns() when the params were complete
end

Request() = Request(KEPT, 0, false, ByteBuf(8192), UInt8[], Dict{String,String}(), 0, 0)

"""
    AbstractWorker

What the request layer serves with: `Server.Worker`, whose fields
`settings`, `rt` (the page runtime), `conn`, `req`, `kept` (a
`KeepAlive.Keeper`), `out` (small replies), `resp` and `scoreboard`
(report requests, not while warming up) it uses.
"""
abstract type AbstractWorker end

"""A request has begun (BEGIN_REQUEST read) and is not answered yet."""
begun(r::Request) = r.phase == PARAMS || r.phase == BODY

"""The current record belongs to the request being read."""
ours(r::Request, c::Conn) = begun(r) && c.rec.rid == r.id

"""A new request starts arriving at `t`."""
arriving!(r::Request, t::UInt64) = (r.phase = FRESH; r.started = t; r)

"""The end of the current phase."""
function deadline(s::Settings, r::Request)::UInt64
    r.phase == BODY || return r.started + ns(s.header_timeout_ms)
    earned = s.body_min_rate > 0 ? length(r.body) * 1000 ÷ s.body_min_rate : 0
    return r.params_at + ns(s.body_timeout_ms + earned)
end

"""
Nothing to read: wait for the connection (and the control channel) until
the phase's deadline, at most `read_timeout` at a time. The scoreboard says
busy from the request's start on.
"""
function Connection.wait_input(w::AbstractWorker, c::Conn)::ReadStatus
    r, s = w.req, w.settings
    w.scoreboard && Scoreboard.reading!(r.started)
    limit = deadline(s, r)
    while true
        left = ms_until(limit, time_ns())
        left == 0 && return READ_TIMEOUT
        rc, rconn, _, rctl = Waiting.idle_poll(w.rt, c.fd, Cint(-1), min(left, s.read_timeout_ms))
        rc == 0 && return READ_TIMEOUT          # the deadline, or read_timeout of silence
        rc < 0 && return READ_OK                # let recv(2) report the error
        rctl != 0 && Control.on_readable!()     # a STOP: this request is finished first
        rconn != 0 && return READ_OK
    end
end

# ------------------------------------------------------------------ the loop

"""
    serve!(w, started)

Serve the requests of the connection in `w.conn` (accepted at `started`,
whatever it sent so far in its buffer) until the peer closes, the stream
breaks the protocol, a request without KEEP_CONN is done, a deadline
passes, or the worker must stop. Closes the connection. Never throws.
"""
function serve!(w::AbstractWorker, started::UInt64)
    c, r = w.conn, w.req
    arriving!(r, started)
    r.id = 0
    w.kept.spared = 0
    try
        while true
            if r.phase == KEPT
                st = buffered(c) > 0 ? READ_OK : KeepAlive.wait_between_requests(w.kept, c)
                st == READ_OK || (report(w, c, r, st); break)
                arriving!(r, time_ns())
            end
            st = Connection.read_record!(w, c)
            st == READ_OK || (read_failed!(w, c, r, st); break)
            next = handle_record!(w, c, r)
            Connection.consume!(c)
            next == CONTINUE || break
        end
    catch e
        # Pages.serve! catches page errors; this is a bug in the worker.
        Log.error("internal error while serving a connection: " *
                  sprint(showerror, e, catch_backtrace()))
    end
    Posix.closefd(c.fd)
    w.scoreboard && Scoreboard.done!(false)   # a request cut short by the connection
    c.fd = Cint(-1)
    r.phase = KEPT
    return nothing
end

"""A read ended the connection: in the body phase a missed deadline is
answered 408 first; the rest is logged as it deserves."""
function read_failed!(w::AbstractWorker, c::Conn, r::Request, st::ReadStatus)
    if st == READ_TIMEOUT && r.phase == BODY && time_ns() >= deadline(w.settings, r)
        return body_timed_out!(w, c, r)
    end
    return report(w, c, r, st)
end

function report(w::AbstractWorker, c::Conn, r::Request, st::ReadStatus)
    s = w.settings
    if st == READ_TRUNCATED
        Log.warn("closing FastCGI connection: end of file inside a record")
    elseif st == READ_VERSION
        Log.warn("closing FastCGI connection: not a FastCGI 1 record (version byte $(c.buf[c.head]))")
    elseif st == READ_TIMEOUT && r.phase != KEPT
        if time_ns() >= deadline(s, r)
            Log.info("closing FastCGI connection: the request's params were not complete " *
                     "within header_timeout ($(s.header_timeout_ms) ms)")
        else
            Log.info("closing FastCGI connection: silent for $(s.read_timeout_ms) ms " *
                     "(read_timeout) in the middle of a request")
        end
    elseif st == READ_ERROR
        Log.debug("closing FastCGI connection: read failed")
    end
    return nothing
end

# ------------------------------------------------------------------ records

"""Send `w.out` on the connection; CLOSE if the peer is gone."""
send_out!(w::AbstractWorker, c::Conn)::Next = Connection.send!(c, w.out) ? CONTINUE : CLOSE

function reply_end!(w::AbstractWorker, c::Conn, rid::Int, proto::UInt8)::Next
    FastCGI.put_end_request!(FastCGI.reset!(w.out), rid, 0, proto)
    return send_out!(w, c)
end

"""A protocol violation: one warning, then the connection is closed."""
function bad_stream(why::String)::Next
    Log.warn("closing FastCGI connection: $why")
    return CLOSE
end

"""Answered at once (a management record, a role we do not play): a kept
connection is between requests again."""
between!(r::Request) = (r.phase == FRESH && r.id != 0 && (r.phase = KEPT); nothing)

function handle_record!(w::AbstractWorker, c::Conn, r::Request)::Next
    h = c.rec
    h.rid == 0 && return on_management!(w, c, r)
    t = h.type
    t == FastCGI.BEGIN_REQUEST && return on_begin!(w, c, r)
    t == FastCGI.ABORT_REQUEST && return on_abort!(w, c, r)
    t == FastCGI.PARAMS        && return on_params!(w, c, r)
    t == FastCGI.STDIN         && return on_stdin!(w, c, r)
    t == FastCGI.DATA          && return CONTINUE     # FILTER role only: ignored
    return bad_stream("unexpected record type $t for request $(h.rid)")
end

function on_management!(w::AbstractWorker, c::Conn, r::Request)::Next
    FastCGI.reset!(w.out)
    h = c.rec
    if h.type == FastCGI.GET_VALUES
        FastCGI.values_result!(w.out, c.buf, c.cstart, c.cstart + h.clen - 1) ||
            return bad_stream("malformed GET_VALUES record")
    else
        FastCGI.put_unknown_type!(w.out, h.type)
    end
    between!(r)
    return send_out!(w, c)
end

function on_begin!(w::AbstractWorker, c::Conn, r::Request)::Next
    h = c.rec
    h.clen >= 8 || return bad_stream("BEGIN_REQUEST body of $(h.clen) bytes")
    b, i = c.buf, c.cstart
    role = (Int(b[i]) << 8) | Int(b[i+1])
    keep = (b[i+2] & FastCGI.KEEP_CONN) != 0
    if begun(r)
        h.rid == r.id && return bad_stream("second BEGIN_REQUEST for request $(h.rid)")
        return reply_end!(w, c, h.rid, FastCGI.CANT_MPX_CONN)
    end
    if role != FastCGI.RESPONDER
        between!(r)
        next = reply_end!(w, c, h.rid, FastCGI.UNKNOWN_ROLE)
        return keep ? next : CLOSE
    end
    r.phase = PARAMS
    r.id = h.rid
    r.keep = keep
    FastCGI.reset!(r.params)
    empty!(r.body)
    return CONTINUE
end

function on_abort!(w::AbstractWorker, c::Conn, r::Request)::Next
    ours(r, c) || return CONTINUE
    had_params = r.phase == BODY
    r.phase = KEPT                 # the page has not run: nothing to undo
    w.scoreboard && Scoreboard.done!(true)
    next = reply_end!(w, c, r.id, FastCGI.REQUEST_COMPLETE)
    had_params && log_access(w, r, 499)
    return r.keep ? next : CLOSE
end

function on_params!(w::AbstractWorker, c::Conn, r::Request)::Next
    ours(r, c) || return CONTINUE
    r.phase == BODY && return bad_stream("PARAMS after the end of the params stream")
    n, max = c.rec.clen, w.settings.max_params
    if n > 0
        r.params.len + n > max &&
            return bad_stream("params exceed JULIA_FCGI_MAX_PARAMS_BYTES ($max bytes)")
        buf = c.buf
        GC.@preserve buf FastCGI.add!(r.params, pointer(buf, c.cstart), n)
        return CONTINUE
    end
    return params_complete!(w, c, r)
end

"""The empty PARAMS record: decode the params, fix them up, and the
request is busy with its method and URI from here on."""
function params_complete!(w::AbstractWorker, c::Conn, r::Request)::Next
    s = w.settings
    # A fresh Dict per request: Env keeps it as "what ENV holds now".
    env = Dict{String,String}()
    sizehint!(env, 48)
    FastCGI.parse_pairs!(env, r.params.data, 1, r.params.len) ||
        return bad_stream("malformed name-value pair in PARAMS")
    Params.fixup!(env, s)     # what each front end sends → CGI variables
    r.env = env
    r.phase = BODY
    r.params_at = time_ns()
    w.scoreboard && Scoreboard.busy!(r.started, get(env, "REQUEST_METHOD", ""),
                                     get(env, "REQUEST_URI", ""))
    FastCGI.shrink!(FastCGI.reset!(r.params), 64 * 1024)
    declared = tryparse(Int, get(env, "CONTENT_LENGTH", ""))
    declared !== nothing && declared > s.max_body && return too_large!(w, c, r)
    return CONTINUE
end

function on_stdin!(w::AbstractWorker, c::Conn, r::Request)::Next
    ours(r, c) || return CONTINUE
    r.phase == BODY || return bad_stream("STDIN before the end of PARAMS")
    n = c.rec.clen
    n == 0 && return respond!(w, c, r)
    have = length(r.body)
    have + n > w.settings.max_body && return too_large!(w, c, r)
    resize!(r.body, have + n)
    copyto!(r.body, have + 1, c.buf, c.cstart, n)
    return CONTINUE
end

# ------------------------------------------------------------------ answers

"""
    log_access(w, r, status)

The access log entry of the request just finished (when the master asked for
an access log): sent after the response, so the client never waits for it.
`status` is the HTTP status the page answered, or 499 (nginx's "client closed
request") when the client went away first.
"""
function log_access(w::AbstractWorker, r::Request, status::Int)
    w.settings.access_log || return nothing
    env = r.env
    uri = get(env, "REQUEST_URI", "")
    isempty(uri) && (uri = get(env, "SCRIPT_NAME", ""))
    now = time_ns()
    Access.record(get(env, "REQUEST_METHOD", ""), uri, status, (now - r.params_at) ÷ 1000,
                  get(env, "REMOTE_ADDR", ""), now)
    return nothing
end

"""
An error answer instead of the page (`why` goes to the front end's error
log, `logged` to ours), then the connection is closed: the rest of the body
may still be on its way and is not read.
"""
function refuse!(w::AbstractWorker, c::Conn, r::Request, status::String, why::String,
                 logged::String)::Next
    resp = Output.reset!(w.resp, c.fd, r.id)
    Output.error_response!(resp, status, status * "\n", why)
    w.scoreboard && Scoreboard.done!(true)
    sent = Output.finish!(resp, 0)
    Log.info(logged, "REQUEST_URI" => get(r.env, "REQUEST_URI", ""))
    log_access(w, r, sent ? Output.status_code(resp) : 499)
    r.phase = KEPT
    return CLOSE
end

"""The body is larger than JULIA_FCGI_MAX_BODY_BYTES: 413."""
too_large!(w::AbstractWorker, c::Conn, r::Request) =
    refuse!(w, c, r, "413 Payload Too Large",
            "request body exceeds JULIA_FCGI_MAX_BODY_BYTES ($(w.settings.max_body) bytes)",
            "request body too large, answered 413")

"""The body missed its deadline: 408."""
function body_timed_out!(w::AbstractWorker, c::Conn, r::Request)
    s = w.settings
    earns = s.body_min_rate > 0 ? ", plus a second per $(s.body_min_rate) bytes received" : ""
    why = "request body not complete within body_timeout ($(s.body_timeout_ms) ms$earns; " *
          "$(length(r.body)) bytes came)"
    refuse!(w, c, r, "408 Request Timeout", why, why * ", answered 408")
    return nothing
end

"""The request is complete: run the page and send the response."""
function respond!(w::AbstractWorker, c::Conn, r::Request)::Next
    resp = Output.reset!(w.resp, c.fd, r.id)
    status = Pages.serve!(w.rt, r.env, r.body, resp)
    # Idle in the scoreboard before the last send: whoever got the response
    # and looks at the scoreboard next must not see this worker still busy.
    w.scoreboard && Scoreboard.done!(true)
    leaving = w.rt.exit_code >= 0
    ends = r.keep && (leaving || Control.stopping() || KeepAlive.gives_up!(w.kept, c))
    last = !r.keep || ends
    sent = Output.finish!(resp, status)
    if sent && ends
        # The end of a kept connection follows its last response at once, so
        # the front end sees it before it could send another request there.
        KeepAlive.spare!(w.kept, c, leaving) ? (last = false) : Posix.shutdown_write(c.fd)
    end
    log_access(w, r, sent ? Output.status_code(resp) : 499)
    r.phase = KEPT
    length(r.body) > 1024 * 1024 ? (r.body = UInt8[]) : empty!(r.body)
    (!sent || last) && return CLOSE
    return CONTINUE
end

end # module Requests
