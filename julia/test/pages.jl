# Page analysis and the CGI runtime, in process (no sockets).
using .JuliaFCGI: Transform, Loader, Pages, Output, Config, Log

free(src) = Transform.free_symbols(Meta.parse(src))
planned(src) = Transform.plan(Transform.statements(Loader.parse_page(src, "/t/page.jl")))

@testset "scope analysis" begin
    @test free("f(x) = x + y") == Set([:+, :y])
    fs = free("""function g(a; k=b)
                     c = a
                     for i in 1:a
                         d = i
                     end
                     return c + d + e
                 end""")
    @test :b in fs && :d in fs && :e in fs
    @test isempty(intersect(fs, Set([:a, :c, :i, :k])))
    @test free("h() = [i * j for i in 1:3 if i > m]") ⊇ Set([:j, :m])
    @test !(:i in free("h() = [i * j for i in 1:3]"))
    @test free("q() = let z = w; z + v end") ⊇ Set([:w, :v])
    @test !(:z in free("q() = let z = w; z + v end"))
    fs = free("function t() try; r = 1; catch err; (err, r); end end")
    @test :r in fs && !(:err in fs)           # try and catch are separate scopes
    fs = free("struct S{T} <: Abs; x::T; y::V; S(a) = new(a, b); end")
    @test fs ⊇ Set([:V, :Abs, :b]) && isempty(intersect(fs, Set([:T, :x, :y, :a, :new])))
    fs = free("f() = :(a + \$b)")
    @test :b in fs && !(:a in fs)
    @test :p in free("k() = (p = 1, q = p)")  # named-tuple fields are not variables
    @test :w in free("m(x) = x -> x + w")
    @test Transform.assigned(Transform.statements(Meta.parse(
        "begin x = 1; (a, b) = t; for i in 1:2; y += 1; end; v::Int = 2 end"))) ==
        Set([:x, :a, :b, :i, :y, :v])
end

@testset "plans" begin
    @test planned("function handle() println(1) end").kind === :handler
    @test planned("const X = 1\nhandle() = X").kind === :handler
    @test planned("@inline handle() = 1").kind === :handler
    p = planned("using Printf\nconst A = 1\nconst B = ENV[\"X\"]\nstruct P; x; end\nf(x) = x\nprintln(f(A))\ny = 2")
    @test p.kind === :compiled
    @test [s.line.line for s in p.hoisted] == [1, 2, 4, 5]
    @test p.main[1].ex == :(B = ENV["X"])      # a computed const runs per request
    @test planned("x = 1\nglobal y = 2").kind === :fallback
    @test planned("f() = (global g = 1)\nf()").kind === :fallback
    @test planned("@eval z = 1").kind === :fallback
    @test planned("eval(:(z = 1))").kind === :fallback
    @test planned("if true\n f() = 1\nend").kind === :fallback
    @test planned("if true\n using Printf\nend").kind === :fallback
    @test planned("for f in (\"a.jl\",); include(f); end").kind === :fallback
    @test_throws Loader.PageSyntaxError Loader.parse_page("x = (\n", "/t/p.jl")
    err = try Loader.parse_page("a = 1\nb = 2\nc = )\n", "/t/p.jl") catch e; e end
    @test occursin("/t/p.jl:3", err.msg)
end

function write_page(dir, name, text)
    path = joinpath(dir, name)
    mkpath(dirname(path))
    write(path, text)
    return path
end

function serve(rt, path; query="", body="", method="GET", extra=Dict{String,String}(),
               idle=true)
    params = merge(Dict("SCRIPT_FILENAME" => path, "QUERY_STRING" => query,
                        "REQUEST_METHOD" => method, "REQUEST_URI" => "/" * basename(path),
                        "CONTENT_LENGTH" => string(sizeof(body))), extra)
    resp = Output.reset!(Output.ResponseIO(), -1, 1)
    status = Pages.serve!(rt, params, Vector{UInt8}(body), resp)
    idle && Pages.idle!(rt)         # give the test process its ENV back
    page = get(rt.cache, path, nothing)
    return (out=String(resp.buf.data[1:resp.buf.len]), status=status, err=resp.err,
            kind=page === nothing ? :none : page.kind, reason=page === nothing ? "" : page.reason)
end

settings(; roots=String[], dev=false) =
    Config.Settings(0, -1, [".jl"], roots, dev, 1 << 20, 1 << 26, 60_000, false)

const HDR = "Content-Type: text/plain\n\n"

"""`f(www, loglines)` in a fresh page directory whose `log.txt` is the
worker's log (`loglines()` its entries); all put back afterwards."""
function with_page_dir(f)
    www = realpath(mktempdir())
    logpath = joinpath(www, "log.txt")
    logfd = ccall(:open, Cint, (Cstring, Cint, Cint), logpath, 0o1101, 0o600)
    Log.init!(logfd; control=true)
    try
        return f(www, () -> filter(!isempty, split(read(logpath, String), '\n')))
    finally
        Log.init!(2; control=false)
        ccall(:close, Cint, (Cint,), logfd)
        cd(@__DIR__)
        rm(www; recursive=true, force=true)
    end
end

@testset "CGI runtime" begin with_page_dir() do www, loglines
    rt = Pages.Runtime(settings())
        p = write_page(www, "soft.jl", "println(\"$(escape_string(HDR))\")\nx = 0\nfor i in 1:3\n    x += i\nend\nprintln(x)\n")
        r = serve(rt, p)
        @test r.kind === :compiled && endswith(r.out, "\n6\n")

        p = write_page(www, "funcs.jl", """
            using Printf
            const GREETING = "Hi"
            struct Point
                x::Float64
                y::Float64
            end
            norm2(p::Point) = sqrt(p.x^2 + p.y^2)
            function greet(name)
                s = 0
                for c in name
                    s += 1
                end
                return "\$GREETING \$name (\$s)"
            end
            macro twice(ex)
                :(\$(esc(ex)) * 2)
            end
            const QS = get(ENV, "QUERY_STRING", "")
            name = isempty(QS) ? "nobody" : QS
            x = 3.0; y = 4.0
            print("$(escape_string(HDR))")
            println(greet(name))
            @printf("%.1f\\n", norm2(Point(x, y)))
            println(@twice 21)
            println(PROGRAM_FILE == @__FILE__, " ", pwd() == @__DIR__, " ", @__FILE__)
            """)
        r1 = serve(rt, p; query="a")
        r2 = serve(rt, p; query="bob")
        @test r1.kind === :compiled
        @test r1.out == HDR * "Hi a (1)\n5.0\n42\ntrue true $p\n"
        @test r2.out == HDR * "Hi bob (3)\n5.0\n42\ntrue true $p\n"

        p = write_page(www, "refglobal.jl", "counter = 10\nbump() = counter + 1\nprint(\"$(escape_string(HDR))\")\nprintln(bump())\n")
        r = serve(rt, p)
        @test r.kind === :fallback && occursin("counter", r.reason) && r.out == HDR * "11\n"
        p = write_page(www, "evals.jl", "@eval z = 20\nprint(\"$(escape_string(HDR))\")\nprintln(z + 1)\n")
        r = serve(rt, p)
        @test r.kind === :fallback && r.out == HDR * "21\n"
        # The fallback runs loops with soft scope too, like the compiled form.
        p = write_page(www, "fbeval.jl", "global z = 1\neval(:(z += 1))\nprint(z)\nexit(2)\nprint(\"not reached\")\n")
        r = serve(rt, p)
        @test r.kind === :fallback && r.out == "2" && rt.exit_code == 2
        rt.exit_code = -1
        p = write_page(www, "fbsoft.jl", "global t = 0\nfor i in 1:4\n t += i\nend\nprint(t)\n")
        @test serve(rt, p).out == "10"

        write_page(www, "lib/inner.jl", "inner(x) = 10x\n")
        write_page(www, "lib/helper.jl", "include(\"inner.jl\")\nhelper(x) = inner(x) + 1\n")
        p = write_page(www, "incl.jl", "include(\"lib/helper.jl\")\nprint(\"$(escape_string(HDR))\")\nprintln(helper(2))\n")
        r = serve(rt, p)
        @test r.kind === :compiled && r.out == HDR * "21\n"
        write_page(www, "lib/inner.jl", "inner(x) = 100x\n")   # editing an included file
        @test serve(rt, p).out == HDR * "201\n"
        write_page(www, "state.jl", "hits = 0\n")
        p = write_page(www, "inclstate.jl", "include(\"state.jl\")\nhits += 1\nprint(hits)\n")
        r1 = serve(rt, p); r2 = serve(rt, p)
        @test r1.kind === :fallback && r1.out == "1" && r2.out == "1"   # fresh each time

        n = length(Base.atexit_hooks)
        p = write_page(www, "atexit.jl", "print(\"$(escape_string(HDR))\")\natexit(() -> println(\"registered first, runs last\"))\natexit(() -> println(\"runs first\"))\nprintln(\"body\")\n")
        @test serve(rt, p).out == HDR * "body\nruns first\nregistered first, runs last\n"
        @test length(Base.atexit_hooks) == n
        p = write_page(www, "atexitfail.jl", "atexit(() -> print(\"hook output\"))\nerror(\"fails\")\n")
        r = serve(rt, p)
        @test startswith(r.out, "Status: 500") && !occursin("hook output", r.out)
        @test length(Base.atexit_hooks) == n

        p = write_page(www, "exit.jl", "print(\"$(escape_string(HDR))\")\nprintln(\"before\")\nexit(3)\nprintln(\"after\")\n")
        r = serve(rt, p)
        @test r.out == HDR * "before\n" && rt.exit_code == 3
        rt.exit_code = -1
        p = write_page(www, "exitcaught.jl", "try\n exit(4)\ncatch\nend\nprint(\"still here\")\n")
        @test serve(rt, p).out == "still here" && rt.exit_code == 4
        rt.exit_code = -1

        p = write_page(www, "env.jl", "print(\"$(escape_string(HDR))\")\nfor k in sort(collect(keys(ENV)))\n println(k, \"=\", ENV[k])\nend\nprint(read(stdin, String))\n")
        r1 = serve(rt, p; query="q=1", body="the body", extra=Dict("HTTP_X_FIRST" => "1"))
        r2 = serve(rt, p; query="q=2")
        @test r1.out == HDR * "CONTENT_LENGTH=8\nHTTP_X_FIRST=1\nQUERY_STRING=q=1\nREQUEST_METHOD=GET\nREQUEST_URI=/env.jl\nSCRIPT_FILENAME=$p\nthe body"
        @test !occursin("HTTP_X_FIRST", r2.out) && !occursin("HOME=", r2.out)
        @test haskey(ENV, "PATH") && !haskey(ENV, "QUERY_STRING")   # restored

        p = write_page(www, "handler.jl", """
            println("loading handler")
            const LOADS = Ref(0)
            LOADS[] += 1
            count = Ref(0)
            function handle()
                count[] += 1
                print("$(escape_string(HDR))")
                print("handled ", count[], " loads ", LOADS[], " ", ENV["QUERY_STRING"], " ", read(stdin, String))
            end
            """)
        r1 = serve(rt, p; query="a", body="b1")
        r2 = serve(rt, p; query="c", body="b2")
        @test r1.kind === :handler
        @test r1.out == HDR * "handled 1 loads 1 a b1" && r2.out == HDR * "handled 2 loads 1 c b2"
        @test any(l -> occursin("loading handler", l), loglines())

        p = write_page(www, "throws.jl", "print(\"$(escape_string(HDR))partial\")\nerror(\"page failure\")\n")
        r = serve(rt, p; query="z=1")
        @test r.status == 1 && startswith(r.out, "Status: 500 Internal Server Error\r\n")
        @test !occursin("partial", r.out) && !occursin("page failure", r.out)
        @test r.err == "page raised an exception, see the julia-fcgi log"
        l = filter(l -> startswith(l, "LOG\terror") && occursin("page failure", l), loglines())
        @test length(l) == 1 && occursin("$p:2", l[1]) && occursin("\tREQUEST_URI=/throws.jl", l[1])
        @test occursin("\tSCRIPT_FILENAME=$p", l[1]) && occursin("\tREQUEST_METHOD=GET", l[1])
        p = write_page(www, "syntax.jl", "x = (\n")
        r = serve(rt, p)
        # (Julia 1.5 names the statement's first line; JuliaSyntax may name
        # the line where the input ended.)
        @test r.status == 1 && any(l -> occursin(Regex("syntax error: \\Q$p\\E:[12]: "), l), loglines())
        # A JuliaSyntax (Julia 1.10+) diagnostic becomes one line.
        diag = "ParseError:\n# Error @ $p:3:7\nx = (1 +\n#     └ ── Expected `)`"
        @test Loader.syntax_message(Expr(:error, diag), "", p) == "$p:3: Expected `)`"
        @test Loader.diagnostic_message("no place in here", p) === nothing

        p = write_page(www, "edit.jl", "print(\"v1\")\n")
        @test endswith(serve(rt, p).out, "v1")
        write(p, "print(\"version 2\")\n")
        @test endswith(serve(rt, p).out, "version 2")

        r = serve(rt, joinpath(www, "missing.jl"))
        @test startswith(r.out, "Status: 404 Not Found") && occursin("Primary script unknown", r.err)
        write_page(www, "notes.txt", "x")
        @test startswith(serve(rt, joinpath(www, "notes.txt")).out, "Status: 403")
        mkpath(joinpath(www, "dir.jl"))
        @test startswith(serve(rt, joinpath(www, "dir.jl")).out, "Status: 403")
        @test startswith(serve(rt, "").out, "Status: 404")

        # Document roots: realpath (symlinks, ..) must stay inside.
        outside = realpath(mktempdir())
        op = write_page(outside, "out.jl", "print(\"outside\")")
        symlink(op, joinpath(www, "link_out.jl"))
        symlink(joinpath(www, "edit.jl"), joinpath(www, "link_in.jl"))
        rr = Pages.Runtime(settings(roots=[www]))
        @test startswith(serve(rr, op).out, "Status: 403")
        @test startswith(serve(rr, joinpath(www, "link_out.jl")).out, "Status: 403")
        @test startswith(serve(rr, joinpath(www, "..", basename(outside), "out.jl")).out, "Status: 403")
        @test serve(rr, joinpath(www, "link_in.jl")).out == "version 2"
        rm(outside; recursive=true)

        rd = Pages.Runtime(settings(dev=true))
        r = serve(rd, joinpath(www, "throws.jl"))
        @test occursin("page failure", r.out) && occursin("throws.jl:2", r.out)
end end

@testset "a compiled page's first run is interpreted" begin
    lowered(src) = Meta.lower(Main, Meta.parse(src)).args[1].code
    @test Loader.interpreted(lowered("let; x = f(1); println(x); end"))
    @test !Loader.interpreted(lowered("let; s = 0; for i in 1:3; s += i; end; end"))
    @test !Loader.interpreted(lowered("let; n = 0; while n < 3; n += 1; end; end"))
    @test !Loader.interpreted(lowered("let; p = ccall(:getpid, Cint, ()); end"))

    with_page_dir() do www, loglines
    rt = Pages.Runtime(settings())
    run_once(path; query="") = serve(rt, path; query=query, idle=false)   # no idle time
    try
        src = """
            const K = 2
            twice(x) = K * x
            q = get(ENV, "QUERY_STRING", "")
            print("$(escape_string(HDR))")
            println(twice(21), " ", q)
            q == "stop" && return
            v = [1.0, 2.0]
            println(sum(v), " end")
            """
        p = write_page(www, "first.jl", src)
        r1 = run_once(p; query="a")
        page = rt.cache[p]
        @test r1.status == 0 && r1.out == HDR * "42 a\n3.0 end\n"
        @test page.kind === :compiled && page.first === nothing && rt.to_compile == [page]
        @test !Pages.isidle(rt)
        # The page's variables were the let block's locals, not globals.
        @test !isdefined(parentmodule(page.fn), :q) && !isdefined(parentmodule(page.fn), :v)
        r2 = run_once(p; query="stop")       # the compiled function, before any idle time
        @test r2.out == HDR * "42 stop\n"
        Pages.idle!(rt)
        @test isempty(rt.to_compile) && Pages.isidle(rt)
        @test run_once(p; query="b").out == HDR * "42 b\n3.0 end\n"

        # `return` in the interpreted run ends the page as in the function.
        p = write_page(www, "firststop.jl", src)
        @test run_once(p; query="stop").out == HDR * "42 stop\n"
        Pages.idle!(rt)

        # Compiled at the next idle time: the next request runs the function.
        p = write_page(www, "idle.jl", "print(\"$(escape_string(HDR))\")\nprintln(length(ENV[\"QUERY_STRING\"]))\n")
        @test run_once(p; query="xyz").out == HDR * "3\n"
        page = rt.cache[p]
        Pages.idle!(rt)
        @test isempty(rt.to_compile)
        @test run_once(p; query="xy").out == HDR * "2\n"

        # A loop or a ccall: compiled from the first request, as julia would.
        p = write_page(www, "loop.jl", "t = 0\nfor i in 1:4\n    t += i\nend\nprint(t)\n")
        @test run_once(p).out == "10" && isempty(rt.to_compile)
        p = write_page(www, "ccall.jl", "print(ccall(:getpid, Cint, ()) == getpid())\n")
        @test run_once(p).out == "true" && isempty(rt.to_compile)

        # A first run that throws is a 500 like any other, at the page's line;
        # the compiled function raises the same at the same line.
        p = write_page(www, "firstthrows.jl", "x = 1\nerror(\"first failure \$x\")\n")
        @test startswith(run_once(p).out, "Status: 500")
        Pages.idle!(rt)
        @test startswith(run_once(p).out, "Status: 500")
        l = filter(l -> occursin("first failure 1", l), loglines())
        @test length(l) == 2 && all(x -> occursin("$p:2", x), l)

        # Edited between its interpreted run and the idle time: the stale
        # page is not compiled; the new one gets its own first run.
        p = write_page(www, "edited.jl", "print(\"one\")\n")
        @test run_once(p).out == "one"
        old = rt.cache[p]
        write(p, "print(\"two, longer\")\n")
        @test run_once(p).out == "two, longer"
        @test rt.cache[p] !== old && length(rt.to_compile) == 2
        Pages.idle!(rt)
        @test isempty(rt.to_compile) && run_once(p).out == "two, longer"
    finally
        Pages.idle!(rt)                  # the process's own ENV back
    end
    end
end

@testset "warm-up leaves the worker where it was" begin
    # Its pages run in a temporary directory, which it removes: a worker
    # left in there would wait in a deleted directory.
    home = mktempdir()
    try
        cd(home)
        Log.quietly(() -> JuliaFCGI.Warmup.run!(settings()))
        @test pwd() == home
        @test readlink("/proc/self/cwd") == home
    finally
        cd(@__DIR__)
        rm(home; recursive=true, force=true)
    end
end
