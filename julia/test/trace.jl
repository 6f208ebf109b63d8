# What a page's function calls, recorded for the pool sysimage (Trace).
using .JuliaFCGI: Trace

@testset "trace: a page's callees for the sysimage" begin
    @test Trace.pages_path("/var/lib/x/worker-1-17.jl") == "/var/lib/x/worker-1-17.pages.jl"
    @test Trace.pages_path("/tmp/trace") == "/tmp/trace.pages.jl"
    @test Trace.pages_path("stderr") === nothing
    @test Trace.pages_path("") === nothing

    # A page module as the Loader makes one: its own struct and function,
    # and calls into Base and a standard library with concrete types.
    m = Module(:Page)
    Core.eval(m, quote
        using Statistics
        struct Point; x::Float64; end
        norm1(p::Point) = abs(p.x)
        function __page_main__()
            v = [1.0, 2.0, 4.0]
            s = string(round(std(v); digits=3), " ", join(["a", "b"], ","))
            p = norm1(Point(-2.0))
            return (s, p, [Point(1.0)])
        end
    end)
    f = Base.invokelatest(getfield, m, :__page_main__)
    Base.invokelatest(f)
    stmts = Base.invokelatest(Trace.statements, f, m)
    @test !isempty(stmts)
    @test any(s -> occursin("Statistics.", s), stmts)
    # Nothing of the page's own: no image can hold it.
    @test !any(s -> occursin("Page", s), stmts)
    # Each is a statement the build replays: it parses and compiles in a
    # module that sees the loaded modules by name (build.jl's staging area).
    area = Module(:Staging)
    Core.eval(area, :(const Statistics = $(Base.loaded_modules[Base.PkgId(Base.UUID("10745b16-79ce-11e8-11f9-7d13ad32a3b2"), "Statistics")])))
    Core.eval(area, :(const JuliaFCGI = $JuliaFCGI))
    for s in stmts
        ex = Meta.parse(s)
        @test ex.head === :call && ex.args[1] === :precompile
        @test precompile(Core.eval(area, ex.args[2]))
    end

    # record: once per function, appended beside the trace; nothing when
    # julia does not trace.
    dir = mktempdir()
    file = joinpath(dir, "worker-1-5.pages.jl")
    saved = Trace.FILE[]
    try
        Trace.FILE[] = nothing
        Base.invokelatest(Trace.record, f, m)
        @test !isfile(file)
        Trace.FILE[] = file
        empty!(Trace.DONE); empty!(Trace.WRITTEN)
        Base.invokelatest(Trace.record, f, m)
        lines = readlines(file)
        @test sort(lines) == sort(unique(stmts))
        Base.invokelatest(Trace.record, f, m)
        @test readlines(file) == lines
    finally
        Trace.FILE[] = saved
        empty!(Trace.DONE); empty!(Trace.WRITTEN)
        rm(dir; recursive=true)
    end
end
