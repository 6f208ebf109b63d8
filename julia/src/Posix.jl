"""
    Posix

Thin `ccall` wrappers over the few system calls the worker's data path needs:
`accept4`, `poll`, `read`, `send`/`write`, `close`, `fcntl`, `socketpair`.

Why raw calls instead of `Sockets`: the worker shares a listening socket with
other processes and must decide *itself* when to accept (never after a STOP),
must wait on the connection and the control channel at once, and must never
have bytes stuck in a libuv buffer. Every function here reports failure by
return value (never by throwing), so the request loop stays exception-free
and type-stable.
"""
module Posix

# Linux x86_64/aarch64 values (the worker only targets Linux).
const EINTR        = Cint(4)
const EAGAIN       = Cint(11)
const ENOMEM       = Cint(12)
const ENFILE       = Cint(23)
const EMFILE       = Cint(24)
const EPIPE        = Cint(32)
const EPROTO       = Cint(71)
const ENOTSOCK     = Cint(88)
const ECONNABORTED = Cint(103)
const ECONNRESET   = Cint(104)
const ENOBUFS      = Cint(105)

const F_GETFD    = Cint(1)
const F_SETFD    = Cint(2)
const F_GETFL    = Cint(3)
const F_SETFL    = Cint(4)
const FD_CLOEXEC = Cint(1)
const F_DUPFD_CLOEXEC = Cint(1030)
const O_RDONLY   = Cint(0)
const O_NONBLOCK = Cint(0o4000)

const AF_UNIX      = Cint(1)
const SOCK_STREAM  = Cint(1)
const SOCK_CLOEXEC = Cint(0o2000000)
const MSG_NOSIGNAL = Cint(0x4000)
const SOL_SOCKET   = Cint(1)
const SO_SNDTIMEO  = Cint(21)
const SHUT_WR      = Cint(1)

const POLLIN   = Cshort(0x001)
const POLLOUT  = Cshort(0x004)
const POLLERR  = Cshort(0x008)
const POLLHUP  = Cshort(0x010)
const POLLNVAL = Cshort(0x020)

const SIGPIPE = Cint(13)
const SIG_IGN = Ptr{Cvoid}(1)

"""`struct pollfd` from `<poll.h>`."""
struct PollFD
    fd::Cint
    events::Cshort
    revents::Cshort
end

"""`struct timeval` for `SO_SNDTIMEO`."""
struct TimeVal
    sec::Clong
    usec::Clong
end

# One reusable poll set: the worker only ever waits on (something, control fd).
const POLLSET = Vector{PollFD}(undef, 2)

errno() = Libc.errno()

"""
    poll2(fd1, ev1, fd2, ev2, timeout_ms) -> (rc, revents1, revents2)

Wait for `ev1` on `fd1` and `ev2` on `fd2` (a negative fd is ignored, as
`poll(2)` does). `rc` is 0 on timeout, negative on error. EINTR is retried.
"""
function poll2(fd1::Cint, ev1::Cshort, fd2::Cint, ev2::Cshort, timeout_ms::Int)
    set = POLLSET
    while true
        @inbounds set[1] = PollFD(fd1, ev1, Cshort(0))
        @inbounds set[2] = PollFD(fd2, ev2, Cshort(0))
        rc = ccall(:poll, Cint, (Ptr{PollFD}, Culong, Cint), set, 2, timeout_ms)
        if rc < 0 && errno() == EINTR
            continue
        end
        return (Int(rc), @inbounds(set[1].revents), @inbounds(set[2].revents))
    end
end

"""
    accept(listen_fd) -> fd or -errno

`accept4` with `SOCK_CLOEXEC`: pages may spawn processes, which must not
inherit client connections. The new fd is blocking.
"""
function accept(listen_fd::Cint)::Cint
    fd = ccall(:accept4, Cint, (Cint, Ptr{Cvoid}, Ptr{Cvoid}, Cint),
               listen_fd, C_NULL, C_NULL, SOCK_CLOEXEC)
    return fd >= 0 ? fd : -errno()
end

"""
    read_some(fd, buf, offset, n) -> bytes read, 0 at EOF, -errno on error

Reads at most `n` bytes into `buf` starting at index `offset + 1`.
"""
function read_some(fd::Cint, buf::Vector{UInt8}, offset::Int, n::Int)::Int
    @assert offset + n <= length(buf)
    while true
        r = GC.@preserve buf ccall(:read, Cssize_t, (Cint, Ptr{UInt8}, Csize_t),
                                   fd, pointer(buf, offset + 1), n)
        r >= 0 && return Int(r)
        e = errno()
        e == EINTR || return -Int(e)
    end
end

"""
    write_all(fd, ptr, n; socket=true, timeout_ms=10_000) -> 0 or errno

Writes all `n` bytes, retrying on EINTR and short writes. Sockets use
`send(MSG_NOSIGNAL)` so a vanished peer is an EPIPE return, never a signal.
EAGAIN (a non-blocking fd, or `SO_SNDTIMEO` expiring) waits for POLLOUT up to
`timeout_ms`, then gives up with EAGAIN.
"""
function write_all(fd::Cint, p::Ptr{UInt8}, n::Int; socket::Bool=true,
                   timeout_ms::Int=10_000)::Cint
    off = 0
    while off < n
        r = if socket
            ccall(:send, Cssize_t, (Cint, Ptr{UInt8}, Csize_t, Cint),
                  fd, p + off, n - off, MSG_NOSIGNAL)
        else
            ccall(:write, Cssize_t, (Cint, Ptr{UInt8}, Csize_t), fd, p + off, n - off)
        end
        if r >= 0
            off += Int(r)
            continue
        end
        e = errno()
        if e == EINTR
            continue
        elseif e == ENOTSOCK && socket
            socket = false          # stderr or a pipe: plain write(2)
        elseif e == EAGAIN
            rc, _, _ = poll2(fd, POLLOUT, Cint(-1), Cshort(0), timeout_ms)
            rc > 0 || return EAGAIN
        else
            return e
        end
    end
    return Cint(0)
end

function write_all(fd::Cint, buf::Vector{UInt8}, n::Int=length(buf);
                   socket::Bool=true, timeout_ms::Int=10_000)::Cint
    GC.@preserve buf write_all(fd, pointer(buf), n; socket=socket, timeout_ms=timeout_ms)
end

"""Close `fd`, ignoring errors (there is nothing useful to do about them)."""
closefd(fd::Cint) = (ccall(:close, Cint, (Cint,), fd); nothing)

"""Half-close: tell the peer no more bytes will come."""
shutdown_write(fd::Cint) = (ccall(:shutdown, Cint, (Cint, Cint), fd, SHUT_WR); nothing)

"""Set or clear `O_NONBLOCK`; returns `false` on failure."""
function set_nonblocking(fd::Cint, on::Bool)::Bool
    fl = ccall(:fcntl, Cint, (Cint, Cint), fd, F_GETFL)
    fl < 0 && return false
    nfl = on ? (fl | O_NONBLOCK) : (fl & ~O_NONBLOCK)
    return ccall(:fcntl, Cint, (Cint, Cint, Cint), fd, F_SETFL, nfl) == 0
end

"""Mark `fd` close-on-exec so processes a page spawns do not inherit it."""
function set_cloexec(fd::Cint)::Bool
    fl = ccall(:fcntl, Cint, (Cint, Cint), fd, F_GETFD)
    fl < 0 && return false
    return ccall(:fcntl, Cint, (Cint, Cint, Cint), fd, F_SETFD, fl | FD_CLOEXEC) == 0
end

"""
    move_listener(fd) -> new fd, or -errno

Move the listening socket from `fd` (0) to a close-on-exec descriptor and put
/dev/null on `fd`: processes a page starts with `run` inherit fds 0–2, and
must not get the listening socket as their stdin (nor keep it open).
"""
function move_listener(fd::Cint)::Cint
    new = ccall(:fcntl, Cint, (Cint, Cint, Cint), fd, F_DUPFD_CLOEXEC, 3)
    new < 0 && return -errno()
    null = ccall(:open, Cint, (Cstring, Cint), "/dev/null", O_RDONLY)
    if null >= 0
        ccall(:dup2, Cint, (Cint, Cint), null, fd)
        closefd(null)
    end
    return new
end

"""Give blocking sends on `fd` a deadline, so a client that never reads
cannot hold the worker forever."""
function set_send_timeout(fd::Cint, ms::Int)::Bool
    tv = Ref(TimeVal(Clong(ms ÷ 1000), Clong((ms % 1000) * 1000)))
    return ccall(:setsockopt, Cint, (Cint, Cint, Cint, Ptr{TimeVal}, Cuint),
                 fd, SOL_SOCKET, SO_SNDTIMEO, tv, sizeof(TimeVal)) == 0
end

"""
    socketpair() -> (fd1, fd2) or (-errno, -1)

A connected unix stream pair (close-on-exec), used to warm up the worker
through its real connection code.
"""
function socketpair()
    fds = Cint[-1, -1]
    rc = ccall(:socketpair, Cint, (Cint, Cint, Cint, Ptr{Cint}),
               AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, fds)
    rc == 0 || return (-errno(), Cint(-1))
    return (fds[1], fds[2])
end

"""Ignore SIGPIPE (Julia does already; make sure, as a write to a vanished
peer must never kill the worker)."""
ignore_sigpipe() = (ccall(:signal, Ptr{Cvoid}, (Cint, Ptr{Cvoid}), SIGPIPE, SIG_IGN); nothing)

const CWD_BUF = Vector{UInt8}(undef, 4096)

"""Is the working directory `dir`? (getcwd(2) into a reused buffer: no
allocation, unlike `pwd()`.)"""
function cwd_is(dir::String)::Bool
    p = ccall(:getcwd, Ptr{UInt8}, (Ptr{UInt8}, Csize_t), CWD_BUF, length(CWD_BUF))
    p == C_NULL && return false
    n = sizeof(dir)
    n < length(CWD_BUF) && @inbounds(CWD_BUF[n+1]) == 0x00 || return false
    return GC.@preserve dir ccall(:memcmp, Cint, (Ptr{UInt8}, Ptr{UInt8}, Csize_t),
                                  CWD_BUF, pointer(dir), n) == 0
end

"""Human-readable text for an errno value."""
strerror(e::Integer) = Libc.strerror(Int32(e))

end # module Posix
