"""
    Env

During a request the process environment (`ENV`) holds exactly that
request's FastCGI params, as CGI promises; between requests it holds the
worker's own environment.

Switching is a diff — unset what the target lacks, set what differs — because
glibc's `setenv`/`unsetenv` scan the whole environment on every call: a full
swap to ~30 params and back costs ~27 µs, a diff between two consecutive
requests ~2 µs (measured on Julia 1.5, see README). For the same reason the
worker's own environment is restored lazily: when the worker goes idle
(before it blocks waiting for a connection or the next request, and before it
lets background tasks run), not between two requests that arrive back to
back.

A page may change `ENV` itself. That is detected cheaply by comparing the C
`environ` pointer array with a snapshot taken after our own switch; only then
is the real environment read back (slow path) before diffing.
"""
module Env

# The address of C's `environ` belongs to the running process: looked up
# when used, never stored in a constant, which a system image would keep
# from the process that built it (the pool sysimage did, and crashed).
environ() = cglobal(:environ, Ptr{Ptr{UInt8}})

mutable struct EnvState
    base::Dict{String,String}      # the worker's own environment
    current::Dict{String,String}   # what the process environment holds now
    snap::Vector{Ptr{UInt8}}       # `environ` right after our last switch
end

"""Capture the worker's own environment (call once at start-up)."""
function EnvState()
    base = read_environment()
    st = EnvState(base, base, Ptr{UInt8}[])
    snapshot!(st.snap)
    return st
end

"""The process environment as a Dict (the slow path: allocates every entry)."""
function read_environment()::Dict{String,String}
    d = Dict{String,String}()
    for (k, v) in ENV
        d[k] = v
    end
    return d
end

function snapshot!(v::Vector{Ptr{UInt8}})
    empty!(v)
    p = unsafe_load(environ())
    p == C_NULL && return v
    i = 1
    while (q = unsafe_load(p, i)) != C_NULL
        push!(v, q)
        i += 1
    end
    return v
end

"""Has anything but us changed the environment since the last snapshot?"""
function changed(v::Vector{Ptr{UInt8}})::Bool
    p = unsafe_load(environ())
    p == C_NULL && return !isempty(v)
    for i in 1:length(v)
        unsafe_load(p, i) == @inbounds(v[i]) || return true
    end
    return unsafe_load(p, length(v) + 1) != C_NULL
end

# Names and values that cannot be environment variables (empty name, `=` in
# a name, NUL anywhere) are skipped: setenv would reject them.
valid_name(k::String) = !isempty(k) && !occursin('=', k) && !occursin('\0', k)
valid_value(v::String) = !occursin('\0', v)

function unset!(k::String)
    valid_name(k) && ccall(:unsetenv, Cint, (Ptr{UInt8},), k)
    return nothing
end

function set!(k::String, v::String)
    valid_name(k) && valid_value(v) && ccall(:setenv, Cint, (Ptr{UInt8}, Ptr{UInt8}, Cint), k, v, 1)
    return nothing
end

"""
    switch!(st, target)

Make the process environment equal `target` (which must not be mutated
afterwards: it is remembered as the current state, not copied).
"""
function switch!(st::EnvState, target::Dict{String,String})
    if changed(st.snap)
        st.current = read_environment()
    end
    cur = st.current
    if cur !== target
        for k in keys(cur)
            haskey(target, k) || unset!(k)
        end
        for (k, v) in target
            old = get(cur, k, nothing)
            (old === nothing || old != v) && set!(k, v)
        end
        st.current = target
    end
    snapshot!(st.snap)
    return nothing
end

"""Give the process its own environment back (cheap when it already has it)."""
function restore!(st::EnvState)
    (st.current === st.base && !changed(st.snap)) && return nothing
    switch!(st, st.base)
    return nothing
end

"""Is the worker's own environment in place?"""
isrestored(st::EnvState) = st.current === st.base && !changed(st.snap)

end # module Env
