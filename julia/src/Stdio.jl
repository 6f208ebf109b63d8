"""
    Stdio

A page's standard streams are real file descriptors for the length of its
request, as under `julia page.jl` behind a CGI server:

| fd | during a request | the page's Julia object |
|----|------------------|-------------------------|
| 0  | a memory file holding the request body (`/dev/null` without one) | [`PageStdin`](@ref): reads the body |
| 1  | a memory file (`O_APPEND`) whose contents join the response | [`PageStdout`](@ref): writes into the response |
| 2  | the worker's stderr (the master logs each line) | [`PageStderr`](@ref): each line one log entry with the request's fields |

So `redirect_stdout` into a pipe and back, `run(cmd)` and
`pipeline(cmd, stdout=stdout, stdin=stdin)`, processes that inherit the
descriptors, and C `printf` with `Libc.flush_cstdio()` all work. Output
keeps its order: before each of the page's writes, what others wrote to
fd 1 is taken into the response first (`Output.sync!`).

Per request the streams are new objects, dead once the request is over, so a
reference a page keeps (in a global, in a task) cannot read the next
request's body or write into its response. Afterwards the worker's own
descriptors come back — lazily, when the worker goes idle, like `ENV` — and
a request that started child processes gets fresh memory files, so a child
that outlives its request can never write into another one.

Everything here that depends on the running process (descriptors, the C
runtime's stream pointers) is set up by [`init!`](@ref) at start-up, never
at load time, so the module can live in a system image.
"""
module Stdio

using ..Posix
using ..Log
using ..Output
using ..Output: ResponseIO

"""The descriptors behind a page's fds 0–2, and the worker's own."""
mutable struct Fds
    ok::Bool               # memory files available; else pages get fd 1 = the worker's
    out::Cint              # memory file: fd 1 during a request
    out_dirty::Bool        # others wrote to it this request: empty it afterwards
    body::Cint             # memory file: fd 0 during a request with a body
    body_len::Int          # its size
    null::Cint             # /dev/null: fd 0 without a body, and the worker's own fd 0
    own_out::Cint          # the worker's own fds 1 and 2 (the master's pipes), dup'ed
    own_err::Cint
    uv::NTuple{3,Ptr{Cvoid}}  # jl_uv_stdin/stdout/stderr at start-up
    installed::Bool        # fds 0 and 1 are a request's (the worker's come back when idle)
    fd0_body::Bool         # fd 0 is `body` (else `null`)
    fd2_moved::Bool        # a page redirected fd 2: put the worker's back
    faults::Int            # reaped children's page faults at the last look
end

const FDS = Fds(false, -1, false, -1, 0, -1, -1, -1, (C_NULL, C_NULL, C_NULL),
                false, false, false, 0)

uv_symbol(fd::Int) = fd == 0 ? cglobal(:jl_uv_stdin, Ptr{Cvoid}) :
                     fd == 1 ? cglobal(:jl_uv_stdout, Ptr{Cvoid}) :
                               cglobal(:jl_uv_stderr, Ptr{Cvoid})

"""
    init!() -> Bool

Create the memory files and keep the worker's own descriptors (call once at
start-up, after fd 0 holds /dev/null). On failure (no `memfd_create`, out of
descriptors) pages still run, with fd 1 left to the worker: their children's
output then goes to the log, not the response.
"""
function init!()::Bool
    f = FDS
    f.uv = (unsafe_load(uv_symbol(0)), unsafe_load(uv_symbol(1)), unsafe_load(uv_symbol(2)))
    f.own_out = Posix.dup_cloexec(Cint(1))
    f.own_err = Posix.dup_cloexec(Cint(2))
    f.null = Posix.open_cloexec("/dev/null", Posix.O_RDONLY)
    f.out = new_out()
    f.body = Posix.memfd("julia-fcgi-stdin")
    f.faults = Posix.reaped_children_faults()
    f.ok = f.own_out >= 0 && f.own_err >= 0 && f.null >= 0 && f.out >= 0 && f.body >= 0
    if !f.ok
        Log.warn("pages get no file descriptors of their own for stdout and stdin " *
                 "(memfd_create or dup failed: $(Posix.strerror(Posix.errno()))); " *
                 "output of their child processes goes to the log")
    end
    # Standalone, the worker logs to fd 2, which a page may redirect.
    Log.SINK.control || f.own_err < 0 || Log.init!(f.own_err; control=false)
    return f.ok
end

function new_out()::Cint
    fd = Posix.memfd("julia-fcgi-stdout")
    fd >= 0 && !Posix.set_append(fd) && (Posix.closefd(fd); return Cint(-1))
    return fd
end

# ------------------------------------------------------------ requests

"""
    install!(body)

Make fds 0 and 1 the request's: fd 1 the (empty) output file, fd 0 the body
(written to its memory file) or /dev/null. Two system calls when the
previous request left them in place and there is no body; one more with a
body.
"""
function install!(body::Vector{UInt8})
    f = FDS
    f.ok || return nothing
    if !f.installed
        Posix.dup2(f.out, Cint(1))
        # The C runtime's own stdout (Core.print, jl_printf) writes to fd 1
        # itself: a small integer is how libuv's callers name a bare fd.
        unsafe_store!(uv_symbol(1), Ptr{Cvoid}(1))
        f.installed = true
    end
    n = length(body)
    if n > 0
        GC.@preserve body Posix.pwrite_all(f.body, pointer(body), n, 0)
        n < f.body_len && Posix.truncate_to(f.body, n)
        f.body_len = n
        f.fd0_body || (Posix.dup2(f.body, Cint(0)); f.fd0_body = true)
    elseif f.fd0_body
        Posix.dup2(f.null, Cint(0))
        f.fd0_body = false
    end
    return nothing
end

"""
    uninstall!(dirty, moved)

After a request: make sure fds 0–2 and the C runtime's stream pointers are
what `install!` left (`moved`: the page left a stream of its own in place,
so something may have moved them), empty the output file when others wrote
to it (`dirty`), and give both memory files up for new ones when the
request started child processes (one may live on and write).
"""
function uninstall!(dirty::Bool, moved::Bool)
    f = FDS
    f.ok || return nothing
    f.out_dirty |= dirty
    if children_ran()
        replace_files!()
    elseif f.out_dirty
        Posix.truncate_to(f.out, 0)
    end
    f.out_dirty = false
    if moved || unsafe_load(uv_symbol(1)) != Ptr{Cvoid}(1) ||
       unsafe_load(uv_symbol(2)) != f.uv[3] || unsafe_load(uv_symbol(0)) != f.uv[1]
        repair!()
    end
    return nothing
end

"""Did a child process run during this request (one still running or not
reaped, or one reaped since the last look)?"""
function children_ran()::Bool
    f = FDS
    faults = Posix.reaped_children_faults()
    changed = faults != f.faults
    f.faults = faults
    return changed || Posix.has_children()
end

function replace_files!()
    f = FDS
    out = new_out()
    body = Posix.memfd("julia-fcgi-stdin")
    if out < 0 || body < 0
        out >= 0 && Posix.closefd(out)
        body >= 0 && Posix.closefd(body)
        Posix.truncate_to(f.out, 0)          # keep the old ones; better than none
        return nothing
    end
    Posix.closefd(f.out)
    Posix.closefd(f.body)
    f.out, f.body, f.body_len = out, body, 0
    f.installed && Posix.dup2(f.out, Cint(1))
    f.fd0_body && Posix.dup2(f.null, Cint(0))
    f.fd0_body = false
    return nothing
end

"""Put fds 0–2 and the runtime's stream pointers back as `install!` left
them (a page redirected a stream and did not restore it)."""
function repair!()
    f = FDS
    f.installed && Posix.dup2(f.out, Cint(1))
    Posix.dup2(f.fd0_body ? f.body : f.null, Cint(0))
    Posix.dup2(f.own_err, Cint(2))
    f.fd2_moved = false
    unsafe_store!(uv_symbol(0), f.uv[1])
    unsafe_store!(uv_symbol(1), f.installed ? Ptr{Cvoid}(1) : f.uv[2])
    unsafe_store!(uv_symbol(2), f.uv[3])
    return nothing
end

"""The worker is idle: its own fds 0 and 1 come back."""
function restore!()
    f = FDS
    (f.ok && f.installed) || return nothing
    Posix.dup2(f.own_out, Cint(1))
    f.fd0_body && Posix.dup2(f.null, Cint(0))
    f.fd0_body = false
    unsafe_store!(uv_symbol(1), f.uv[2])
    f.installed = false
    # A large body stays in memory only while requests come back to back.
    f.body_len > 1 << 20 && (Posix.truncate_to(f.body, 0); f.body_len = 0)
    return nothing
end

isrestored() = !FDS.installed

# ------------------------------------------------------------ page streams

"""`IOError`s as a closed libuv stream raises them (EBADF)."""
dead_stream(what::String) = Base.IOError("$what is closed or unusable", -9)

"""
    PageStdout(resp)

The page's `stdout` for one request: every write goes into `resp`, after
what others wrote to fd 1 until then. Dead after the request.
"""
mutable struct PageStdout <: IO
    resp::ResponseIO
    live::Bool
    closed::Bool
    depth::Int      # nesting of `lock` (each `print` call): look at fd 1 once per call
end

PageStdout(resp::ResponseIO) = PageStdout(resp, true, false, 0)

@inline function usable(io::PageStdout)
    (io.live && !io.closed) ||
        throw(dead_stream(io.live ? "stdout" : "stdout of a finished request"))
    return nothing
end

function Base.unsafe_write(io::PageStdout, p::Ptr{UInt8}, n::UInt)
    usable(io)
    return Output.page_write!(io.resp, p, Int(n), io.depth == 0)
end

function Base.write(io::PageStdout, x::UInt8)
    usable(io)
    return Output.page_write!(io.resp, x, io.depth == 0)
end

# `print(io, xs...)` locks the stream around its pieces: one look at fd 1
# per call instead of one per piece.
function Base.lock(io::PageStdout)
    io.depth == 0 && io.live && Output.sync!(io.resp)
    io.depth += 1
    return nothing
end
Base.unlock(io::PageStdout) = (io.depth = max(0, io.depth - 1); nothing)

Base.flush(io::PageStdout) = (io.live && Output.page_flush!(io.resp); nothing)
Base.close(io::PageStdout) = (io.live && Output.sync!(io.resp); io.closed = true; nothing)
Base.isopen(io::PageStdout) = io.live && !io.closed
Base.iswritable(io::PageStdout) = io.live && !io.closed
Base.isreadable(::PageStdout) = false
Base.displaysize(::PageStdout) = (24, 80)

"""
    PageStderr(params)

The page's `stderr`: each line becomes one `warn` entry in the worker's log
with the request's fields (`Log.request_fields(params)`, taken when a line
is written, not per request), a partial last line at the end of the request.
"""
mutable struct PageStderr <: IO
    line::Vector{UInt8}
    params::Dict{String,String}
    live::Bool
    closed::Bool
end

PageStderr(params::Dict{String,String}) = PageStderr(UInt8[], params, true, false)

function Base.unsafe_write(io::PageStderr, p::Ptr{UInt8}, n::UInt)
    (io.live && !io.closed) || throw(dead_stream(io.live ? "stderr" : "stderr of a finished request"))
    for i in 1:Int(n)
        write_byte!(io, unsafe_load(p, i))
    end
    return Int(n)
end

function Base.write(io::PageStderr, x::UInt8)
    (io.live && !io.closed) || throw(dead_stream(io.live ? "stderr" : "stderr of a finished request"))
    write_byte!(io, x)
    return 1
end

function write_byte!(io::PageStderr, x::UInt8)
    x == UInt8('\n') ? emit!(io) : push!(io.line, x)
    length(io.line) >= 64 * 1024 && emit!(io)
    return nothing
end

function emit!(io::PageStderr)
    isempty(io.line) && return nothing
    Log.warn(String(copy(io.line)), Log.request_fields(io.params)...)
    empty!(io.line)
    return nothing
end

Base.flush(::PageStderr) = nothing
Base.close(io::PageStderr) = (emit!(io); io.closed = true; nothing)
Base.isopen(io::PageStderr) = io.live && !io.closed
Base.iswritable(io::PageStderr) = io.live && !io.closed
Base.isreadable(::PageStderr) = false
Base.displaysize(::PageStderr) = (24, 80)

"""
    PageStdin(body)

The page's `stdin`: the request body, read from memory. Dead after the
request (the body's buffer is the worker's and is reused).
"""
mutable struct PageStdin <: IO
    buf::IOBuffer
    live::Bool
    closed::Bool
end

PageStdin(body::Vector{UInt8}) = PageStdin(IOBuffer(body), true, false)

@inline function source(io::PageStdin)::IOBuffer
    (io.live && !io.closed) || throw(dead_stream(io.live ? "stdin" : "stdin of a finished request"))
    return io.buf
end

Base.read(io::PageStdin, ::Type{UInt8}) = read(source(io), UInt8)
Base.unsafe_read(io::PageStdin, p::Ptr{UInt8}, n::UInt) = unsafe_read(source(io), p, n)
Base.read(io::PageStdin) = read(source(io))
Base.read(io::PageStdin, n::Integer) = read(source(io), n)
Base.read(io::PageStdin, ::Type{String}) = read(source(io), String)
Base.readbytes!(io::PageStdin, b::AbstractVector{UInt8}, n=length(b)) = readbytes!(source(io), b, n)
Base.readavailable(io::PageStdin) = readavailable(source(io))
Base.readuntil(io::PageStdin, delim::UInt8; keep::Bool=false) = readuntil(source(io), delim; keep=keep)
Base.readline(io::PageStdin; keep::Bool=false) = readline(source(io); keep=keep)
Base.peek(io::PageStdin) = Base.peek(source(io))
Base.bytesavailable(io::PageStdin) = io.live && !io.closed ? bytesavailable(io.buf) : 0
Base.eof(io::PageStdin) = eof(source(io))
Base.position(io::PageStdin) = position(source(io))
Base.seek(io::PageStdin, n::Integer) = (seek(source(io), n); io)
Base.skip(io::PageStdin, n::Integer) = (skip(source(io), n); io)
Base.seekstart(io::PageStdin) = (seekstart(source(io)); io)
Base.seekend(io::PageStdin) = (seekend(source(io)); io)
Base.close(io::PageStdin) = (io.closed = true; nothing)
Base.isopen(io::PageStdin) = io.live && !io.closed
Base.isreadable(io::PageStdin) = io.live && !io.closed
Base.iswritable(::PageStdin) = false

const PageStream = Union{PageStdout,PageStderr,PageStdin}

# The descriptor a child process gets for a page stream (`run(pipeline(cmd,
# stdout=stdout))`): the output file after taking in what is there, so the
# child's output follows what the page printed; the body file positioned
# where the page's own reading got to.
function stream_fd(io::PageStdout)::Cint
    usable(io)
    FDS.ok || return Cint(1)
    Output.sync!(io.resp)
    return FDS.out
end
stream_fd(::PageStderr) = FDS.ok ? FDS.own_err : Cint(2)
function stream_fd(io::PageStdin)::Cint
    buf = source(io)
    (FDS.ok && FDS.fd0_body) || return FDS.null >= 0 ? FDS.null : Cint(0)
    Posix.seek_to(FDS.body, position(buf))
    return FDS.body
end

Base.rawhandle(io::PageStream) = RawFD(stream_fd(io))
Base._fd(io::PageStream) = RawFD(stream_fd(io))

"""`redirect_stdout(s)`/`redirect_stderr(s)`/`redirect_stdin(s)` with one
of the page's own streams: what a CGI library's clean-up does after it
redirected stdout into a pipe."""
function redirect!(unix_fd::Int, io::PageStream)
    fd = stream_fd(io)
    Posix.dup2(fd, Cint(unix_fd))
    unix_fd == 2 && (FDS.fd2_moved = fd != FDS.own_err)
    unsafe_store!(uv_symbol(unix_fd), unix_fd == 1 && FDS.installed ? Ptr{Cvoid}(1) :
                                      FDS.uv[unix_fd + 1])
    unix_fd == 0 ? Base.__jfcgi_set_stdin!(io) :
    unix_fd == 1 ? Base.__jfcgi_set_stdout!(io) : Base.__jfcgi_set_stderr!(io)
    return io
end

# Julia 1.7 made redirect_* callable objects; before, they are functions.
if isdefined(Base, :RedirectStdStream)
    (f::Base.RedirectStdStream)(io::PageStream) = redirect!(f.unix_fd, io)
else
    Base.redirect_stdin(io::PageStream) = redirect!(0, io)
    Base.redirect_stdout(io::PageStream) = redirect!(1, io)
    Base.redirect_stderr(io::PageStream) = redirect!(2, io)
end

"""The three streams of one request."""
struct Streams
    stdin::PageStdin
    stdout::PageStdout
    stderr::PageStderr
end

"""
    open_streams(body, resp, params) -> Streams

Fds and objects for a request: `install!`, then new stream objects.
"""
function open_streams(body::Vector{UInt8}, resp::ResponseIO, params::Dict{String,String})::Streams
    install!(body)
    resp.mfd = FDS.ok ? FDS.out : Cint(-1)
    resp.mseen = 0
    return Streams(PageStdin(body), PageStdout(resp), PageStderr(params))
end

"""
    close_streams(s, resp)

The request is over: C stdio flushed into the response (as at a process's
exit), the stream objects dead, a stream the page left in place of its own
closed (as its process would close it on exit), the descriptors put right.
Returns whether the page had left a stream of its own in place.
"""
function close_streams(s::Streams, resp::ResponseIO)::Bool
    Libc.flush_cstdio()
    # From here on, nothing that reaches fd 1 is the page's response (an
    # error response froze it already: it may hold anything).
    dirty = resp.mfd < 0 || (Output.sync!(resp); resp.mseen > 0)
    resp.mfd = Cint(-1)
    emit!(s.stderr)
    moved = left_in_place(stdout, s.stdout) | left_in_place(stderr, s.stderr) |
            left_in_place(stdin, s.stdin)
    s.stdout.live = s.stderr.live = s.stdin.live = false
    s.stdout.resp = DEAD_RESPONSE
    uninstall!(dirty, moved)
    return moved
end

"""Is `current` (what `Base.stdout`… is now) not the request's own stream?
A stream the page put there is closed, as its process's exit would."""
function left_in_place(current, own)::Bool
    current === own && return false
    current isa PageStream || is_worker_stream(current) || close_quietly(current)
    return true
end

# A stream object of no one's: a page's own are what it leaves behind.
const DEAD_RESPONSE = ResponseIO()
const WORKER_STREAMS = IO[]
is_worker_stream(x) = any(s -> s === x, WORKER_STREAMS)

function close_quietly(x)
    try
        close(x)
    catch e
        Log.debug("closing a stream the page left as stdout/stderr/stdin: " *
                  sprint(showerror, e))
    end
    return nothing
end

"""Remember the worker's own stream objects (never closed on a page's behalf)."""
function remember_worker_streams!(xs...)
    empty!(WORKER_STREAMS)
    append!(WORKER_STREAMS, xs)
    return nothing
end

end # module Stdio
