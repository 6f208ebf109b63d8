"""
    Posix

Thin `ccall` wrappers over the few system calls the worker's data path needs:
`accept4`, `poll`, `read`, `send`/`write`, `close`, `fcntl`, `socketpair`, and
for a page's standard streams `memfd_create`, `dup`/`dup2`, `lseek`,
`pread`/`pwrite`, `ftruncate`, `waitid`, `getrusage`.

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
const O_WRONLY   = Cint(1)
const O_NONBLOCK = Cint(0o4000)
const O_APPEND   = Cint(0o2000)
const O_CLOEXEC  = Cint(0o2000000)

const SEEK_SET = Cint(0)
const SEEK_END = Cint(2)
const MFD_CLOEXEC = Cuint(1)

const AF_UNIX      = Cint(1)
const SOCK_STREAM  = Cint(1)
const SOCK_CLOEXEC = Cint(0o2000000)
const MSG_NOSIGNAL = Cint(0x4000)
const MSG_DONTWAIT = Cint(0x40)
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
    write_all(fd, ptr, n; socket=true, nonblocking=false, timeout_ms=10_000) -> 0 or errno

Writes all `n` bytes, retrying on EINTR and short writes. Sockets use
`send(MSG_NOSIGNAL)` so a vanished peer is an EPIPE return, never a signal.
EAGAIN (a non-blocking fd, or every send with `nonblocking`, which adds
`MSG_DONTWAIT`) waits for POLLOUT up to `timeout_ms`, then gives up with
EAGAIN: with `nonblocking`, `timeout_ms` is all a peer that reads nothing
holds the caller, with no socket option to set first.
"""
function write_all(fd::Cint, p::Ptr{UInt8}, n::Int; socket::Bool=true,
                   nonblocking::Bool=false, timeout_ms::Int=10_000)::Cint
    off = 0
    flags = nonblocking ? MSG_NOSIGNAL | MSG_DONTWAIT : MSG_NOSIGNAL
    while off < n
        r = if socket
            ccall(:send, Cssize_t, (Cint, Ptr{UInt8}, Csize_t, Cint),
                  fd, p + off, n - off, flags)
        else
            ccall(:write, Cssize_t, (Cint, Ptr{UInt8}, Csize_t), fd, p + off, n - off)
        end
        if r >= 0
            off += Int(r)
            continue
        end
        next = after_failed_send(fd, errno(), socket, timeout_ms)
        next == PLAIN ? (socket = false) :      # stderr or a pipe: plain write(2)
            next == RETRY || return next
    end
    return Cint(0)
end

const RETRY = Cint(0)
const PLAIN = Cint(-1)

"""
What a send that failed with `e` does next: `RETRY` (EINTR, or EAGAIN and
the fd became writable within `timeout_ms`), `PLAIN` (not a socket: go on
with write(2)/writev(2)), else the errno to give up with (EAGAIN when the
peer read nothing for `timeout_ms`).
"""
function after_failed_send(fd::Cint, e::Cint, socket::Bool, timeout_ms::Int)::Cint
    e == EINTR && return RETRY
    e == ENOTSOCK && socket && return PLAIN
    if e == EAGAIN
        rc, _, _ = poll2(fd, POLLOUT, Cint(-1), Cshort(0), timeout_ms)
        return rc > 0 ? RETRY : EAGAIN
    end
    return e
end

function write_all(fd::Cint, buf::Vector{UInt8}, n::Int=length(buf);
                   socket::Bool=true, nonblocking::Bool=false, timeout_ms::Int=10_000)::Cint
    GC.@preserve buf write_all(fd, pointer(buf), n; socket=socket, nonblocking=nonblocking,
                               timeout_ms=timeout_ms)
end

"""`struct iovec`: one piece of a gathered write."""
struct IOVec
    base::Ptr{UInt8}
    len::Csize_t
end

IOVec(p::Ptr{UInt8}, n::Int) = IOVec(p, Csize_t(n))

"""`struct msghdr` (no address, no control data)."""
struct MsgHdr
    name::Ptr{Cvoid}
    namelen::Cuint
    iov::Ptr{IOVec}
    iovlen::Csize_t
    control::Ptr{Cvoid}
    controllen::Csize_t
    flags::Cint
end

"""At most this many iovecs per call (Linux's IOV_MAX is 1024)."""
const IOV_BATCH = 512

"""
    writev_all(fd, iov; nonblocking=false, timeout_ms=10_000) -> 0 or errno

[`write_all`](@ref) of the bytes the iovecs name, in order, as few system
calls as the kernel takes them in: `sendmsg(2)` (`writev(2)` when `fd` is not
a socket). A short write moves on within `iov`, which this changes.
"""
function writev_all(fd::Cint, iov::Vector{IOVec}; nonblocking::Bool=false,
                    timeout_ms::Int=10_000)::Cint
    flags = nonblocking ? MSG_NOSIGNAL | MSG_DONTWAIT : MSG_NOSIGNAL
    socket = true
    i = 1
    n = length(iov)
    while i <= n
        @inbounds iov[i].len == 0 && (i += 1; continue)
        cnt = min(n - i + 1, IOV_BATCH)
        r = GC.@preserve iov begin
            p = pointer(iov, i)
            if socket
                msg = Ref(MsgHdr(C_NULL, 0, p, cnt, C_NULL, 0, 0))
                ccall(:sendmsg, Cssize_t, (Cint, Ptr{MsgHdr}, Cint), fd, msg, flags)
            else
                ccall(:writev, Cssize_t, (Cint, Ptr{IOVec}, Cint), fd, p, cnt)
            end
        end
        if r >= 0
            left = Int(r)
            while left > 0                      # skip what was sent
                @inbounds v = iov[i]
                if left >= Int(v.len)
                    left -= Int(v.len)
                    i += 1
                else
                    @inbounds iov[i] = IOVec(v.base + left, v.len - Csize_t(left))
                    left = 0
                end
            end
            continue
        end
        next = after_failed_send(fd, errno(), socket, timeout_ms)
        next == PLAIN ? (socket = false) :      # a pipe or a file: plain writev(2)
            next == RETRY || return next
    end
    return Cint(0)
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

# ------------------------------------------------------------ page stdio

"""
    memfd(name) -> fd or -errno

An anonymous in-memory file (`memfd_create`, close-on-exec): what a page's
fd 1 and fd 0 are during a request (see `Stdio`). Its own descriptor is
opened `O_APPEND`-free; callers set flags with [`set_append`](@ref).
"""
function memfd(name::String)::Cint
    fd = ccall(:memfd_create, Cint, (Cstring, Cuint), name, MFD_CLOEXEC)
    return fd >= 0 ? fd : -errno()
end

"""Add `O_APPEND` to `fd`'s open file description (shared by its dups)."""
function set_append(fd::Cint)::Bool
    fl = ccall(:fcntl, Cint, (Cint, Cint), fd, F_GETFL)
    fl < 0 && return false
    return ccall(:fcntl, Cint, (Cint, Cint, Cint), fd, F_SETFL, fl | O_APPEND) == 0
end

"""`dup(2)` onto the lowest free fd ≥ 3, close-on-exec; -errno on failure."""
function dup_cloexec(fd::Cint)::Cint
    new = ccall(:fcntl, Cint, (Cint, Cint, Cint), fd, F_DUPFD_CLOEXEC, 3)
    return new >= 0 ? new : -errno()
end

"""`dup2(2)` (the copy is inheritable); `false` on failure."""
function dup2(from::Cint, to::Cint)::Bool
    while true
        r = ccall(:dup2, Cint, (Cint, Cint), from, to)
        r >= 0 && return true
        errno() == EINTR || return false
    end
end

"""Open `path` (e.g. `/dev/null`) close-on-exec; -errno on failure."""
function open_cloexec(path::String, flags::Cint)::Cint
    fd = ccall(:open, Cint, (Cstring, Cint), path, flags | O_CLOEXEC)
    return fd >= 0 ? fd : -errno()
end

"""The size of the file open on `fd` (`lseek(fd, 0, SEEK_END)`: one cheap
system call, no struct to fill), or -errno."""
function file_end(fd::Cint)::Int
    r = ccall(:lseek, Int64, (Cint, Int64, Cint), fd, 0, SEEK_END)
    return r >= 0 ? Int(r) : -Int(errno())
end

"""Set `fd`'s offset to `off`; `false` on failure."""
seek_to(fd::Cint, off::Integer)::Bool =
    ccall(:lseek, Int64, (Cint, Int64, Cint), fd, Int64(off), SEEK_SET) >= 0

"""`pread(2)` all of `n` bytes at `off` into `p`; bytes read (short only at
end of file), or -errno."""
function pread_all(fd::Cint, p::Ptr{UInt8}, n::Int, off::Int)::Int
    got = 0
    while got < n
        r = ccall(:pread, Cssize_t, (Cint, Ptr{UInt8}, Csize_t, Int64),
                  fd, p + got, n - got, off + got)
        if r > 0
            got += Int(r)
        elseif r == 0
            break
        elseif errno() != EINTR
            return -Int(errno())
        end
    end
    return got
end

"""`pwrite(2)` all of `n` bytes at `off`; 0 or errno."""
function pwrite_all(fd::Cint, p::Ptr{UInt8}, n::Int, off::Int)::Cint
    done = 0
    while done < n
        r = ccall(:pwrite, Cssize_t, (Cint, Ptr{UInt8}, Csize_t, Int64),
                  fd, p + done, n - done, off + done)
        if r >= 0
            done += Int(r)
        elseif errno() != EINTR
            return errno()
        end
    end
    return Cint(0)
end

"""`ftruncate(2)`; `false` on failure."""
truncate_to(fd::Cint, len::Integer)::Bool =
    ccall(:ftruncate, Cint, (Cint, Int64), fd, Int64(len)) == 0

const P_ALL   = Cint(0)
const WEXITED = Cint(4)
const WNOHANG = Cint(1)
const WNOWAIT = Cint(0x01000000)
const ECHILD  = Cint(10)
const RUSAGE_CHILDREN = Cint(-1)
# Reused out-parameters (no allocation per request): siginfo_t is 128
# bytes, struct rusage 144.
const SIGINFO = zeros(Int64, 16)
const RUSAGE = zeros(Int64, 18)

"""
    has_children() -> Bool

Does this process have a child, running or not yet reaped? (`waitid` with
`WNOWAIT`: looks without reaping, so libuv still gets every exit status.)
"""
function has_children()::Bool
    r = ccall(:waitid, Cint, (Cint, Cint, Ptr{Int64}, Cint),
              P_ALL, 0, SIGINFO, WEXITED | WNOHANG | WNOWAIT)
    return !(r < 0 && errno() == ECHILD)
end

"""
    reaped_children_faults() -> Int

Minor page faults of every child this process has reaped so far
(`getrusage(RUSAGE_CHILDREN)`). Any process that ran adds to it, so a
change means a child was started and reaped since the last look.
"""
function reaped_children_faults()::Int
    ccall(:getrusage, Cint, (Cint, Ptr{Int64}), RUSAGE_CHILDREN, RUSAGE) == 0 || return -1
    # ru_minflt: after ru_utime, ru_stime (two words each), ru_maxrss,
    # ru_ixrss, ru_idrss, ru_isrss.
    return Int(@inbounds RUSAGE[9])
end

"""
    cloexec_inherited!()

Mark every descriptor from 3 up close-on-exec: whatever the worker was
started with beyond its documented ones (a master, spawn-fcgi or a shell may
leak some) must not reach the processes pages start. The worker's own are
close-on-exec already.
"""
function cloexec_inherited!()
    for name in readdir("/proc/self/fd")
        fd = tryparse(Cint, name)
        fd === nothing || fd < 3 || set_cloexec(fd)
    end
    return nothing
end

"""Human-readable text for an errno value."""
strerror(e::Integer) = Libc.strerror(Int32(e))

end # module Posix
