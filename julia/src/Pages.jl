"""
    Pages

The CGI runtime: given one request's params and body, find the page
(SCRIPT_FILENAME), check it may be served, and run it with the request's
environment in place — `ENV` = the params, fds 0–2 and `stdin`/`stdout`/
`stderr` the request's (see `Stdio`), working directory = the page's
directory, `PROGRAM_FILE` = the page — restoring the worker's own state
afterwards. Pages are cached by path
and reloaded when their (device, inode, size, mtime) changes, or that of a
file they included when they were loaded.
"""
module Pages

using ..Posix
using ..Log
using ..Log: request_fields
using ..Config: Settings
using ..Output
using ..Output: ResponseIO
using ..Env
using ..Stdio
using ..Isolation
using ..Trace
using ..Loader
using ..Loader: Page, PageExit

const STATUS_500 = "500 Internal Server Error"
const MAX_FRAMES = 100
const SRC_DIR = @__DIR__

"""Per-worker runtime state (one request at a time)."""
mutable struct Runtime
    settings::Settings
    cache::Dict{String,Page}
    env::Env.EnvState
    cwd::String              # our idea of the working directory
    worker_stdin::IO
    worker_stdout::IO
    worker_stderr::IO
    streams::Union{Stdio.Streams,Nothing}   # the request's, while a page runs
    program_file::String
    inflight::Bool           # a page is running (for the exit() safety net)
    resp::ResponseIO         # the response being produced
    exit_code::Int           # >= 0: a page called exit(); stop after this request
    retiring::String         # why the worker stops after this request ("": exit())
    source_path::Any         # task-local SOURCE_PATH outside requests
    baseline::Isolation.Baseline
    warned_tasks::Set{String}   # pages already told that their tasks were stopped
    collect::Bool            # a page left streams of its own behind: GC when idle
    to_compile::Vector{Page} # pages whose first run was interpreted: compile when idle
end

# The working directory can be gone (deleted under us): then we do not know
# it, and the next request's cd() puts us somewhere real again.
current_dir() = try pwd() catch e
    Log.debug("no current directory: " * sprint(showerror, e))
    ""
end

function Runtime(settings::Settings)
    cwd = current_dir()
    Stdio.remember_worker_streams!(stdin, stdout, stderr)
    return Runtime(settings, Dict{String,Page}(), Env.EnvState(), cwd, stdin, stdout, stderr,
                   nothing, Base.PROGRAM_FILE, false, ResponseIO(), -1, "", nothing,
                   Isolation.baseline(), Set{String}(), false, Page[])
end

"""
Between requests: give the process its own environment and fds back,
collect the garbage a page left (streams it left in place hold descriptors
until their finalizers run), and compile the pages whose first run was
interpreted.
"""
function idle!(rt::Runtime)
    Env.restore!(rt.env)
    Stdio.restore!()
    if rt.collect
        rt.collect = false
        GC.gc(false)     # young objects, where such streams are: fast
    end
    isempty(rt.to_compile) || compile_pending!(rt)
    return nothing
end

"""Are the worker's own environment and fds in place, and nothing left to do?"""
isidle(rt::Runtime) = Env.isrestored(rt.env) && Stdio.isrestored() && !rt.collect &&
                      isempty(rt.to_compile)

"""`__page_main__` of the pages served once, interpreted (`Loader.first_run`):
inferred and compiled now, while no request waits for this worker, unless
the page changed meanwhile (then its next load decides again)."""
function compile_pending!(rt::Runtime)
    while !isempty(rt.to_compile)
        page = pop!(rt.to_compile)
        get(rt.cache, page.path, nothing) === page || continue
        try
            precompile(page.fn, ())
        catch e
            Log.debug("compiling a page ahead of its next request failed (it is compiled " *
                      "then): " * sprint(showerror, e), "SCRIPT_FILENAME" => page.path)
        end
        Trace.FILE[] === nothing || trace!(page)
    end
    return nothing
end

# ------------------------------------------------------------------ checks

has_allowed_extension(s::Settings, path::String) = any(e -> endswith(path, e), s.extensions)

function inside_doc_roots(s::Settings, path::String)::Bool
    isempty(s.doc_roots) && return true
    real = try
        realpath(path)
    catch e      # it was stat'ed a moment ago; now unresolvable: deny (logged as a 403)
        Log.debug("realpath failed: " * sprint(showerror, e), "SCRIPT_FILENAME" => path)
        return false
    end
    return any(r -> real == r || startswith(real, r == "/" ? r : r * "/"), s.doc_roots)
end

function safe_stat(path::String)
    try
        return stat(path)
    catch e
        # EACCES on a directory on the way, ELOOP, ENAMETOOLONG…: not servable.
        Log.debug("stat failed: " * sprint(showerror, e), "SCRIPT_FILENAME" => path)
        return nothing
    end
end

not_found!(resp::ResponseIO, path::String) =
    Output.error_response!(resp, "404 Not Found", "404 Not Found\n",
                           "Primary script unknown: " * (isempty(path) ? "(no SCRIPT_FILENAME)" : path))

function forbidden!(resp::ResponseIO, path::String, why::String, params)
    Log.info("access denied: $why", request_fields(params)...)
    Output.error_response!(resp, "403 Forbidden", "403 Forbidden\n",
                           "Access to the script '$path' has been denied ($why)")
end

# ------------------------------------------------------------------ serve

"""
    serve!(rt, params, body, resp) -> app status

Produce the response for one request into `resp` (not yet sent: the caller
finishes it). Never throws.
"""
function serve!(rt::Runtime, params::Dict{String,String}, body::Vector{UInt8},
                resp::ResponseIO)::Int
    path = get(params, "SCRIPT_FILENAME", "")
    isempty(path) && (not_found!(resp, path); return 0)
    has_allowed_extension(rt.settings, path) ||
        (forbidden!(resp, path, "extension not allowed", params); return 0)
    st = safe_stat(path)
    (st === nothing || st.mode == 0) && (not_found!(resp, path); return 0)
    isdir(st) && (forbidden!(resp, path, "is a directory", params); return 0)
    isfile(st) || (forbidden!(resp, path, "not a regular file", params); return 0)
    page = get(rt.cache, path, nothing)
    if page === nothing || !Loader.same_file(page, st) || Loader.deps_changed(page)
        inside_doc_roots(rt.settings, path) ||
            (forbidden!(resp, path, "outside JULIA_FCGI_DOC_ROOTS", params); return 0)
        page = nothing
    end
    return run!(rt, page, path, st, params, body, resp)
end

function run!(rt::Runtime, page::Union{Page,Nothing}, path::String, st::Base.StatStruct,
              params::Dict{String,String}, body::Vector{UInt8}, resp::ResponseIO)::Int
    nhooks = length(Base.atexit_hooks)
    err, bt = nothing, nothing
    mark = nothing
    try
        enter!(rt, params, body, resp, path)
        try
            if page === nothing
                delete!(rt.cache, path)
                page = Loader.load(path, st)
                rt.cache[path] = page
            end
            # Tasks a handler page's top level started live with the page;
            # from here on they are the request's.
            mark = Isolation.enter()
            call_page(rt, page)
        catch e
            err, bt = e, catch_backtrace()
        end
        # The hooks run even after an error (as at a process's exit); a 500
        # then replaces all output, theirs included.
        run_atexit_hooks!(rt, nhooks, params)
        return err === nothing ? 0 : failed!(rt, err, bt, params)
    finally
        mark === nothing || left_behind!(rt, mark, params)
        leave!(rt)
    end
end

"""
After the page: its tasks still waiting to run are stopped, and background
work it left running (timers, processes, sockets being read) retires this
worker after the response, so none of it runs during another request.
Loading a package may start such work for good: a request that loaded one
is let be.
"""
function left_behind!(rt::Runtime, mark::Isolation.Mark, params)
    parked, handles = Isolation.leave(mark)
    if parked > 0 && !(params["SCRIPT_FILENAME"] in rt.warned_tasks)
        push!(rt.warned_tasks, params["SCRIPT_FILENAME"])
        Log.warn("page left $parked task(s) waiting to run after its response; they were " *
                 "stopped: a page's tasks end with its request (this is said once per page)",
                 request_fields(params)...)
    end
    if handles > 0 && length(Base.loaded_modules) == mark.modules && rt.exit_code < 0
        Log.warn("page left background work running ($handles timer(s), process(es) or " *
                 "stream(s)); this worker is replaced after the response so that it cannot " *
                 "run during another request", request_fields(params)...)
        rt.exit_code = 0
        rt.retiring = "page left background work running"
    end
    return nothing
end

# Dispatch on the page kind; the page's own code is always called through
# invokelatest (it was defined after this function was compiled). A
# compiled page's first run is interpreted when it can be (`page.first`).
function call_page(rt::Runtime, page::Page)
    if page.first !== nothing
        ex, page.first = page.first, nothing       # once, even if it throws
        push!(rt.to_compile, page)
        Core.eval(parentmodule(page.fn), ex)
    elseif page.kind === :fallback
        m = Loader.page_module(page.path; per_request=true)
        for s in page.stmts
            Loader.eval_stmt(m, s)
        end
    else
        Base.invokelatest(page.fn)
        Trace.FILE[] === nothing || trace!(page)
    end
    return nothing
end

"""With `sysimage_trace`: what the page's function calls, for the next
image (`Trace`). Never the page's failure."""
function trace!(page::Page)
    try
        Trace.record(page.fn, parentmodule(page.fn))
    catch e
        Log.warn("could not record what the page calls for the pool sysimage: " *
                 sprint(showerror, e), "SCRIPT_FILENAME" => page.path)
    end
    return nothing
end

"""Put the request's world in place: ENV, fds 0–2 and the streams, cwd,
PROGRAM_FILE."""
function enter!(rt::Runtime, params::Dict{String,String}, body::Vector{UInt8},
                resp::ResponseIO, path::String)
    Env.switch!(rt.env, params)
    rt.resp = resp
    rt.inflight = true
    Loader.EXIT_REQUEST[] = -1
    s = Stdio.open_streams(body, resp, params)
    rt.streams = s
    Base.__jfcgi_set_stdio!(s.stdin, s.stdout, s.stderr)
    Base.__jfcgi_set_program_file!(path)
    # As under `julia page.jl`: Base.source_path() is the page, so relative
    # includes resolve against it (and against an included file inside it).
    tls = task_local_storage()
    rt.source_path = get(tls, :SOURCE_PATH, nothing)
    tls[:SOURCE_PATH] = path
    if !is_parent_dir(rt.cwd, path)
        dir = dirname(path)
        try
            isempty(dir) || cd(dir)
            rt.cwd = dir
        catch e
            Log.warn("cannot change to the page's directory: " * sprint(showerror, e),
                     "SCRIPT_FILENAME" => path)
        end
    end
    return nothing
end

"""Is `dir` the directory part of `path`? (Without `dirname`, which is
slow on Julia 1.5, and without allocating.)"""
function is_parent_dir(dir::String, path::String)::Bool
    n = sizeof(dir)
    (n == 0 || sizeof(path) <= n + 1) && return false
    codeunit(path, n + 1) == UInt8('/') || return false
    findnext(isequal(UInt8('/')), codeunits(path), n + 2) === nothing || return false
    return GC.@preserve dir path ccall(:memcmp, Cint, (Ptr{UInt8}, Ptr{UInt8}, Csize_t),
                                        pointer(dir), pointer(path), n) == 0
end

"""Give the worker its streams and PROGRAM_FILE back (ENV and fds 0–1:
see `idle!`)."""
function leave!(rt::Runtime)
    s = rt.streams
    if s !== nothing
        rt.collect |= Stdio.close_streams(s, rt.resp)
        rt.streams = nothing
    end
    Isolation.restore_globals!(rt.baseline)
    Base.__jfcgi_set_stdio!(rt.worker_stdin, rt.worker_stdout, rt.worker_stderr)
    Base.__jfcgi_set_program_file!(rt.program_file)
    tls = task_local_storage()
    rt.source_path === nothing ? delete!(tls, :SOURCE_PATH) : (tls[:SOURCE_PATH] = rt.source_path)
    rt.inflight = false
    Loader.EXIT_REQUEST[] >= 0 && (rt.exit_code = Loader.EXIT_REQUEST[])
    # A page may have cd'ed; one getcwd(2) keeps our idea of the cwd honest.
    Posix.cwd_is(rt.cwd) || (rt.cwd = current_dir())
    return nothing
end

"""
Run (LIFO, output still captured) and remove the `atexit` hooks the page
registered during this request: for a CGI page the process "exits" now.
"""
function run_atexit_hooks!(rt::Runtime, nbefore::Int, params)
    hooks = Base.atexit_hooks
    while length(hooks) > nbefore
        f = popfirst!(hooks)          # atexit pushes to the front: LIFO
        try
            # The hook was defined after this code: ask and call in the latest world.
            Base.invokelatest(applicable, f) ? Base.invokelatest(f) :
                                               Base.invokelatest(f, Int32(0))
        catch e
            e isa PageExit && continue
            failed!(rt, e, catch_backtrace(), params; what="an atexit hook of the page")
        end
    end
    return nothing
end

# ------------------------------------------------------------------ errors

"""
Handle an exception out of a page: `exit()` ends the request normally; any
other error becomes a 500 (or just ends a streamed response) and one log
entry with the backtrace. Returns the app status.
"""
function failed!(rt::Runtime, e, bt, params; what::String="page")::Int
    if e isa PageExit
        rt.exit_code = e.code
        return e.code
    end
    msg = error_text(e, bt)
    streamed = rt.resp.streamed
    Log.error((streamed ? "$what raised an exception after its headers were sent: " :
                          "$what raised an exception: ") * msg, request_fields(params)...)
    body = "500 Internal Server Error\n" * (rt.settings.dev ? "\n" * msg * "\n" : "")
    Output.error_response!(rt.resp, STATUS_500, body,
                           "page raised an exception, see the julia-fcgi log")
    return 1
end

"""The exception with the page's part of the backtrace (the frames above
the worker's own code and the invokelatest/eval that called the page),
each as `function at /full/path:line`, capped at MAX_FRAMES."""
function error_text(e, bt)::String
    io = IOBuffer()
    try
        showerror(io, e)
        e isa Loader.PageSyntaxError && return String(take!(io))
        frames = page_frames(stacktrace(bt))
        print(io, "\nStacktrace:")
        for (i, fr) in enumerate(frames)
            i > MAX_FRAMES && (print(io, "\n … ", length(frames) - MAX_FRAMES, " more frames"); break)
            print(io, "\n [", i, "] ", frame_text(fr))
        end
    catch e2
        print(io, "\n(backtrace unavailable: ", typeof(e2), ")")
    end
    return String(take!(io))
end

function page_frames(frames)
    cut = findfirst(fr -> startswith(String(fr.file), SRC_DIR), frames)
    cut === nothing || (frames = frames[1:cut-1])
    while !isempty(frames) && (occursin("invokelatest", String(frames[end].func)) ||
                               frames[end].func === :eval)
        pop!(frames)
    end
    return frames
end

# `show` abbreviates the file to its base name; the log wants the full path.
function frame_text(fr)::String
    s = sprint(show, fr)
    i = findlast(" at ", s)
    sig = i === nothing ? String(fr.func) : s[1:first(i)-1]
    return string(sig, " at ", fr.file, ":", fr.line, fr.inlined ? " [inlined]" : "")
end

end # module Pages
