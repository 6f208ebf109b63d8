"""
    Config

The worker's settings, read once at start-up from the environment the master
gives it (INTERFACE.md, "Start-up"; the master's side is `src/contract.rs`).
Units are in the names: durations are whole milliseconds (`…_MS`), sizes
whole bytes (`…_BYTES`). The defaults here are the master's
(`tests/contract.rs` checks that both sides agree).

A malformed value is one `error` entry naming the variable, what was
expected and the default used instead, never a silent default: under the
master it means the two sides disagree about the contract. The worker still
starts: one that refused to over a typo would only be restarted in a loop.
"""
module Config

# Run at load time or on rare paths: compile fast rather than optimize
# (about a second less CPU before READY).
Base.Experimental.@optlevel 1

using ..Log

# The variables (INTERFACE.md, "Start-up").
const WORKER = "JULIA_FCGI_WORKER"
const CONTROL_FD = "JULIA_FCGI_CONTROL_FD"
const EXTENSIONS = "JULIA_FCGI_EXTENSIONS"
const DOC_ROOTS = "JULIA_FCGI_DOC_ROOTS"
const DEV = "JULIA_FCGI_DEV"
const ACCESS_LOG = "JULIA_FCGI_ACCESS_LOG"
const MAX_PARAMS_BYTES = "JULIA_FCGI_MAX_PARAMS_BYTES"
const MAX_BODY_BYTES = "JULIA_FCGI_MAX_BODY_BYTES"
const READ_TIMEOUT_MS = "JULIA_FCGI_READ_TIMEOUT_MS"
const FIRST_BYTE_TIMEOUT_MS = "JULIA_FCGI_FIRST_BYTE_TIMEOUT_MS"
const HEADER_TIMEOUT_MS = "JULIA_FCGI_HEADER_TIMEOUT_MS"
const BODY_TIMEOUT_MS = "JULIA_FCGI_BODY_TIMEOUT_MS"
const BODY_MIN_RATE_BYTES_PER_S = "JULIA_FCGI_BODY_MIN_RATE_BYTES_PER_S"
const PRELOAD = "JULIA_FCGI_PRELOAD"

const DEFAULT_EXTENSIONS = [".jl"]
const DEFAULT_MAX_PARAMS_BYTES = 1_048_576
const DEFAULT_MAX_BODY_BYTES = 67_108_864
const DEFAULT_READ_TIMEOUT_MS = 60_000
# A request's deadlines (INTERFACE.md; README, "Slow and idle clients").
const DEFAULT_FIRST_BYTE_TIMEOUT_MS = 2_000
const DEFAULT_HEADER_TIMEOUT_MS = 5_000
const DEFAULT_BODY_TIMEOUT_MS = 20_000
const DEFAULT_BODY_MIN_RATE_BYTES_PER_S = 16_384

# The names before units were part of them, in the units they had then.
# Read only when the new name is unset, with a warning, so that a worker
# started by hand (spawn-fcgi) with the old names keeps its settings.
const LEGACY = Dict(
    READ_TIMEOUT_MS => ("JULIA_FCGI_READ_TIMEOUT", 1000),   # seconds
    MAX_PARAMS_BYTES => ("JULIA_FCGI_MAX_PARAMS", 1),
    MAX_BODY_BYTES => ("JULIA_FCGI_MAX_BODY", 1),
)

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
    project::Union{Nothing,String}  # JULIA_PROJECT as given (Julia already
                                    # activated it at start-up)
    depot::Union{Nothing,String}    # first entry of JULIA_DEPOT_PATH: where
                                    # Julia writes caches and packages
    preload::Vector{String}         # packages to load before READY, in order
    # A request's deadlines: a new connection's first byte, accept (or a
    # kept connection's next first byte) → params complete, params
    # complete → body complete (plus a second per `body_min_rate` bytes
    # received; 0: no such allowance).
    first_byte_timeout_ms::Int
    header_timeout_ms::Int
    body_timeout_ms::Int
    body_min_rate::Int            # bytes per second
end

# The settings as they were before the package fields and the deadlines:
# code that builds `Settings` positionally keeps working, with no project,
# depot or preload and the default deadlines.
Settings(worker, control_fd, extensions, doc_roots, dev, max_params, max_body,
         read_timeout_ms, access_log) =
    Settings(worker, control_fd, extensions, doc_roots, dev, max_params, max_body,
             read_timeout_ms, access_log, nothing, nothing, String[])
Settings(worker, control_fd, extensions, doc_roots, dev, max_params, max_body,
         read_timeout_ms, access_log, project, depot, preload) =
    Settings(worker, control_fd, extensions, doc_roots, dev, max_params, max_body,
             read_timeout_ms, access_log, project, depot, preload,
             DEFAULT_FIRST_BYTE_TIMEOUT_MS, DEFAULT_HEADER_TIMEOUT_MS,
             DEFAULT_BODY_TIMEOUT_MS, DEFAULT_BODY_MIN_RATE_BYTES_PER_S)

"""
    with(s::Settings; field=value...) -> Settings

A copy of `s` with the named fields replaced (e.g. the warm-up's
`with(s; doc_roots=String[], access_log=false)`).
"""
function with(s::Settings; changes...)
    names = fieldnames(Settings)
    for k in keys(changes)
        k in names || throw(ArgumentError("Config.Settings has no field $k"))
    end
    return Settings((haskey(changes, f) ? changes[f] : getfield(s, f) for f in names)...)
end

function invalid(name, s, expected, default)
    Log.error("invalid $name=$(repr(s)): expected $expected; using the default $(repr(default))")
    return default
end

"""The text of `name`, or of its legacy name (with the factor that turns
its unit into the new one); `("", 1)` when neither is set."""
function raw_setting(env, name::String)
    s = strip(get(env, name, ""))
    haskey(LEGACY, name) || return (s, 1, name)
    old, factor = LEGACY[name]
    if !isempty(s)
        isempty(strip(get(env, old, ""))) || Log.warn("$old is ignored: $name is set")
        return (s, 1, name)
    end
    s = strip(get(env, old, ""))
    isempty(s) || Log.warn("$old is deprecated: set $name instead" *
                           (factor == 1 ? "" : " (milliseconds)"))
    return (s, factor, old)
end

function int_setting(env, name::String, default::Int; min::Int=0, unit::String="")::Int
    s, factor, given = raw_setting(env, name)
    isempty(s) && return default
    v = tryparse(Int, s)
    if v === nothing || v < min || v > typemax(Int) ÷ factor
        what = "a whole number" * (isempty(unit) ? "" : " of $unit") * " ≥ $min"
        return invalid(given, s, what, default)
    end
    return v * factor
end

function bool_setting(env, name::String, default::Bool)::Bool
    s = lowercase(strip(get(env, name, "")))
    isempty(s) && return default
    s in ("1", "true") && return true
    s in ("0", "false") && return false
    return invalid(name, s, "1 or 0", default)
end

function extensions(env)::Vector{String}
    s = strip(get(env, EXTENSIONS, ""))
    isempty(s) && return copy(DEFAULT_EXTENSIONS)
    exts = String[]
    for e in split(s, ',')
        e = strip(e)
        isempty(e) && continue
        push!(exts, startswith(e, '.') ? String(e) : "." * e)
    end
    isempty(exts) && return invalid(EXTENSIONS, s, "extensions like .jl", copy(DEFAULT_EXTENSIONS))
    return exts
end

function doc_roots(env)::Vector{String}
    roots = String[]
    for r in split(get(env, DOC_ROOTS, ""), ':')
        isempty(r) && continue
        try
            push!(roots, realpath(r))
        catch e
            # A root that does not exist (yet) cannot contain a page; keep the
            # others rather than opening everything up.
            Log.warn("$DOC_ROOTS entry $(repr(r)) is unusable: " * sprint(showerror, e))
        end
    end
    if isempty(roots) && !isempty(strip(get(env, DOC_ROOTS, "")))
        # Every root was unusable: serving from anywhere would be the unsafe
        # reading of that, so allow nothing.
        push!(roots, "/nonexistent/julia-fcgi-no-usable-doc-root")
    end
    return roots
end

"""`JULIA_PROJECT` as given; a directory without a Project.toml is said in
the log (Julia activates it anyway, and then finds no package in it)."""
function project(env)::Union{Nothing,String}
    p = String(strip(get(env, "JULIA_PROJECT", "")))
    isempty(p) && return nothing
    # `@.`, `@name`: environments only Julia resolves.
    startswith(p, '@') && return p
    has_project = isfile(p) ||
        any(n -> isfile(joinpath(p, n)), ("Project.toml", "JuliaProject.toml"))
    has_project || Log.error("JULIA_PROJECT=$(repr(p)) is not a directory with a Project.toml; " *
                             "pages will not find its packages")
    return p
end

"""The depot Julia writes into: the first entry of `JULIA_DEPOT_PATH`."""
function depot(env)::Union{Nothing,String}
    for entry in split(get(env, "JULIA_DEPOT_PATH", ""), ':')
        isempty(entry) || return String(entry)
    end
    return nothing
end

function preload(env)::Vector{String}
    names = String[]
    for name in split(get(env, PRELOAD, ""), ',')
        name = String(strip(name))
        isempty(name) && continue
        if Base.isidentifier(name)
            push!(names, name)
        else
            Log.error("$PRELOAD entry $(repr(name)) is not a package name; not loading it")
        end
    end
    return names
end

"""
    load(env=ENV) -> Settings

Read the settings from `env` (any `AbstractDict{String,String}`, so tests can
pass a `Dict`).
"""
function load(env=ENV)::Settings
    return Settings(
        int_setting(env, WORKER, 0),
        int_setting(env, CONTROL_FD, -1; min=-1),
        extensions(env),
        doc_roots(env),
        bool_setting(env, DEV, false),
        int_setting(env, MAX_PARAMS_BYTES, DEFAULT_MAX_PARAMS_BYTES; min=1, unit="bytes"),
        int_setting(env, MAX_BODY_BYTES, DEFAULT_MAX_BODY_BYTES; unit="bytes"),
        int_setting(env, READ_TIMEOUT_MS, DEFAULT_READ_TIMEOUT_MS; min=1, unit="milliseconds"),
        bool_setting(env, ACCESS_LOG, false),
        project(env),
        depot(env),
        preload(env),
        int_setting(env, FIRST_BYTE_TIMEOUT_MS, DEFAULT_FIRST_BYTE_TIMEOUT_MS; min=1,
                    unit="milliseconds"),
        int_setting(env, HEADER_TIMEOUT_MS, DEFAULT_HEADER_TIMEOUT_MS; min=1, unit="milliseconds"),
        int_setting(env, BODY_TIMEOUT_MS, DEFAULT_BODY_TIMEOUT_MS; min=1, unit="milliseconds"),
        int_setting(env, BODY_MIN_RATE_BYTES_PER_S, DEFAULT_BODY_MIN_RATE_BYTES_PER_S;
                    unit="bytes per second"),
    )
end

end # module Config
