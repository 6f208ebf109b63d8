"""
    Waiting

How the worker waits: `poll(2)` on a few descriptors, always with the
control channel, and what a worker with nothing to do does meanwhile. It
gets its own environment back and sends the access log entries it holds
(see `Pages.idle!`, `Access`), but only after IDLE_RESTORE_MS of silence: a
client sending requests back to back would otherwise pay for a full
environment swap twice per request, and for a `send(2)` per entry.
"""
module Waiting

using ..Posix
using ..Control
using ..Access
using ..Pages

const IDLE_RESTORE_MS = 2          # idle this long → restore the worker's ENV

const POLLSET3 = Vector{Posix.PollFD}(undef, 3)

"""
    poll_set!(set, n, timeout_ms) -> rc

`poll(2)` for POLLIN on the first `n` entries of `set` (whose `fd` fields
are set; a negative one is ignored), EINTR retried.
"""
function poll_set!(set::Vector{Posix.PollFD}, n::Int, timeout_ms::Int)::Int
    @assert n <= length(set)
    while true
        rc = ccall(:poll, Cint, (Ptr{Posix.PollFD}, Culong, Cint), set, n, timeout_ms)
        rc < 0 && Posix.errno() == Posix.EINTR && continue
        return Int(rc)
    end
end

"""Entry `i` of a poll set, waiting for input on `fd`."""
@inline set_fd!(set::Vector{Posix.PollFD}, i::Int, fd::Cint) =
    (@inbounds set[i] = Posix.PollFD(fd, Posix.POLLIN, Cshort(0)); nothing)

"""
    poll3(fd1, fd2, fd3, timeout_ms) -> (rc, revents1, revents2, revents3)

Input on any of three fds (a negative one is ignored).
"""
function poll3(fd1::Cint, fd2::Cint, fd3::Cint, timeout_ms::Int)
    set = POLLSET3
    set_fd!(set, 1, fd1)
    set_fd!(set, 2, fd2)
    set_fd!(set, 3, fd3)
    rc = poll_set!(set, 3, timeout_ms)
    return (rc, @inbounds(set[1].revents), @inbounds(set[2].revents),
            @inbounds(set[3].revents))
end

"""Is `fd` readable right now (data, end of file or an error)?"""
has_input(fd::Cint) = poll3(fd, Cint(-1), Cint(-1), 0)[1] > 0

"""Does the worker hold back idle work (its ENV, access log entries)?"""
pending(rt::Pages.Runtime) = !Pages.isidle(rt) || Access.pending()

"""Do the idle work now."""
function settle!(rt::Pages.Runtime)
    Pages.idle!(rt)
    Access.flush!()
    return nothing
end

"""
    idle_poll(rt, fd1, fd2, timeout_ms) -> (rc, revents1, revents2, revents_control)

Wait for input on `fd1`, `fd2` (either may be -1) or the control channel,
doing the idle work after IDLE_RESTORE_MS of silence.
"""
function idle_poll(rt::Pages.Runtime, fd1::Cint, fd2::Cint, timeout_ms::Int)
    if pending(rt)
        r = poll3(fd1, fd2, Control.pollfd(), min(IDLE_RESTORE_MS, timeout_ms))
        (r[1] != 0 || timeout_ms <= IDLE_RESTORE_MS) && return r
        settle!(rt)
        timeout_ms -= IDLE_RESTORE_MS
    end
    return poll3(fd1, fd2, Control.pollfd(), timeout_ms)
end

"""[`idle_poll`](@ref) on the first `n` entries of `set`."""
function idle_poll_set!(rt::Pages.Runtime, set::Vector{Posix.PollFD}, n::Int, timeout_ms::Int)::Int
    if pending(rt)
        rc = poll_set!(set, n, min(IDLE_RESTORE_MS, timeout_ms))
        (rc != 0 || timeout_ms <= IDLE_RESTORE_MS) && return rc
        settle!(rt)
        timeout_ms -= IDLE_RESTORE_MS
    end
    return poll_set!(set, n, timeout_ms)
end

"""Wait up to `ms` for input on `fd` alone (the control channel is still
read): true when some came."""
function grace(fd::Cint, ms::Int)::Bool
    _, rfd, _, rctl = poll3(fd, Cint(-1), Control.pollfd(), ms)
    rctl != 0 && Control.on_readable!()
    return rfd != 0
end

"""Whole milliseconds from `now` to `deadline` (rounded up; 0 when past)."""
function ms_until(deadline::UInt64, now::UInt64)::Int
    deadline <= now && return 0
    return Int(min((deadline - now + 999_999) ÷ 1_000_000, UInt64(typemax(Cint))))
end

"""Nanoseconds in `ms` milliseconds."""
ns(ms::Int) = UInt64(ms) * UInt64(1_000_000)

ms_since(t0::UInt64) = Int((time_ns() - t0) ÷ 1_000_000)

end # module Waiting
