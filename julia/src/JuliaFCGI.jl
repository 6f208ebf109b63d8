"""
    JuliaFCGI

The Julia worker of julia-fcgi: a FastCGI responder that runs Julia pages
CGI-style, managed by the Rust master (see `julia/INTERFACE.md`).

Modules, bottom-up:

| module      | job |
|-------------|-----|
| `Posix`     | `ccall` wrappers: accept4, poll, read, send, fcntl, socketpair |
| `Log`       | the worker's log entries, raw `write(2)`, escaped one-liners |
| `Control`   | control channel: READY / EXITING out, STOP / ABORT in |
| `Config`    | settings from the environment |
| `FastCGI`   | wire format: record constants, the one header decoder, name-value pairs, builders |
| `Access`    | access log entries, batched onto the control channel |
| `Output`    | `ResponseIO`: the page's output in order, CGI headers → STDOUT records |
| `Stdio`     | a page's fds 0–2 and its `stdin`/`stdout`/`stderr` objects, per request |
| `Isolation` | what a request may leave to the next: tasks, background work, `LOAD_PATH`… |
| `Packages`  | the pool's packages (`preload`), loaded and precompiled before READY |
| `Env`       | switching `ENV` between the worker's and a request's, by diff |
| `Transform` | static analysis of a page: handler / compiled / fallback |
| `Loader`    | parse, plan and load a page into its own module |
| `Params`    | CGI variable fix-ups: Apache's `proxy:fcgi://` prefix, PATH_INFO split, QUERY_STRING |
| `Trace`     | with `sysimage_trace`: what a page's function calls, as precompile statements |
| `Pages`     | the CGI runtime: checks, page cache, running a page, errors |
| `Scoreboard`| this worker's slot in the master's shared scoreboard: busy from a request's accept |
| `Connection`| connection layer: one connection's buffer, non-blocking reads, records, sends |
| `Waiting`   | polls with the control channel; idle work (ENV back, access log) while waiting |
| `KeepAlive` | kept connections: waiting between requests, yielding to waiting connections |
| `Requests`  | request layer: records → request (`Phase`), deadlines, the page's response |
| `Server`    | the worker, accept loop, new connections read to their head or parked |
| `Warmup`    | synthetic requests through the real path before READY |

Theory of operation: fd 0 is a listening socket shared by all workers. The
worker accepts one connection at a time itself (`accept4` on a non-blocking
fd 0, `poll` with the control fd when nothing is pending), reads records into
one reused buffer, and when a request is complete swaps in the request's
world (ENV, stdin, stdout, cwd), calls the page, swaps back and sends the
response in one write. Nothing in that path throws on purpose; a page's
exception becomes a 500 and one log entry.
"""
module JuliaFCGI

# Base's stdin/stdout/stderr/PROGRAM_FILE are plain globals of Base; Julia
# 1.5 has no `setglobal!`, so define setters inside Base once.
Core.eval(Base, quote
    function __jfcgi_set_stdio!(i::IO, o::IO, e::IO)
        global stdin = i
        global stdout = o
        global stderr = e
        return nothing
    end
    __jfcgi_set_stdin!(i::IO) = (global stdin = i; nothing)
    __jfcgi_set_stdout!(o::IO) = (global stdout = o; nothing)
    __jfcgi_set_stderr!(e::IO) = (global stderr = e; nothing)
    function __jfcgi_set_program_file!(p::String)
        global PROGRAM_FILE = p
        return nothing
    end
end)

include("Posix.jl")
include("Log.jl")
include("Control.jl")
include("Config.jl")
include("FastCGI.jl")
include("Access.jl")
include("Output.jl")
include("Stdio.jl")
include("Isolation.jl")
include("Packages.jl")
include("Env.jl")
include("Transform.jl")
include("Loader.jl")
include("Params.jl")
include("Trace.jl")
include("Pages.jl")
include("Scoreboard.jl")
include("Connection.jl")
include("Waiting.jl")
include("KeepAlive.jl")
include("Requests.jl")
include("Server.jl")
include("Warmup.jl")

"""
    exit_hook(w)

Registered with `atexit`: if a page calls `Base.exit` directly (the page's
own `exit` is shadowed and never gets here), finish the response in flight
and tell the master before the process goes.
"""
function exit_hook(w::Server.Worker)
    Access.flush!()
    rt = w.rt
    rt.inflight || return nothing
    if Control.abort_pending!()
        # Terminated for overrunning its request: the client must see the
        # connection close, never a response that looks complete.
        rt.inflight = false
        Posix.closefd(rt.resp.fd)
        return nothing
    end
    try
        rt.inflight = false
        Server.Pages.leave!(rt)
        Output.finish!(rt.resp, 0)
        Posix.closefd(rt.resp.fd)
        Scoreboard.done!(true)
        Scoreboard.write_state!(Scoreboard.STOPPING)
        Control.exiting("page called exit()")
    catch e
        Log.error("finishing the response of a page that called Base.exit failed: " *
                  sprint(showerror, e))
    end
    return nothing
end

function control_fd()::Int
    s = get(ENV, "JULIA_FCGI_CONTROL_FD", "")
    isempty(s) && return -1
    fd = tryparse(Int, s)
    fd === nothing || fd < 0 ? -1 : fd
end

"""
    main()

Run the worker: set up logging and the control channel, read the settings,
warm up, send READY, serve until STOP (or a page's `exit()`), send EXITING
and exit 0. Exits 1 when fd 0 cannot be accepted on.
"""
function main()
    cfd = control_fd()
    Log.init!(cfd >= 0 ? cfd : 2; control=cfd >= 0)
    Control.init!(cfd)
    Posix.ignore_sigpipe()
    settings = Config.load()
    Scoreboard.init!()
    lfd = Posix.move_listener(Server.LISTEN_FD)
    if lfd < 0 || !Posix.set_nonblocking(lfd, true)
        Log.error("fd 0 is not usable (expected the FastCGI listening socket)")
        exit(1)
    end
    Stdio.init!()
    Posix.cloexec_inherited!()
    Packages.preload!(settings.preload)
    Warmup.run!(settings)
    w = Server.Worker(settings, lfd)
    atexit(() -> exit_hook(w))
    Scoreboard.write_state!(Scoreboard.IDLE)
    Control.ready()
    reason = Server.accept_loop!(w)
    Scoreboard.write_state!(Scoreboard.STOPPING)
    Access.flush!()
    reason === nothing && exit(1)
    Control.exiting(reason)
    exit(0)
end

end # module JuliaFCGI
