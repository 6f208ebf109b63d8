# What the worker makes of the environment it was started with: prints
# `Config.load()` as one JSON object, a key per field, and what Julia itself
# made of the variables it reads. `tests/contract.rs`
# runs it with the environment the master builds (src/contract.rs) and checks
# that every setting arrived with the meaning it was given. Log entries go to
# stderr, as in a worker started without a master.
#
#   julia --startup-file=no julia/test/contract_probe.jl
module JuliaFCGI
const SRC = joinpath(@__DIR__, "..", "src")
include(joinpath(SRC, "Posix.jl"))
include(joinpath(SRC, "Log.jl"))
include(joinpath(SRC, "Config.jl"))
end

function json(io::IO, s::AbstractString)
    print(io, '"')
    for c in s
        if c == '"' || c == '\\'
            print(io, '\\', c)
        elseif c < ' '
            print(io, "\\u", string(UInt16(c), base=16, pad=4))
        else
            print(io, c)
        end
    end
    print(io, '"')
end
json(io::IO, x::Union{Integer,Bool}) = print(io, x)
json(io::IO, ::Nothing) = print(io, "null")
function json(io::IO, v::AbstractVector)
    print(io, '[')
    for (i, x) in enumerate(v)
        i > 1 && print(io, ',')
        json(io, x)
    end
    print(io, ']')
end

function json(io::IO, fields::Vector{<:Pair})
    print(io, '{')
    for (i, (k, v)) in enumerate(fields)
        i > 1 && print(io, ',')
        json(io, String(k))
        print(io, ':')
        json(io, v)
    end
    print(io, '}')
end

# `config`: what Config.load() read. `julia`: what Julia itself made of the
# variables it reads at start-up, before any worker code runs.
let s = JuliaFCGI.Config.load(), io = IOBuffer()
    json(io, [
        "config" => [f => getfield(s, f) for f in fieldnames(typeof(s))],
        "julia" => [
            "HOME" => get(ENV, "HOME", nothing),
            "PATH" => get(ENV, "PATH", nothing),
            "LANG" => get(ENV, "LANG", nothing),
            "LC_ALL" => get(ENV, "LC_ALL", nothing),
            "nthreads" => Threads.nthreads(),
            "DEPOT_PATH" => copy(DEPOT_PATH),
            "LOAD_PATH" => copy(LOAD_PATH),
            "active_project" => Base.active_project(),
        ],
    ])
    println(io)
    print(String(take!(io)))
end
