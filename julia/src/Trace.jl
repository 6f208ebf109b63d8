"""
    Trace

What a page calls, for the pool sysimage (`sysimage_trace`, README "Pool
sysimage"). A worker started with `--trace-compile=FILE` has julia record a
`precompile(…)` statement for each specialization it compiles through
dispatch; the build replays them into the image. A page's own function
(`__page_main__` of a compiled page, `handle` of a handler page) lives in a
module of its own that no image can hold, and julia compiles everything
that function calls with known types in the same step, recording nothing
for them: `det(::Matrix{Float64})` in a page is compiled on every fresh
worker although `LinearAlgebra` is in the image.

So when julia traces, the first run of each page function is followed by a
look at its optimized code: every specialization it invokes directly
(outside the page's module) goes, as a `precompile` statement, into
`FILE` with `.pages.jl` for `.jl`, next to julia's own trace, where the
build finds it. Not tracing costs nothing.
"""
module Trace

Base.Experimental.@optlevel 1

"""The `.pages.jl` file beside julia's `--trace-compile` file, or nothing
when julia does not trace (or traces to stderr)."""
function pages_file()::Union{String,Nothing}
    p = Base.JLOptions().trace_compile
    return p == C_NULL ? nothing : pages_path(unsafe_string(p))
end

function pages_path(trace::String)::Union{String,Nothing}
    (isempty(trace) || trace == "stderr") && return nothing
    return (endswith(trace, ".jl") ? trace[1:end-3] : trace) * ".pages.jl"
end

const FILE = Ref{Union{String,Nothing}}(nothing)
const DONE = IdDict{Any,Nothing}()
const WRITTEN = Set{String}()

"""At start-up (not at image build time: the path is this process's)."""
function __init__()
    FILE[] = pages_file()
    empty!(DONE)
    empty!(WRITTEN)
    return nothing
end

"""
    record(f, page_module)

Once per page function `f` (called without arguments), when tracing: the
specializations `f`'s optimized code invokes, outside `page_module`,
appended to the pages file. A failure is logged by the caller's catch, never
the page's.
"""
function record(f, page_module::Module)
    file = FILE[]
    (file === nothing || haskey(DONE, f)) && return nothing
    DONE[f] = nothing
    f isa Function || return nothing
    lines = String[]
    for stmt in statements(f, page_module)
        stmt in WRITTEN && continue
        push!(WRITTEN, stmt)
        push!(lines, stmt)
    end
    isempty(lines) && return nothing
    open(file, "a") do io
        for l in lines
            println(io, l)
        end
    end
    return nothing
end

"""The `precompile(Tuple{…})` statements of the specializations `f()`
invokes directly, outside `page_module`."""
function statements(f, page_module::Module)::Vector{String}
    out = String[]
    for (ci, _) in Base.code_typed(f, (); optimize=true)
        for st in ci.code
            st isa Expr && st.head === :invoke || continue
            mi = st.args[1]
            # Julia 1.12+ may name the CodeInstance (its `def` the
            # MethodInstance, or an override of one: skipped).
            mi isa Core.CodeInstance && (mi = mi.def)
            mi isa Core.MethodInstance || continue
            m = mi.def
            m isa Method && m.module === page_module && continue
            T = mi.specTypes
            mentions(T, page_module) && continue
            push!(out, "precompile(" * type_string(T) * ")")
        end
    end
    return out
end

"""Whether type `T` names something of `m` (a page's struct): no image
can hold that."""
function mentions(T, m::Module)::Bool
    T isa UnionAll && return mentions(T.body, m) ||
                             mentions(T.var.ub, m) || mentions(T.var.lb, m)
    T isa Union && return mentions(T.a, m) || mentions(T.b, m)
    T isa DataType || return false
    T.name.module === m && return true
    return any(p -> mentions(p, m), T.parameters)
end

"""`T` with every name but Core's qualified by its module, as the build's
staging area reads them (`typeof(LinearAlgebra.det)`, `Base.Dict{…}`)."""
type_string(T) = sprint(show, T; context=:module => Core)

end # module Trace
