# A raw FastCGI test client and a worker launcher for the round-trip tests.
# Everything uses plain fds and poll() with timeouts, so a misbehaving worker
# fails a test instead of hanging the suite.
module TestClient

using ..JuliaFCGI: FastCGI, Posix
using ..JuliaFCGI.FastCGI: ByteBuf

const WORKER = normpath(joinpath(@__DIR__, "..", "worker.jl"))

mutable struct TestWorker
    proc::Base.Process
    dir::String
    sock::String
    server::Cint           # the listening socket (ours; the worker gets a dup as fd 0)
    ctl::Cint              # our end of the control channel (-1: standalone)
    inbuf::Vector{UInt8}
    lines::Vector{String}  # control lines received so far
    logfile::String        # the worker's stdout + stderr
    board::String          # scoreboard file ("" without)
end

# ------------------------------------------------------------------ launch

function julia_cmd()
    exe = get(ENV, "JULIA", "")
    isempty(exe) && (exe = joinpath(Sys.BINDIR, Base.julia_exename()))
    return `$exe --startup-file=no --history-file=no --color=no $WORKER`
end

"""Start a worker on a fresh unix socket; `control=false` runs it standalone,
`slot >= 0` gives it that slot of a fresh scoreboard."""
function start_worker(env::Dict{String,String}=Dict{String,String}(); control::Bool=true,
                      slot::Int=-1)
    dir = mktempdir()
    sock = joinpath(dir, "fcgi.sock")
    server = listen_unix(sock)
    ours, theirs = Cint(-1), Cint(-1)
    wenv = Dict("HOME" => get(ENV, "HOME", "/"), "PATH" => get(ENV, "PATH", "/usr/bin:/bin"),
                "JULIA_FCGI_WORKER" => "1")
    haskey(ENV, "LD_LIBRARY_PATH") && (wenv["LD_LIBRARY_PATH"] = ENV["LD_LIBRARY_PATH"])
    if control
        ours, theirs = Posix.socketpair()
        # The child must inherit its end (same fd number): clear close-on-exec.
        ccall(:fcntl, Cint, (Cint, Cint, Cint), theirs, Posix.F_SETFD, 0)
        wenv["JULIA_FCGI_CONTROL_FD"] = string(theirs)
    end
    board, bfd = "", Cint(-1)
    if slot >= 0
        board, bfd = make_scoreboard(dir, slot + 2)
        wenv["JULIA_FCGI_SCOREBOARD_FD"] = string(bfd)
        wenv["JULIA_FCGI_SCOREBOARD_SLOT"] = string(slot)
    end
    merge!(wenv, env)
    logfile = joinpath(dir, "worker.log")
    cmd = pipeline(setenv(julia_cmd(), wenv); stdin=RawFD(server), stdout=logfile,
                   stderr=logfile)
    proc = run(cmd; wait=false)
    control && Posix.closefd(theirs)
    bfd >= 0 && Posix.closefd(bfd)
    return TestWorker(proc, dir, sock, server, ours, UInt8[], String[], logfile, board)
end

"""
    listen_unix(path) -> fd

A listening unix socket made with plain system calls. Not `Sockets.listen`:
that registers a libuv listener in *this* process, which accepts pending
connections by itself whenever the test yields, stealing the worker's.
"""
function listen_unix(path::String)::Cint
    fd = ccall(:socket, Cint, (Cint, Cint, Cint), Posix.AF_UNIX,
               Posix.SOCK_STREAM | Posix.SOCK_CLOEXEC, 0)
    rc = ccall(:bind, Cint, (Cint, Ptr{UInt8}, Cuint), fd, sockaddr_un(path), 110)
    rc == 0 || error("bind $path: " * Posix.strerror(Posix.errno()))
    ccall(:listen, Cint, (Cint, Cint), fd, 128) == 0 || error("listen: " * Posix.strerror(Posix.errno()))
    return fd
end

function sockaddr_un(path::String)::Vector{UInt8}
    addr = zeros(UInt8, 110)
    addr[1] = 0x01                                 # sa_family = AF_UNIX
    copyto!(addr, 3, codeunits(path), 1, sizeof(path))
    return addr
end

"""A scoreboard file as the master makes it; returns (path, inheritable fd)."""
function make_scoreboard(dir::String, slots::Int)
    path = joinpath(dir, "scoreboard")
    open(path, "w") do io
        write(io, b"JFCGISB1", htol(UInt32(2)), htol(UInt32(512)), htol(UInt32(slots)))
        write(io, zeros(UInt8, 64 - 20 + 512 * slots))
    end
    return path, ccall(:open, Cint, (Cstring, Cint), path, 2)    # O_RDWR, inherited
end

"""Read slot `i` until `pred(slot)` holds or `timeout` seconds pass."""
function wait_slot(path::String, i::Int, pred; timeout::Real=10)
    deadline = time() + timeout
    while true
        s = read_slot(path, i)
        (pred(s) || time() > deadline) && return s
        sleep(0.02)
    end
end

"""Decode slot `i` of a scoreboard file."""
function read_slot(path::String, i::Int)
    b = read(path)[64 + 512 * i + 1:64 + 512 * (i + 1)]
    u32(o) = Int(ltoh(reinterpret(UInt32, b[o+1:o+4])[1]))
    u64(o) = ltoh(reinterpret(UInt64, b[o+1:o+8])[1])
    ulen = Int(b[69]) | (Int(b[70]) << 8)
    return (seq=u64(0), pid=u32(8), state=u32(12), requests=Int(u64(16)), started=u64(24),
            last_duration=u64(32), last_finished=u64(40), method=String(b[50:49+b[49]]),
            parked=u32(64), uri=String(b[71:70+ulen]))
end

"""Read control lines until one satisfies `pred` (returns it) or timeout."""
function wait_line(w::TestWorker, pred; timeout::Real=120)::Union{String,Nothing}
    deadline = time() + timeout
    checked = 0
    while true
        for i in checked+1:length(w.lines)
            pred(w.lines[i]) && return w.lines[i]
        end
        checked = length(w.lines)
        left = deadline - time()
        left <= 0 && return nothing
        read_control!(w, round(Int, min(left, 1.0) * 1000)) || (yield(); left <= 0 && return nothing)
    end
end

"""Poll the control fd once; append complete lines. False on EOF/timeout."""
function read_control!(w::TestWorker, timeout_ms::Int)::Bool
    w.ctl < 0 && (sleep(timeout_ms / 1000); return false)
    rc, rev, _ = Posix.poll2(w.ctl, Posix.POLLIN, Cint(-1), Cshort(0), timeout_ms)
    rc <= 0 && return false
    buf = Vector{UInt8}(undef, 65536)
    n = Posix.read_some(w.ctl, buf, 0, length(buf))
    n <= 0 && return false
    append!(w.inbuf, view(buf, 1:n))
    while (nl = findfirst(==(UInt8('\n')), w.inbuf)) !== nothing
        push!(w.lines, String(w.inbuf[1:nl-1]))
        deleteat!(w.inbuf, 1:nl)
    end
    return true
end

send_control(w::TestWorker, s::String) = Posix.write_all(w.ctl, Vector{UInt8}(s * "\n"))

"""Log lines (LOG⇥level⇥…) seen so far, after draining the control fd."""
function log_lines(w::TestWorker; level::String="")
    while read_control!(w, 50) end
    return filter(l -> startswith(l, "LOG\t" * level), w.lines)
end

function stop_worker(w::TestWorker)
    process_running(w.proc) && kill(w.proc)
    wait(w.proc)
    w.ctl >= 0 && Posix.closefd(w.ctl)
    Posix.closefd(w.server)
    rm(w.dir; recursive=true, force=true)
end

function wait_exit(w::TestWorker; timeout::Real=30)::Bool
    deadline = time() + timeout
    while process_running(w.proc) && time() < deadline
        sleep(0.05)
    end
    return !process_running(w.proc)
end

# ------------------------------------------------------------------ client

function connect_unix(path::String)::Cint
    fd = ccall(:socket, Cint, (Cint, Cint, Cint), Posix.AF_UNIX, Posix.SOCK_STREAM | Posix.SOCK_CLOEXEC, 0)
    rc = ccall(:connect, Cint, (Cint, Ptr{UInt8}, Cuint), fd, sockaddr_un(path), 110)
    rc == 0 || error("connect $path: " * Posix.strerror(Posix.errno()))
    return fd
end

send_bytes(fd::Cint, b::ByteBuf) = Posix.write_all(fd, b.data, b.len)
send_bytes(fd::Cint, v::Vector{UInt8}) = Posix.write_all(fd, v, length(v))

# Bytes read past the END_REQUEST of one response, per connection.
const PENDING = Dict{Cint,Vector{UInt8}}()

"""Take one whole record off the front of `data`, or nothing."""
function take_record!(data::Vector{UInt8})
    length(data) < 8 && return nothing
    clen = (Int(data[5]) << 8) | Int(data[6])
    total = 8 + clen + Int(data[7])
    length(data) < total && return nothing
    r = FastCGI.Record(data[2], (Int(data[3]) << 8) | Int(data[4]), data[9:8+clen])
    deleteat!(data, 1:total)
    return r
end

"""Read records until END_REQUEST (or `count` records, EOF, timeout).
Returns a NamedTuple."""
function read_response(fd::Cint; timeout::Real=30, count::Int=typemax(Int))
    data = pop!(PENDING, fd, UInt8[])
    recs = FastCGI.Record[]
    buf = Vector{UInt8}(undef, 1 << 16)
    deadline = time() + timeout
    try
        while true
            while (r = take_record!(data)) !== nothing
                push!(recs, r)
                (r.type == FastCGI.END_REQUEST || length(recs) >= count) &&
                    return response(recs, false)
            end
            left = deadline - time()
            left <= 0 && return response(recs, false; timed_out=true)
            rc, _, _ = Posix.poll2(fd, Posix.POLLIN, Cint(-1), Cshort(0), round(Int, left * 1000))
            rc <= 0 && continue
            n = Posix.read_some(fd, buf, 0, length(buf))
            n <= 0 && return response(recs, true)
            append!(data, view(buf, 1:n))
        end
    finally
        isempty(data) || (PENDING[fd] = data)
    end
end

function response(recs, closed; timed_out=false)
    out = UInt8[]; err = UInt8[]
    app, proto, rid = -1, -1, -1
    for r in recs
        r.type == FastCGI.STDOUT && append!(out, r.content)
        r.type == FastCGI.STDERR && append!(err, r.content)
        if r.type == FastCGI.END_REQUEST
            app = (Int(r.content[1]) << 24) | (Int(r.content[2]) << 16) |
                  (Int(r.content[3]) << 8) | Int(r.content[4])
            proto = Int(r.content[5]); rid = r.rid
            break
        end
    end
    return (stdout=String(out), stderr=String(err), app=app, proto=proto, rid=rid,
            records=recs, closed=closed, timed_out=timed_out)
end

"""True when the worker closed `fd` (EOF) within `timeout` seconds."""
function closed_by_peer(fd::Cint; timeout::Real=10)::Bool
    delete!(PENDING, fd)
    buf = Vector{UInt8}(undef, 1 << 16)
    deadline = time() + timeout
    while time() < deadline
        rc, _, _ = Posix.poll2(fd, Posix.POLLIN, Cint(-1), Cshort(0), 200)
        rc > 0 || continue
        n = Posix.read_some(fd, buf, 0, length(buf))
        n <= 0 && return true
    end
    return false
end

function cgi_params(script::String; method::String="GET", query::String="",
                    body::AbstractString="", extra=())
    p = Pair{String,String}["SCRIPT_FILENAME" => script, "REQUEST_METHOD" => method,
         "QUERY_STRING" => query, "CONTENT_LENGTH" => string(sizeof(body)),
         "REQUEST_URI" => "/" * basename(script) * (isempty(query) ? "" : "?" * query),
         "SCRIPT_NAME" => "/" * basename(script), "GATEWAY_INTERFACE" => "CGI/1.1",
         "SERVER_PROTOCOL" => "HTTP/1.1"]
    isempty(body) || push!(p, "CONTENT_TYPE" => "application/x-www-form-urlencoded")
    append!(p, extra)
    return p
end

"""One request on a new connection (closed afterwards)."""
function request(w::TestWorker, script::String; body::AbstractString="", kw...)
    fd = connect_unix(w.sock)
    try
        b = FastCGI.put_request!(ByteBuf(), 1, cgi_params(script; body=body, kw...),
                                 String(body); keep=false)
        send_bytes(fd, b)
        return read_response(fd)
    finally
        Posix.closefd(fd)
    end
end

"""Split a response's CGI text into (headers::Dict, body)."""
function split_http(out::String)
    i = findfirst("\r\n\r\n", out)
    i === nothing && return (Dict{String,String}(), out)
    hdrs = Dict{String,String}()
    for line in split(out[1:first(i)-1], "\r\n")
        k, v = split(line, ": "; limit=2)
        hdrs[lowercase(k)] = v
    end
    return (hdrs, out[last(i)+1:end])
end

end # module TestClient
