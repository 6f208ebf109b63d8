"""
    Config

The worker's settings, read once at start-up from the environment the master
gives it (INTERFACE.md, "Start-up"). A malformed value is logged and replaced
by its default: a worker that refuses to start over a typo would only be
restarted in a loop by the master.
"""
module Config

# Run at load time or on rare paths: compile fast rather than optimize
# (about a second less CPU before READY).
Base.Experimental.@optlevel 1

using ..Log

"""Immutable settings of one worker process."""
struct Settings
    worker::Int                   # JULIA_FCGI_WORKER (0 = standalone)
    control_fd::Int               # JULIA_FCGI_CONTROL_FD, -1 = none
    extensions::Vector{String}    # allowed page extensions, e.g. [".jl"]
    doc_roots::Vector{String}     # realpath'ed; empty = anywhere
    dev::Bool                     # 500 responses carry exception + backtrace
    max_params::Int               # bytes of FastCGI params per request
    max_body::Int                 # bytes of request body (more → 413)
    read_timeout_ms::Int          # silence allowed while reading a request
    access_log::Bool              # one ACCESS line per request to the master
end

const DEFAULT_MAX_PARAMS = 1_048_576
const DEFAULT_MAX_BODY = 67_108_864
const DEFAULT_READ_TIMEOUT = 60

function int_setting(env, name::String, default::Int; min::Int=0)::Int
    s = strip(get(env, name, ""))
    isempty(s) && return default
    v = tryparse(Int, s)
    if v === nothing || v < min
        Log.warn("ignoring invalid $name=$(repr(s)), using $default")
        return default
    end
    return v
end

function extensions(env)::Vector{String}
    s = strip(get(env, "JULIA_FCGI_EXTENSIONS", ""))
    isempty(s) && return [".jl"]
    exts = String[]
    for e in split(s, ',')
        e = strip(e)
        isempty(e) && continue
        push!(exts, startswith(e, '.') ? String(e) : "." * e)
    end
    return isempty(exts) ? [".jl"] : exts
end

function doc_roots(env)::Vector{String}
    roots = String[]
    for r in split(get(env, "JULIA_FCGI_DOC_ROOTS", ""), ':')
        isempty(r) && continue
        try
            push!(roots, realpath(r))
        catch e
            # A root that does not exist (yet) cannot contain a page; keep the
            # others rather than opening everything up.
            Log.warn("JULIA_FCGI_DOC_ROOTS entry $(repr(r)) is unusable: " *
                     sprint(showerror, e))
        end
    end
    if isempty(roots) && !isempty(strip(get(env, "JULIA_FCGI_DOC_ROOTS", "")))
        # Every root was unusable: serving from anywhere would be the unsafe
        # reading of that, so allow nothing.
        push!(roots, "/nonexistent/julia-fcgi-no-usable-doc-root")
    end
    return roots
end

"""
    load(env=ENV) -> Settings

Read the settings from `env` (any `AbstractDict{String,String}`, so tests can
pass a `Dict`).
"""
function load(env=ENV)::Settings
    cfd = int_setting(env, "JULIA_FCGI_CONTROL_FD", -1; min=-1)
    return Settings(
        int_setting(env, "JULIA_FCGI_WORKER", 0),
        cfd,
        extensions(env),
        doc_roots(env),
        strip(get(env, "JULIA_FCGI_DEV", "0")) == "1",
        int_setting(env, "JULIA_FCGI_MAX_PARAMS", DEFAULT_MAX_PARAMS; min=1),
        int_setting(env, "JULIA_FCGI_MAX_BODY", DEFAULT_MAX_BODY),
        1000 * int_setting(env, "JULIA_FCGI_READ_TIMEOUT", DEFAULT_READ_TIMEOUT; min=1),
        strip(get(env, "JULIA_FCGI_ACCESS_LOG", "0")) == "1",
    )
end

end # module Config
