# The pool sysimage's contents: run by `julia-fcgi sysimage build` as
#
#   julia --startup-file=no --history-file=no --compiled-modules=no \
#         -J BASE_IMAGE --output-o OBJECT build.jl
#
# It loads what the image is to hold: the worker's modules (from
# JULIA_FCGI_SYSIMAGE_WORKER, the directory of worker.jl), the packages of
# JULIA_FCGI_SYSIMAGE_PACKAGES (comma separated, loaded as `using` would, in
# the pool's project), and replays the `precompile` statements of the files
# in JULIA_FCGI_SYSIMAGE_STATEMENTS (colon separated; recorded with
# `--trace-compile`). Julia then writes everything loaded and compiled here
# as native code into OBJECT, which the C compiler links into the image.
#
# Nothing of the worker runs here: only its definitions are loaded and its
# methods compiled. Whatever belongs to a running process (descriptors,
# pointers, the environment, the pid) must be set up at run time by the
# worker itself (`main`, `init!`, `__init__`); a value computed while
# loading would be the build process's, frozen into the image.
#
# Output on stdout, one line each, TAB separated, read by the master:
#   progress  TEXT                        what it is doing now
#   package   NAME  UUID  DIR             a package loaded (the listed ones and their dependencies)
#   stdlib    NAME                        a standard library the image holds
#   file      PATH                        a source file of a package it holds
#   statements  OK  FAILED  REJECTED      precompile statements replayed
# Anything else is Julia's own output, passed on as it is.

# Building an image, julia runs no module's `__init__` (jl_init_restored_modules
# skips them while generating output): what Base's and Sys's would set up is
# set up here, for this process, as PackageCompiler does. The image keeps
# none of it; a worker's own start runs them all.
Base.reinit_stdio()
@eval Sys BINDIR = ccall(:jl_get_julia_bindir, Any, ())::String
@eval Sys STDLIB = abspath(Sys.BINDIR, "..", "share", "julia", "stdlib",
                           string('v', VERSION.major, '.', VERSION.minor))
Base.init_depot_path()
Base.init_load_path()
isdefined(Base, :init_active_project) && Base.init_active_project()

const WORKER_DIR = get(ENV, "JULIA_FCGI_SYSIMAGE_WORKER", "")
const PACKAGES = filter(!isempty, split(get(ENV, "JULIA_FCGI_SYSIMAGE_PACKAGES", ""), ','))
const STATEMENTS = filter(!isempty, split(get(ENV, "JULIA_FCGI_SYSIMAGE_STATEMENTS", ""), ':'))

report(fields...) = (println(join(fields, '\t')); flush(stdout))
progress(text) = report("progress", text)

isempty(WORKER_DIR) && error("JULIA_FCGI_SYSIMAGE_WORKER is not set")
ccall(:jl_generating_output, Cint, ()) == 1 ||
    error("build.jl only makes sense with --output-o (julia-fcgi sysimage build runs it)")

const BEFORE = Set(keys(Base.loaded_modules))

progress("loading the worker from $WORKER_DIR")
Base.include(Main, joinpath(WORKER_DIR, "src", "JuliaFCGI.jl"))

for (i, name) in enumerate(PACKAGES)
    progress("loading package $name ($i of $(length(PACKAGES)))")
    Base.require(Main, Symbol(name))
end

const STDLIB = normpath(Sys.STDLIB)
instdlib(dir) = startswith(normpath(dir), STDLIB)

"""Every file under the package's `src/`, and its Project.toml: what the
master hashes to notice that the package changed since the build."""
function package_files(dir::String)
    files = String[]
    for name in ("Project.toml", "JuliaProject.toml")
        isfile(joinpath(dir, name)) && push!(files, joinpath(dir, name))
    end
    src = joinpath(dir, "src")
    isdir(src) || return files
    for (root, _, names) in walkdir(src), name in names
        push!(files, joinpath(root, name))
    end
    return files
end

for (id, mod) in Base.loaded_modules
    dir = pkgdir(mod)
    dir === nothing && continue
    if instdlib(dir)
        report("stdlib", id.name)
    elseif !(id in BEFORE)
        report("package", id.name, id.uuid === nothing ? "" : string(id.uuid), dir)
        foreach(f -> report("file", f), package_files(dir))
    end
end

# ------------------------------------------------------------------ statements

# Statements come from `--trace-compile` files, which the service user's
# workers may write (the real-traffic trace): only `precompile(T)` with `T` a
# plain type expression is accepted, so that replaying them as root runs no
# code but type look-ups. Anything else is rejected, not evaluated.
function type_ok(x)::Bool
    x isa Symbol && return true
    x isa QuoteNode && return x.value isa Symbol || isbits(x.value)
    x isa Union{Number,Char,String,Nothing} && return true
    x isa Expr || return false
    h, a = x.head, x.args
    h === :. && return length(a) == 2 && type_ok(a[1]) && a[2] isa QuoteNode && a[2].value isa Symbol
    # `Char(0x79000000)` and `Symbol("yyyy-mm-dd")`: a character or symbol
    # parameter (Dates' DateFormat{Symbol("yyyy-mm-dd"), …DatePart{'y'}…}).
    h === :call && length(a) == 2 && a[1] === :Char && return a[2] isa Unsigned
    h === :call && length(a) == 2 && a[1] === :Symbol && return a[2] isa String
    h === :call && return length(a) == 2 && a[1] === :typeof && type_ok(a[2])
    h in (:curly, :where, :tuple, :<:, :>:) && return all(type_ok, a)
    return false
end

"""The type of a `precompile(T)` statement, or nothing when it is not one."""
function statement_type(line::AbstractString)
    ex = try
        Meta.parse(line; raise=false)
    catch
        return nothing
    end
    ex isa Expr && ex.head === :call && length(ex.args) == 2 && ex.args[1] === :precompile ||
        return nothing
    return type_ok(ex.args[2]) ? chars(ex.args[2]) : nothing
end

"""julia's trace writes a `Char` parameter as `Char(0x79000000)`: its bits,
not its code point (`'y'`)."""
chars(x) = x
function chars(x::Expr)
    x.head === :call && x.args[1] === :Char && x.args[2] isa Unsigned &&
        return reinterpret(Char, UInt32(x.args[2]))
    return Expr(x.head, map(chars, x.args)...)
end

"""A module in which every loaded module's name means that module, as in
the process that recorded the statements."""
function staging_area()
    m = Module(:JuliaFCGIPrecompile)
    names = Dict{Symbol,Module}(:Main => Main, :JuliaFCGI => Main.JuliaFCGI)
    for (id, mod) in Base.loaded_modules
        names[Symbol(id.name)] = mod
    end
    for (name, mod) in names
        isdefined(m, name) || Core.eval(m, Expr(:const, Expr(:(=), name, mod)))
    end
    return m
end

function replay(files)
    area = staging_area()
    seen = Set{String}()
    ok = failed = rejected = 0
    for file in files
        isfile(file) || continue
        progress("replaying precompile statements from $file")
        for line in eachline(file)
            line = strip(line)
            (isempty(line) || startswith(line, '#') || line in seen) && continue
            push!(seen, line)
            T = statement_type(line)
            if T === nothing
                rejected += 1
                continue
            end
            try
                t = Core.eval(area, T)
                if t isa Type && precompile(t)
                    ok += 1
                else
                    failed += 1
                end
            catch
                # A page's module or an anonymous function of another build:
                # nothing to compile ahead.
                failed += 1
            end
        end
    end
    report("statements", ok, failed, rejected)
end

replay(STATEMENTS)

# ------------------------------------------------------------------ clean up

# What a running process sets up for itself must not be kept from this one:
# Base's __init__ fills the load and depot paths again at every start, and
# _start sets ARGS and PROGRAM_FILE.
empty!(Base.atexit_hooks)
empty!(Base._require_dependencies)
empty!(Core.ARGS)
empty!(Base.ARGS)
empty!(LOAD_PATH)
empty!(DEPOT_PATH)
progress("generating native code for the image (the longest step)")
