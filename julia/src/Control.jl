"""
    Control

The control channel to the master (fd `JULIA_FCGI_CONTROL_FD`, a unix
socketpair end): `STARTING`, `READY`, `ACCESS` and `EXITING` go out, `STOP` and `ABORT`
come in, and end of file means the master is gone. Incoming bytes are read only when `poll` says
the fd is readable (the accept loop and the connection reader wait on it
together with their own fd), so nothing here blocks.
"""
module Control

# Run at load time or on rare paths: compile fast rather than optimize
# (about a second less CPU before READY).
Base.Experimental.@optlevel 1

using ..Posix
using ..Log

mutable struct ControlChannel
    fd::Cint            # -1: standalone, no master
    stopping::Bool      # STOP received, or the master is gone
    aborted::Bool       # ABORT received: the request in flight must not be answered
    reason::String      # why we are stopping (for EXITING)
    inbuf::Vector{UInt8}
    inlen::Int
end

const CHAN = ControlChannel(Cint(-1), false, false, "", Vector{UInt8}(undef, 4096), 0)

"""Use `fd` as the control channel (and keep it out of processes pages spawn)."""
function init!(fd::Integer)
    CHAN.fd = Cint(fd)
    fd >= 0 && Posix.set_cloexec(Cint(fd))
    return nothing
end

"""Is there a master to talk to?"""
active() = CHAN.fd >= 0

"""Has the worker been told to stop (or lost its master)?"""
stopping() = CHAN.stopping

"""The fd to include in `poll`: -1 (ignored) once stopping or standalone, so
a closed channel does not make every poll return at once."""
pollfd()::Cint = CHAN.stopping ? Cint(-1) : CHAN.fd

"""Send one message line (fields joined by TAB, each escaped)."""
function send(fields::AbstractString...)
    active() || return nothing
    Log.send_line(join(map(Log.escape_field, fields), '\t'))
    return nothing
end

"""Tell the master what a worker still starting is busy with (loading and
precompiling packages can take minutes): it shows in `systemctl status`."""
starting(what::AbstractString) = active() && send("STARTING", what)

"""Tell the master the worker is warm and accepting."""
ready() = active() ? send("READY") : Log.info("worker ready (pid $(getpid()))")

"""Tell the master we exit on purpose (so it does not count a crash)."""
exiting(reason::AbstractString) =
    active() ? send("EXITING", reason) : Log.info("worker exiting: $reason")

function stop!(reason::String)
    CHAN.stopping || (CHAN.stopping = true; CHAN.reason = reason)
    return nothing
end

"""
    on_readable!()

Read what the master sent (call when `poll` reported the control fd) and act
on complete lines: `STOP` → stop after the current request. End of file or a
read error → the master is gone: stop too.
"""
function on_readable!()
    CHAN.fd < 0 && return nothing
    buf = CHAN.inbuf
    CHAN.inlen == length(buf) && (CHAN.inlen = 0)     # an absurd line: drop it
    n = Posix.read_some(CHAN.fd, buf, CHAN.inlen, length(buf) - CHAN.inlen)
    if n == -Int(Posix.EAGAIN)
        return nothing
    elseif n <= 0
        n < 0 && Log.warn("reading the control channel failed: " * Posix.strerror(-n))
        stop!("master gone")
        return nothing
    end
    CHAN.inlen += n
    consume_lines!()
    return nothing
end

"""
    abort_pending!() -> Bool

Did the master say `ABORT` (it is about to SIGTERM this worker because its
request overran `request_terminate_timeout`)? Reads what is pending without
waiting. Used on the way out, so an overrun request is never answered as if
it had succeeded.
"""
function abort_pending!()::Bool
    CHAN.aborted && return true
    CHAN.fd < 0 && return false
    rc, revents, _ = Posix.poll2(CHAN.fd, Posix.POLLIN, Cint(-1), Cshort(0), 0)
    rc > 0 && (revents & Posix.POLLIN) != 0 && on_readable!()
    return CHAN.aborted
end

function consume_lines!()
    buf = CHAN.inbuf
    start = 1
    while (nl = findnext(isequal(UInt8('\n')), buf, start)) !== nothing && nl <= CHAN.inlen
        line = String(buf[start:nl-1])
        start = nl + 1
        cmd = first(split(rstrip(line, '\r'), '\t'))
        if cmd == "STOP"
            stop!("stop")
        elseif cmd == "ABORT"
            CHAN.aborted = true
        elseif !isempty(cmd)
            Log.debug("ignoring unknown control message $(repr(cmd))")
        end
    end
    rest = CHAN.inlen - start + 1
    rest > 0 && copyto!(buf, 1, buf, start, rest)
    CHAN.inlen = rest
    return nothing
end

end # module Control
