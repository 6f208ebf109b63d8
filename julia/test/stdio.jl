# A page's standard streams are real file descriptors (Stdio): CGI-library
# redirection, child processes, C stdio, streaming, and nothing of a request
# left to the next — against a real worker process, raw FastCGI.
using .TestClient: start_worker, wait_line, request, split_http, log_lines, stop_worker

const STDIO_PAGES = Dict(
    # What a CGI library does: capture stdout in a pipe from the start, and
    # at exit restore it and print the headers with a Content-Length.
    "cgilib.jl" => raw"""
        const ORIGINAL = stdout
        rd, wr = redirect_stdout()
        atexit() do
            redirect_stdout(ORIGINAL)
            close(wr)
            body = read(rd)
            close(rd)
            print("Content-Type: text/plain\r\nContent-Length: ", length(body), "\r\n\r\n")
            write(stdout, body)
        end
        println("captured: ", get(ENV, "QUERY_STRING", ""))
        println("body bytes: ", length(read(stdin)))
        """,
    "children.jl" => raw"""
        print("Content-Type: text/plain\r\n\r\n")
        println("one")
        run(`echo two`)
        run(pipeline(`echo three`, stdout=stdout))
        println("four")
        ccall(:puts, Cint, (Cstring,), "five")
        Libc.flush_cstdio()
        print("six\n")
        run(`sh -c 'echo seven; echo to-stderr >&2'`)
        print(stderr, "a line for the log\n")
        """,
    "stdin_child.jl" => raw"""
        print("Content-Type: text/plain\r\n\r\n")
        first = read(stdin, 3)
        print("page read ", String(first), "; a child gets ")
        run(pipeline(`cat`, stdin=stdin, stdout=stdout))
        print("; then ")
        run(`wc -c`)    # inherits fd 0, read to its end by cat
        """,
    "big_child.jl" => raw"""
        print("Content-Type: application/octet-stream\r\n\r\n")
        run(`head -c 300000 /dev/zero`)
        write(stdout, UInt8[0x00, 0xff, 0x0a, 0x0d])
        """,
    "binary.jl" => raw"""
        print("Content-Type: application/octet-stream\r\n\r\n")
        write(stdout, UInt8[(i % 256) for i in 0:199_999])
        """,
    "left_redirected.jl" => raw"""
        print("Content-Type: text/plain\r\n\r\nvisible\n")
        rd, wr = redirect_stdout()
        println("into a pipe nobody reads")
        redirect_stderr(wr)
        """,
    "closed.jl" => raw"""
        print("Content-Type: text/plain\r\n\r\ncomplete\n")
        close(stdout)
        close(stdin)
        """,
    "throws_redirected.jl" => raw"""
        print("Content-Type: text/plain\r\n\r\n")
        redirect_stdout()
        error("thrown while redirected")
        """,
    "stream.jl" => raw"""
        print("Content-Type: text/plain\r\n\r\nfirst part\n")
        sleep(0.05)      # past Output.FLUSH_AFTER_NS: flush sends
        flush(stdout)
        sleep(0.4)
        print("second part\n")
        """,
    "core_print.jl" => raw"""
        print("Content-Type: text/plain\r\n\r\n")
        Core.println("from the C runtime")
        """,
    "spy.jl" => raw"""
        print("Content-Type: text/plain\r\n\r\nspy\n")
        @async println("SPY-INJECTED: ", get(ENV, "HTTP_COOKIE", ""))
        """,
    "saver.jl" => raw"""
        const SAVED = Ref{Any}(nothing)
        function handle()
            print("Content-Type: text/plain\r\n\r\n")
            if SAVED[] !== nothing
                old_in, old_out = SAVED[]
                print(try read(old_in, String) catch e sprint(showerror, e) end, "\n")
                print(try print(old_out, "x"); "wrote" catch e sprint(showerror, e) end, "\n")
            end
            SAVED[] = (stdin, stdout)
            print("body: ", read(stdin, String), "\n")
        end
        """,
    "load_path.jl" => raw"""
        print("Content-Type: text/plain\r\n\r\n")
        println(length(LOAD_PATH), " ", length(DEPOT_PATH), " ", length(ARGS))
        push!(LOAD_PATH, "/nonexistent/page-dir")
        pushfirst!(DEPOT_PATH, "/nonexistent/depot")
        push!(ARGS, "x")
        """,
    "fds.jl" => raw"""
        print("Content-Type: text/plain\r\n\r\n")
        run(`ls /proc/self/fd`)
        """,
)

function start_stdio_worker()
    www = realpath(mktempdir())
    for (name, text) in STDIO_PAGES
        write(joinpath(www, name), text)
    end
    return (www, start_worker())
end

fd_count(w) = length(readdir("/proc/$(getpid(w.proc))/fd"))

function run_stdio_tests()
@testset "page stdio" begin
    www, w = STDIO
    page(name) = joinpath(www, name)
    body_of(name; kw...) = split_http(request(w, page(name); kw...).stdout)[2]
    try
        @test wait_line(w, ==("READY")) == "READY"

        @testset "CGI-library redirection (two rounds)" begin
            for round in 1:2
                hdrs, body = split_http(request(w, page("cgilib.jl"); query="a=$round").stdout)
                @test body == "captured: a=$round\nbody bytes: 0\n"
                @test hdrs["content-length"] == string(sizeof(body))
            end
            big = "f=" * "x" ^ 100_000
            hdrs, body = split_http(request(w, page("cgilib.jl"); method="POST", body=big).stdout)
            @test body == "captured: \nbody bytes: $(sizeof(big))\n"
        end

        @testset "children and C stdio keep their order" begin
            @test body_of("children.jl") == "one\ntwo\nthree\nfour\nfive\nsix\nseven\n"
            @test any(l -> occursin("a line for the log", l) && occursin("children.jl", l),
                      log_lines(w))
            @test body_of("stdin_child.jl"; method="POST", body="abcdefgh") ==
                  "page read abc; a child gets defgh; then 0\n"
            r = request(w, page("big_child.jl"))
            @test sizeof(split_http(r.stdout)[2]) == 300_004
            @test codeunits(r.stdout)[end-3:end] == UInt8[0x00, 0xff, 0x0a, 0x0d]
            @test Vector{UInt8}(split_http(request(w, page("binary.jl")).stdout)[2]) ==
                  UInt8[(i % 256) for i in 0:199_999]
            @test body_of("core_print.jl") == "from the C runtime\n"
        end

        @testset "streams left redirected, closed or thrown through" begin
            @test body_of("left_redirected.jl") == "visible\n"
            @test body_of("children.jl") == "one\ntwo\nthree\nfour\nfive\nsix\nseven\n"
            @test body_of("closed.jl") == "complete\n"
            r = request(w, page("throws_redirected.jl"))
            @test split_http(r.stdout)[1]["status"] == "500 Internal Server Error"
            @test body_of("children.jl") == "one\ntwo\nthree\nfour\nfive\nsix\nseven\n"
        end

        @testset "flush(stdout) streams" begin
            fd = TestClient.connect_unix(w.sock)
            try
                b = FastCGI.put_request!(ByteBuf(), 1, TestClient.cgi_params(page("stream.jl")),
                                         ""; keep=false)
                TestClient.send_bytes(fd, b)
                t0 = time()
                first = TestClient.read_response(fd; count=1)
                t1 = time() - t0
                rest = TestClient.read_response(fd)
                t2 = time() - t0
                @test occursin("first part", first.stdout) && !occursin("second", first.stdout)
                @test t1 < 0.35 && t2 >= 0.4
                @test occursin("second part", rest.stdout)
            finally
                Posix.closefd(fd)
            end
        end

        @testset "nothing of a request reaches the next" begin
            for i in 1:20
                cookie = isodd(i) ? "user-A" : "user-B"
                page_name = isodd(i) ? "spy.jl" : "cgilib.jl"
                out = request(w, page(page_name); extra=("HTTP_COOKIE" => cookie,)).stdout
                @test !occursin("SPY", out)
            end
            @test any(l -> occursin("task(s) waiting to run", l), log_lines(w))
            request(w, page("saver.jl"); method="POST", body="first")
            out = body_of("saver.jl"; method="POST", body="second")
            @test out == "IOError: stdin of a finished request is closed or unusable\n" *
                         "IOError: stdout of a finished request is closed or unusable\n" *
                         "body: second\n"
            a = body_of("load_path.jl")
            @test body_of("load_path.jl") == a
        end

        @testset "descriptors" begin
            # A page's child inherits fds 0-2 and nothing of the worker's (3
            # is the directory `ls` reads).
            @test split(body_of("fds.jl")) == ["0", "1", "2", "3"]
            before = fd_count(w)
            for i in 1:300
                body_of(("cgilib.jl", "left_redirected.jl", "closed.jl", "stdin_child.jl")[i % 4 + 1];
                        method="POST", body="abcd")
            end
            sleep(0.1)       # the worker collects a left-behind pipe when idle
            body_of("cgilib.jl")
            sleep(0.1)
            @test fd_count(w) == before
        end
    finally
        stop_worker(w)
    end
end
end
