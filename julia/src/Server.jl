"""
    Server

The worker's accept loop and a new connection's first moments. One
connection and one request at a time: the pool of worker processes provides
concurrency, so the loop can block in `poll(2)` without any scheduler in
the way. The layers below: `Connection` (bytes and records), `Requests`
(records into a request and its response, deadlines), `KeepAlive`
(between requests on a kept connection), `Waiting` (polls).

A new connection is served once its request head is complete: BEGIN_REQUEST
and the params, which every front end sends at once, so for them this costs
a header walk and nothing else. A connection that sends nothing, or a head
that dribbles in, while other connections wait is set aside ("parked", with
the bytes it sent) after PARK_GRACE_MS: the worker polls its parked
connections with the listener, serves the one whose head completes first,
and closes those that miss their deadline (`first_byte_timeout` for the
first byte, `header_timeout` for the head, `read_timeout` of silence). Idle
and slow clients so hold a descriptor, never a worker, and the scoreboard
says busy only once a connection is served: from its accept on. How many
are parked is on the scoreboard too (`Scoreboard.parked!`), updated
whenever the set changes, so the status page counts those waiting clients.
"""
module Server

using ..Posix
using ..Log
using ..Control
using ..FastCGI
using ..FastCGI: ByteBuf
using ..Config: Settings
using ..Output: ResponseIO
using ..Pages
using ..Scoreboard
using ..Connection
using ..Connection: Conn, buffered
using ..Waiting
using ..Waiting: ms_until, ns
using ..KeepAlive
using ..KeepAlive: Keeper, KEEP_IDLE_MS, STOP_LINGER_MS
using ..Requests
using ..Requests: AbstractWorker, Request

const LISTEN_FD = Cint(0)          # FCGI_LISTENSOCK_FILENO, as inherited
const ACCEPT_POLL_MS = 1000        # wake up this often to let page tasks run
# A new connection without its whole head is parked when another connection
# has waited this long (meanwhile workers idle in accept may take that one).
const PARK_GRACE_MS = 2
# A head this large is no slow client's: it is served as it comes instead.
const PARK_MAX_BYTES = 8 * 1024
# Parked connections per worker, at most; fewer when the descriptor limit is
# low (half of it). The oldest gives way to a new one.
const MAX_PARKED = 1024
const RLIMIT_NOFILE = Cint(7)

"""What one turn of the accept loop came to."""
@enum Outcome ACCEPTED PAGE_EXIT FATAL

"""What reading a new connection's head came to."""
@enum Head begin
    HEAD_READY      # complete (or to be read as it comes): serve it
    HEAD_PARKED     # set aside until more arrives
    HEAD_EXPIRED    # a deadline passed: closed
    HEAD_GONE       # closed by the peer before sending anything
end

"""A connection set aside before its request head arrived."""
mutable struct Parked
    fd::Cint
    accepted::UInt64       # time_ns() of the accept: its deadlines count from here
    last_read::UInt64      # of its last bytes (read_timeout of silence)
    bytes::Vector{UInt8}   # what it sent so far
end

"""A worker's parked connections, oldest first, and the poll set for them
(listener, control channel, one entry each)."""
mutable struct Arrivals
    parked::Vector{Parked}
    set::Vector{Posix.PollFD}
    cap::Int
    stop_at::UInt64        # when STOP was seen with connections parked (0: not yet)
end

Arrivals(cap::Int) = Arrivals(Parked[], Vector{Posix.PollFD}(undef, cap + 2), cap, UInt64(0))

"""The worker: settings, page runtime, the (single) connection and request,
kept and parked connections, buffers."""
struct Worker <: AbstractWorker
    settings::Settings
    scoreboard::Bool       # report requests in the scoreboard (not while warming up)
    rt::Pages.Runtime
    conn::Conn
    req::Request
    kept::Keeper           # the listener (moved off fd 0 by main), the handover
    arrivals::Arrivals
    out::ByteBuf           # small replies (GET_VALUES_RESULT, END_REQUEST…)
    resp::ResponseIO
end

function Worker(s::Settings, listen_fd::Integer=LISTEN_FD; scoreboard::Bool=true,
                keep_idle_ms::Int=KEEP_IDLE_MS)
    rt = Pages.Runtime(s)
    return Worker(s, scoreboard, rt, Conn(s.read_timeout_ms), Request(),
                  Keeper(Cint(listen_fd), keep_idle_ms, rt), Arrivals(park_capacity()), ByteBuf(256),
                  ResponseIO(send_timeout_ms=s.read_timeout_ms))
end

"""How many connections may be parked: half the descriptor limit, within 16…MAX_PARKED."""
function park_capacity()::Int
    lim = Ref((UInt64(0), UInt64(0)))
    ccall(:getrlimit, Cint, (Cint, Ptr{NTuple{2,UInt64}}), RLIMIT_NOFILE, lim) == 0 || return 64
    return clamp(Int(min(lim[][1], UInt64(MAX_PARKED) * 2)) ÷ 2, 16, MAX_PARKED)
end

# ------------------------------------------------------------ new connections

"""
    serve_connection!(w, fd; accepted=time_ns())

Serve connection `fd`, accepted at `accepted`: read its request head, then
its requests (`Requests.serve!`), unless it is parked (see the module docs).
Closes `fd` unless it is parked. Never throws.
"""
function serve_connection!(w::Worker, fd::Cint; accepted::UInt64=time_ns())
    serve_new!(w, fd, accepted)
    return nothing
end

function serve_new!(w::Worker, fd::Cint, accepted::UInt64)::Outcome
    c = Connection.reset!(w.conn, fd)
    head = read_head!(w, c, accepted)
    head == HEAD_READY && return serve_read!(w, accepted)
    head == HEAD_PARKED || Posix.closefd(fd)
    c.fd = Cint(-1)
    return ACCEPTED
end

"""The connection in `w.conn` has its head (or is read as it comes): serve it."""
function serve_read!(w::Worker, accepted::UInt64)::Outcome
    Requests.serve!(w, accepted)
    return w.rt.exit_code >= 0 ? PAGE_EXIT : ACCEPTED
end

"""Read a new connection until its request head is complete, it is parked,
it misses a deadline or it closes."""
function read_head!(w::Worker, c::Conn, accepted::UInt64)::Head
    last_read = accepted
    while true
        FastCGI.head_complete(c.buf, c.head, c.tail) && return HEAD_READY
        c.tail == length(c.buf) && return HEAD_READY     # a head this large is read as it comes
        n = Connection.recv_some!(c)
        if n > 0
            last_read = time_ns()
            continue
        end
        # End of file or an error: nothing sent is nothing to answer; a cut
        # record is the request reader's to report.
        n == -Int(Posix.EAGAIN) || return buffered(c) == 0 ? HEAD_GONE : HEAD_READY
        h = wait_head(w, c, accepted, last_read)
        h == HEAD_READY && continue
        h == HEAD_PARKED && park!(w, c, accepted, last_read)
        h == HEAD_EXPIRED && log_missed(w.settings, missed(w.settings, buffered(c) > 0, accepted,
                                                          time_ns()), 1)
        return h
    end
end

"""The end of a new connection's wait for its head."""
function head_deadline(s::Settings, accepted::UInt64, last_read::UInt64, any::Bool)::UInt64
    head = accepted + ns(s.header_timeout_ms)
    any || return min(head, accepted + ns(s.first_byte_timeout_ms))
    return min(head, last_read + ns(s.read_timeout_ms))
end

"""
    wait_head(w, c, accepted, last_read) -> HEAD_READY (input), HEAD_PARKED or HEAD_EXPIRED

Wait for more of a new connection's head, watching the listener too: when
another connection waits there (and PARK_GRACE_MS have passed for other
workers to take it), or others are parked already, this one is set aside.
Not when the worker is stopping (it accepts nothing more), has no listener
(the warm-up) or the head is large.
"""
function wait_head(w::Worker, c::Conn, accepted::UInt64, last_read::UInt64)::Head
    s, lfd = w.settings, w.kept.listen_fd
    limit = head_deadline(s, accepted, last_read, buffered(c) > 0)
    parkable = lfd >= 0 && buffered(c) <= PARK_MAX_BYTES
    while true
        left = ms_until(limit, time_ns())
        left == 0 && return HEAD_EXPIRED
        listening = parkable && !Control.stopping()
        listening && !isempty(w.arrivals.parked) && return HEAD_PARKED
        rc, rconn, rlisten, rctl = Waiting.idle_poll(w.rt, c.fd, listening ? lfd : Cint(-1), left)
        rc == 0 && return HEAD_EXPIRED
        rc < 0 && return HEAD_READY               # let recv(2) report the error
        rctl != 0 && Control.on_readable!()
        rconn != 0 && return HEAD_READY
        (rlisten == 0 || Control.stopping()) && continue
        Waiting.grace(c.fd, PARK_GRACE_MS) && return HEAD_READY
        (Control.stopping() || !Waiting.has_input(lfd)) && continue   # a free worker took it
        return HEAD_PARKED
    end
end

"""Which deadline a new connection's head missed."""
@enum Missed MISSED_FIRST_BYTE MISSED_HEADER MISSED_SILENCE

function missed(s::Settings, any::Bool, accepted::UInt64, now::UInt64)::Missed
    any || return MISSED_FIRST_BYTE
    return now >= accepted + ns(s.header_timeout_ms) ? MISSED_HEADER : MISSED_SILENCE
end

"""One log entry for `n` connections closed for missing `m`."""
function log_missed(s::Settings, m::Missed, n::Int)
    what = n == 1 ? "connection" : "$n connections"
    why = m == MISSED_FIRST_BYTE ?
        "nothing received within first_byte_timeout ($(s.first_byte_timeout_ms) ms) of the accept" :
        m == MISSED_HEADER ?
        "the request's params were not complete within header_timeout ($(s.header_timeout_ms) ms) of the accept" :
        "silent for $(s.read_timeout_ms) ms (read_timeout) in the middle of a request"
    Log.info("closing FastCGI $what: $why")
    return nothing
end

# ------------------------------------------------------------ parked connections

"""Set the connection in `c` aside with what it sent; the oldest parked
one gives way when there are `cap` already."""
function park!(w::Worker, c::Conn, accepted::UInt64, last_read::UInt64)
    a = w.arrivals
    if length(a.parked) >= a.cap
        Posix.closefd(popfirst!(a.parked).fd)
        Log.info("closing FastCGI connection: $(a.cap) connections are waiting for their " *
                 "request head; the oldest gives way")
    end
    push!(a.parked, Parked(c.fd, accepted, last_read, Connection.unconsumed(c)))
    publish_parked(w)
    return nothing
end

"""Say on the scoreboard how many connections are parked (not while warming up)."""
publish_parked(w::Worker) = (w.scoreboard && Scoreboard.parked!(length(w.arrivals.parked)); nothing)

function parked_deadline(w::Worker, p::Parked)::UInt64
    limit = head_deadline(w.settings, p.accepted, p.last_read, !isempty(p.bytes))
    stop_at = w.arrivals.stop_at
    return stop_at == 0 ? limit : min(limit, stop_at + ns(STOP_LINGER_MS))
end

"""
    wait_parked!(w, timeout_ms; idle=true) -> Outcome

Wait for a connection on the listener (not when stopping), the control
channel or more of a parked connection's head; serve the first parked one
whose head is complete, close those that missed their deadline. A stopping
worker gives parked connections STOP_LINGER_MS at most. With `idle`, a
wait that saw nothing runs the idle work (not between accepts, where the
timeout is 0).
"""
function wait_parked!(w::Worker, timeout_ms::Int; idle::Bool=true)::Outcome
    a = w.arrivals
    # One whose head came in whole at an earlier poll (not served then:
    # another was) has no more input to wake the poll: served first.
    done = findfirst(head_ready, a.parked)
    done === nothing || return serve_parked!(w, popat!(a.parked, done))
    stopping = Control.stopping()
    stopping && a.stop_at == 0 && (a.stop_at = time_ns())
    set, now = a.set, time_ns()
    Waiting.set_fd!(set, 1, stopping ? Cint(-1) : w.kept.listen_fd)
    Waiting.set_fd!(set, 2, Control.pollfd())
    limit = now + ns(timeout_ms)
    for (i, p) in enumerate(a.parked)
        Waiting.set_fd!(set, i + 2, p.fd)
        limit = min(limit, parked_deadline(w, p))
    end
    rc = Waiting.idle_poll_set!(w.rt, set, length(a.parked) + 2, ms_until(limit, now))
    @inbounds set[2].revents != 0 && Control.on_readable!()
    # Every readable one is read, so that none is closed below as silent
    # with its bytes unread; the first complete one is served.
    ready = 0
    for i in 1:(rc > 0 ? length(a.parked) : 0)
        @inbounds set[i + 2].revents == 0 && continue
        p = a.parked[i]
        h = top_up!(w, p)
        h == HEAD_GONE && (Posix.closefd(p.fd); p.fd = Cint(-1))
        h == HEAD_READY && ready == 0 && (ready = i)
    end
    p = ready > 0 ? a.parked[ready] : nothing
    p === nothing || deleteat!(a.parked, ready)
    filter!(q -> q.fd >= 0, a.parked)
    expire_parked!(w)
    publish_parked(w)
    p === nothing || return serve_parked!(w, p)
    idle && rc == 0 && (Pages.idle!(w.rt); yield())
    return ACCEPTED
end

"""Serve `p`, taken from the parked ones (its head is complete)."""
function serve_parked!(w::Worker, p::Parked)::Outcome
    publish_parked(w)                          # it is no longer waiting: it is served
    Connection.reset!(w.conn, p.fd, p.bytes)
    return serve_read!(w, p.accepted)
end

"""A parked connection's head is all there (or large): it is served next."""
head_ready(p::Parked)::Bool =
    FastCGI.head_complete(p.bytes, 1, length(p.bytes)) || length(p.bytes) > PARK_MAX_BYTES

"""Read what a parked connection sent: HEAD_READY when its head is complete
(or large, or cut off by the peer), HEAD_PARKED while not, HEAD_GONE when it
closed without sending anything."""
function top_up!(w::Worker, p::Parked)::Head
    c = Connection.reset!(w.conn, p.fd)       # its buffer as scratch
    n = Connection.recv_some!(c, PARK_MAX_BYTES)
    c.fd = Cint(-1)
    n == -Int(Posix.EAGAIN) && return HEAD_PARKED
    n <= 0 && return isempty(p.bytes) ? HEAD_GONE : HEAD_READY
    append!(p.bytes, view(c.buf, 1:n))
    p.last_read = time_ns()
    (FastCGI.head_complete(p.bytes, 1, length(p.bytes)) || length(p.bytes) > PARK_MAX_BYTES) &&
        return HEAD_READY
    return HEAD_PARKED
end

"""Close the parked connections past their deadline (one log entry per
deadline missed)."""
function expire_parked!(w::Worker)
    a, s, now = w.arrivals, w.settings, time_ns()
    counts = (0, 0, 0)
    for p in a.parked
        (now < parked_deadline(w, p) || head_ready(p)) && continue
        Posix.closefd(p.fd)
        p.fd = Cint(-1)
        m = Int(missed(s, !isempty(p.bytes), p.accepted, now)) + 1
        counts = ntuple(i -> counts[i] + (i == m), 3)
    end
    sum(counts) == 0 && return nothing
    filter!(q -> q.fd >= 0, a.parked)
    for m in instances(Missed)
        n = counts[Int(m) + 1]
        n > 0 && log_missed(s, m, n)
    end
    return nothing
end

# ------------------------------------------------------------------ the loop

"""
    accept_loop!(w) -> reason

Accept and serve connections on the listening socket until told to stop or
a page ends the worker (`exit()`, or background work it left). Returns the
reason (for `EXITING`); a fatal accept error returns `nothing`. No exception
escapes: a bug in one iteration is logged and the loop goes on.
"""
function accept_loop!(w::Worker)::Union{String,Nothing}
    while true
        # A connection accepted by the kept-connection path is always served;
        # parked ones get STOP_LINGER_MS.
        Control.stopping() && w.kept.handover < 0 && isempty(w.arrivals.parked) &&
            return Control.CHAN.reason
        outcome = try
            accept_once!(w)
        catch e
            Log.error("internal error in the accept loop: " * sprint(showerror, e, catch_backtrace()))
            Waiting.poll3(Cint(-1), Cint(-1), Cint(-1), 100)   # never spin
            ACCEPTED
        end
        outcome == PAGE_EXIT && return exit_reason(w.rt)
        outcome == FATAL && return nothing
    end
end

"""Why a page ends the worker: `rt.retiring` says it when the page left
background work behind (see `Pages`), else the page called `exit()`."""
exit_reason(rt::Pages.Runtime) = isempty(rt.retiring) ? "page called exit()" : rt.retiring

"""Accept one connection (or wait for one, or for a parked one) and serve it."""
function accept_once!(w::Worker)::Outcome
    k = w.kept
    if k.handover >= 0
        fd = k.handover
        k.handover = Cint(-1)
        return serve_new!(w, fd, k.handover_at)
    end
    Control.stopping() && return wait_for_connection!(w, ACCEPT_POLL_MS)   # parked ones only
    parked = length(w.arrivals.parked)
    if parked > 0 && Waiting.has_input(k.listen_fd)
        # Parked connections were accepted first: one whose head has come
        # is served before the listener, which never empties under steady
        # load, and those past their deadline are closed. (With the
        # listener empty the wait below watches them.)
        outcome = wait_parked!(w, 0; idle=false)
        length(w.arrivals.parked) < parked && return outcome
    end
    fd = Posix.accept(k.listen_fd)
    fd >= 0 && return serve_new!(w, fd, time_ns())
    e = -fd
    e == Posix.EAGAIN && return wait_for_connection!(w, ACCEPT_POLL_MS)
    if e in (Posix.EMFILE, Posix.ENFILE, Posix.ENOBUFS, Posix.ENOMEM)
        parked = w.arrivals.parked
        if !isempty(parked) && e in (Posix.EMFILE, Posix.ENFILE)
            Posix.closefd(popfirst!(parked).fd)      # a descriptor for the waiting one
            publish_parked(w)
            Log.info("closing FastCGI connection: no descriptor left (" * Posix.strerror(e) *
                     "); the oldest parked connection gives way")
            return ACCEPTED
        end
        Log.warn("accept failed: $(Posix.strerror(e)); retrying in 1 s")
        # Not on the listener: it stays readable.
        rctl = Waiting.idle_poll(w.rt, Cint(-1), Cint(-1), 1000)[4]
        rctl != 0 && Control.on_readable!()
    elseif !(e in (Posix.EINTR, Posix.ECONNABORTED, Posix.EPROTO))
        Log.error("accept on the listening socket (fd 0) failed: $(Posix.strerror(e))")
        return FATAL
    end
    return ACCEPTED
end

"""Idle: wait for a connection, a control message or a parked connection's
head; on timeout let tasks started by pages run (with the worker's own
environment back in place)."""
function wait_for_connection!(w::Worker, timeout_ms::Int)::Outcome
    isempty(w.arrivals.parked) || return wait_parked!(w, timeout_ms)
    rc, _, _, rctl = Waiting.idle_poll(w.rt, w.kept.listen_fd, Cint(-1), timeout_ms)
    rctl != 0 && Control.on_readable!()
    if rc == 0
        Pages.idle!(w.rt)
        yield()
    end
    return ACCEPTED
end

end # module Server
