# Real worker processes: fd 0 = a listening unix socket made here, a control
# channel socketpair, raw FastCGI on the wire.
using .TestClient
using .TestClient: start_worker, wait_line, request, connect_unix, send_bytes,
                   read_response, closed_by_peer, cgi_params, split_http, log_lines
using .JuliaFCGI: FastCGI
using .JuliaFCGI.FastCGI: ByteBuf

const EXAMPLES = normpath(joinpath(@__DIR__, "..", "..", "examples"))
example(name) = joinpath(EXAMPLES, name)

raw_record(typ, rid, content::Vector{UInt8}; version=0x01) =
    UInt8[version, typ, rid >> 8, rid & 0xff, length(content) >> 8, length(content) & 0xff, 0, 0,
          content...]

"""Send `bytes` on a new connection; true when the worker closes it."""
function closes_connection(w, bytes::Vector{UInt8})
    fd = connect_unix(w.sock)
    try
        send_bytes(fd, bytes)
        Posix.shutdown_write(fd)          # so a truncated record meets EOF
        return closed_by_peer(fd; timeout=10)
    finally
        Posix.closefd(fd)
    end
end

"""Start the workers early (runtests.jl calls this first), so their warm-up
overlaps with the in-process tests."""
function start_roundtrip_workers()
    www = realpath(mktempdir())
    write(joinpath(www, "ok.jl"), "print(\"Content-Type: text/plain\\r\\n\\r\\nok\")")
    write(joinpath(www, "side.jl"), "open(joinpath(@__DIR__, \"ran\"), \"a\") do io; println(io, 1); end\nprint(\"ran\")")
    # Connections parked on w stay until the test closes them, however
    # slow the machine: first_byte_timeout and header_timeout of 30 s.
    w = start_worker(Dict("JULIA_FCGI_DOC_ROOTS" => "$www:$EXAMPLES", "JULIA_FCGI_MAX_BODY" => "100000",
                          "JULIA_FCGI_MAX_PARAMS" => "20000", "JULIA_FCGI_READ_TIMEOUT" => "2",
                          "JULIA_FCGI_FIRST_BYTE_TIMEOUT_MS" => "30000",
                          "JULIA_FCGI_HEADER_TIMEOUT_MS" => "30000");
                     slot=1)
    w2 = start_worker(Dict("JULIA_FCGI_DEV" => "1"))
    w3 = start_worker(; control=false)
    return (www, w, w2, w3)
end

hello_ok(w) = request(w, example("hello.jl")).stdout == "Content-Type: text/plain\r\n\r\nHello, world!\n"

function run_roundtrip_tests()
@testset "round trip" begin
    www, w, w2, w3 = ROUNDTRIP
    try
        @test wait_line(w, ==("READY")) == "READY"

        @testset "pages" begin
            @test hello_ok(w)
            hdrs, body = split_http(request(w, example("form.jl"); method="POST", query="name=Ada",
                                            body="name=Grace+%3Cb%3E&comment=a%26b").stdout)
            @test hdrs["content-type"] == "text/html; charset=utf-8"
            @test occursin("<li>query: name = Ada</li>", body)
            @test occursin("<li>body: name = Grace &lt;b&gt;</li>", body)
            @test occursin("<li>body: comment = a&amp;b</li>", body)
            r = request(w, example("cgi_env.jl"); query="x=1", method="POST", body="raw body")
            @test occursin("QUERY_STRING=x=1\n", r.stdout) && endswith(r.stdout, "--- stdin ---\nraw body")
            @test !occursin("JULIA_FCGI", r.stdout) && !occursin("HOME=", r.stdout)
            @test split_http(request(w, example("handler.jl")).stdout)[2] == "hits: 1\nprimes below 1000000: 78498\n"
            @test startswith(split_http(request(w, example("handler.jl")).stdout)[2], "hits: 2\n")
            @test any(l -> occursin("handler.jl loaded: 78498 primes", l), log_lines(w))
            @test split_http(request(w, example("counter.jl")).stdout)[2] == "count: 1\n"
            @test split_http(request(w, example("counter.jl")).stdout)[2] == "count: 1\n"
            @test split_http(request(w, example("include.jl"); query="Ada").stdout)[2] == "Hello, Ada!\n"
            hdrs, body = split_http(request(w, example("status.jl")).stdout)
            @test hdrs["status"] == "404 Not Found" && hdrs["x-example"] == "status.jl"
            @test split_http(request(w, example("status.jl"); query="to=/hello.jl").stdout)[1]["location"] == "/hello.jl"
            r = request(w, example("big.jl"); query="kib=700")
            body = split_http(r.stdout)[2]
            @test sizeof(body) == 700 * 1024 && endswith(body, lpad(700 * 16, 8, '0') * '.' ^ 55 * "\n")
            @test all(rec -> length(rec.content) <= 65535, r.records)
        end

        @testset "scoreboard" begin
            slot = TestClient.read_slot(w.board, 1)
            @test slot.state == 2 && slot.pid == getpid(w.proc) && iseven(slot.seq)
            n = slot.requests
            @test hello_ok(w)
            slot = TestClient.read_slot(w.board, 1)
            @test slot.state == 2 && slot.requests == n + 1 && slot.method == "GET"
            @test slot.uri == "/hello.jl" && slot.last_duration > 0 && slot.last_finished > 0
            # While a page runs, the slot says busy, with the request.
            fd = connect_unix(w.sock)
            send_bytes(fd, FastCGI.put_request!(ByteBuf(), 1,
                cgi_params(example("slow.jl"); query="s=1.5"); keep=false))
            slot = TestClient.wait_slot(w.board, 1, s -> s.state == 3; timeout=20)
            @test slot.state == 3 && slot.uri == "/slow.jl?s=1.5" && slot.started > 0
            r = read_response(fd; timeout=60)
            Posix.closefd(fd)
            @test occursin("slept 1.5", r.stdout) || (@show r.closed r.timed_out log_lines(w); false)
            slot = TestClient.wait_slot(w.board, 1, s -> s.state == 2; timeout=5)
            @test slot.requests == n + 2 && slot.last_duration > 1_500_000_000
            @test TestClient.read_slot(w.board, 0).state == 0           # others untouched

            # Busy from the accept on: a head sent 0.3 s after connecting,
            # its body still to come, shows busy since the connect.
            fd = connect_unix(w.sock)
            t0 = time_ns()
            sleep(0.3)
            p = ByteBuf()
            for (k, v) in cgi_params(example("hello.jl"); method="POST",
                                     extra=["CONTENT_LENGTH" => "4"])
                FastCGI.put_pair!(p, k, v)
            end
            b = FastCGI.put_begin_request!(ByteBuf(), 1)
            FastCGI.put_record!(b, FastCGI.PARAMS, 1, p.data[1:p.len])
            FastCGI.put_empty!(b, FastCGI.PARAMS, 1)
            send_bytes(fd, b)
            slot = TestClient.wait_slot(w.board, 1, s -> s.state == 3; timeout=10)
            @test slot.uri == "/hello.jl" && t0 - 50_000_000 < slot.started < t0 + 200_000_000
            b = FastCGI.put_record!(ByteBuf(), FastCGI.STDIN, 1, Vector{UInt8}("body"))
            FastCGI.put_empty!(b, FastCGI.STDIN, 1)
            send_bytes(fd, b)
            @test endswith(read_response(fd; timeout=10).stdout, "Hello, world!\n")
            slot = TestClient.wait_slot(w.board, 1, s -> s.state == 2; timeout=5)
            @test slot.requests == n + 3 && slot.last_duration > 300_000_000
            # The next request on that kept connection: busy from its first
            # bytes, before its URI is known.
            send_bytes(fd, FastCGI.put_begin_request!(ByteBuf(), 2))
            slot = TestClient.wait_slot(w.board, 1, s -> s.state == 3; timeout=10)
            @test slot.uri == "" && slot.method == ""
            Posix.closefd(fd)
            slot = TestClient.wait_slot(w.board, 1, s -> s.state == 2; timeout=5)
            @test slot.requests == n + 3                                  # cut short: not counted

            # Silent connections with a request behind them are parked: the
            # slot counts them (idle, no request of theirs is being read),
            # one fewer once one is served, none once the others hang up.
            @test TestClient.read_slot(w.board, 1).parked == 0
            silent = [connect_unix(w.sock) for _ in 1:3]
            @test hello_ok(w)
            slot = TestClient.wait_slot(w.board, 1, s -> s.parked == 3; timeout=10)
            @test slot.parked == 3 && slot.state == 2
            send_bytes(silent[1], FastCGI.put_request!(ByteBuf(), 1,
                cgi_params(example("hello.jl")); keep=false))
            @test endswith(read_response(silent[1]; timeout=10).stdout, "Hello, world!\n")
            @test TestClient.wait_slot(w.board, 1, s -> s.parked == 2; timeout=5).parked == 2
            foreach(Posix.closefd, silent[2:3])
            @test TestClient.wait_slot(w.board, 1, s -> s.parked == 0; timeout=5).parked == 0
            Posix.closefd(silent[1])
        end

        @testset "errors" begin
            r = request(w, example("throws.jl"))
            @test startswith(r.stdout, "Status: 500 Internal Server Error\r\n") && r.app == 1
            @test occursin("see the julia-fcgi log", r.stderr)
            l = filter(l -> occursin("this page always fails", l), log_lines(w; level="error"))
            @test length(l) == 1 && occursin("throws.jl:7", l[1]) && occursin("\tREQUEST_URI=/throws.jl", l[1])
            r = request(w, joinpath(www, "nope.jl"))
            @test startswith(r.stdout, "Status: 404") && r.stderr == "Primary script unknown: $www/nope.jl"
            outside = realpath(mktempdir())
            write(joinpath(outside, "evil.jl"), "print(1)")
            @test startswith(request(w, joinpath(outside, "evil.jl")).stdout, "Status: 403")
            symlink(joinpath(outside, "evil.jl"), joinpath(www, "link.jl"))
            @test startswith(request(w, joinpath(www, "link.jl")).stdout, "Status: 403")
            rm(outside; recursive=true)
            r = request(w, joinpath(www, "ok.jl"); body="x" ^ 100_001)
            @test startswith(r.stdout, "Status: 413")
            @test wait_line(w2, ==("READY")) == "READY"
            r2 = request(w2, example("throws.jl"))               # JULIA_FCGI_DEV=1
            @test occursin("this page always fails", r2.stdout) && occursin("throws.jl:7", r2.stdout)
        end

        @testset "protocol" begin
            fd = connect_unix(w.sock)
            try
                # GET_VALUES, an unknown management record, two requests with
                # KEEP_CONN on one connection, params split mid-pair.
                q = ByteBuf()
                FastCGI.put_pair!(q, "FCGI_MAX_REQS", ""); FastCGI.put_pair!(q, "FCGI_MPXS_CONNS", "")
                b = ByteBuf()
                FastCGI.put_record!(b, FastCGI.GET_VALUES, 0, q.data[1:q.len])
                FastCGI.put_record!(b, 0x63, 0, UInt8[1, 2])
                send_bytes(fd, b)
                r = read_response(fd; count=2)
                @test [x.type for x in r.records] == [FastCGI.GET_VALUES_RESULT, FastCGI.UNKNOWN_TYPE]
                vals = Dict{String,String}()
                c = r.records[1].content
                FastCGI.parse_pairs!(vals, c, 1, length(c))
                @test vals == Dict("FCGI_MAX_REQS" => "1", "FCGI_MPXS_CONNS" => "0")
                @test r.records[2].content[1] == 0x63

                p = ByteBuf()
                for (k, v) in cgi_params(example("cgi_env.jl"); extra=["LONG" => "v" ^ 300])
                    FastCGI.put_pair!(p, k, v)
                end
                pb = p.data[1:p.len]
                cut = first(findfirst("LONG", String(copy(pb)))) + 2     # inside the name
                b = FastCGI.put_begin_request!(ByteBuf(), 9)
                FastCGI.put_record!(b, FastCGI.PARAMS, 9, pb[1:cut])
                FastCGI.put_record!(b, FastCGI.PARAMS, 9, pb[cut+1:end])
                FastCGI.put_empty!(b, FastCGI.PARAMS, 9)
                FastCGI.put_record!(b, FastCGI.STDIN, 7, Vector{UInt8}("other id: ignored"))
                FastCGI.put_begin_request!(b, 8)                     # can't multiplex
                FastCGI.put_record!(b, FastCGI.STDIN, 9, Vector{UInt8}("body"))
                FastCGI.put_empty!(b, FastCGI.STDIN, 9)
                send_bytes(fd, b)
                r = read_response(fd)
                @test r.rid == 8 && r.proto == FastCGI.CANT_MPX_CONN
                r = read_response(fd)
                @test r.rid == 9 && r.proto == FastCGI.REQUEST_COMPLETE
                @test occursin("LONG=" * "v" ^ 300, r.stdout) && endswith(r.stdout, "stdin ---\nbody")
                send_bytes(fd, FastCGI.put_request!(ByteBuf(), 10, cgi_params(example("hello.jl"))))
                @test endswith(read_response(fd).stdout, "Hello, world!\n")
                # A role we do not play; ABORT before the page ran.
                send_bytes(fd, FastCGI.put_begin_request!(ByteBuf(), 11, FastCGI.AUTHORIZER))
                @test read_response(fd).proto == FastCGI.UNKNOWN_ROLE
                rm(joinpath(www, "ran"); force=true)
                b = FastCGI.put_begin_request!(ByteBuf(), 12)
                pp = FastCGI.put_pair!(ByteBuf(), "SCRIPT_FILENAME", joinpath(www, "side.jl"))
                FastCGI.put_record!(b, FastCGI.PARAMS, 12, pp.data[1:pp.len])
                FastCGI.put_empty!(b, FastCGI.PARAMS, 12)
                FastCGI.put_header!(b, FastCGI.ABORT_REQUEST, 12, 0, 0)
                send_bytes(fd, b)
                r = read_response(fd)
                @test r.rid == 12 && r.proto == FastCGI.REQUEST_COMPLETE && isempty(r.stdout)
                @test !isfile(joinpath(www, "ran"))
                # Without KEEP_CONN the worker closes after END_REQUEST.
                send_bytes(fd, FastCGI.put_request!(ByteBuf(), 13, cgi_params(example("hello.jl")); keep=false))
                @test endswith(read_response(fd).stdout, "Hello, world!\n")
                @test closed_by_peer(fd; timeout=5)
            finally
                Posix.closefd(fd)
            end
        end

        @testset "hostile streams close only their connection" begin
            nwarn = length(log_lines(w; level="warn"))
            begin_ok = raw_record(FastCGI.BEGIN_REQUEST, 1, UInt8[0, 1, 1, 0, 0, 0, 0, 0])
            @test closes_connection(w, Vector{UInt8}("GET / HTTP/1.1\r\nHost: x\r\n\r\n"))
            @test closes_connection(w, raw_record(FastCGI.BEGIN_REQUEST, 1, zeros(UInt8, 8); version=0x02))
            @test closes_connection(w, raw_record(FastCGI.PARAMS, 1, UInt8[1, 2, 3])[1:9])   # EOF mid-record
            end_params = raw_record(FastCGI.PARAMS, 1, UInt8[])
            @test closes_connection(w, [begin_ok; raw_record(FastCGI.PARAMS, 1, UInt8[0x05, 0x7f, 65, 66]); end_params])
            @test closes_connection(w, [begin_ok; raw_record(FastCGI.PARAMS, 1, UInt8[4, 4]); end_params])
            b = ByteBuf(); FastCGI.put_begin_request!(b, 1)
            for _ in 1:3
                FastCGI.put_record!(b, FastCGI.PARAMS, 1, rand(UInt8, 8000))
            end
            @test closes_connection(w, b.data[1:b.len])                              # > MAX_PARAMS
            @test closes_connection(w, [begin_ok; raw_record(0x2a, 1, UInt8[])])        # unknown type
            @test closes_connection(w, [begin_ok; raw_record(FastCGI.STDOUT, 1, UInt8[1])])
            warns = log_lines(w; level="warn")[nwarn+1:end]
            @test length(warns) == 8 && all(l -> occursin("closing FastCGI connection", l), warns)
            @test process_running(w.proc) && hello_ok(w)

            # A silent client is dropped after JULIA_FCGI_READ_TIMEOUT (2 s).
            fd = connect_unix(w.sock)
            send_bytes(fd, begin_ok)
            t = time()
            @test closed_by_peer(fd; timeout=10) && 1.5 < time() - t < 6
            Posix.closefd(fd)
            # A client that hangs up while a big response is being written.
            for _ in 1:3
                fd = connect_unix(w.sock)
                send_bytes(fd, FastCGI.put_request!(ByteBuf(), 1, cgi_params(example("big.jl"); query="kib=4000")))
                Posix.closefd(fd)
            end
            @test hello_ok(w) && process_running(w.proc)
        end

        @testset "standalone and Base.exit" begin
            deadline = time() + 120
            while !occursin("worker ready", read(w3.logfile, String)) && time() < deadline
                sleep(0.2)
            end
            @test hello_ok(w3)
            write(joinpath(www, "bexit.jl"), "print(\"Content-Type: text/plain\\r\\n\\r\\nbye\")\nBase.exit(0)\n")
            r = request(w3, joinpath(www, "bexit.jl"))
            @test r.stdout == "Content-Type: text/plain\r\n\r\nbye" && r.app == 0
            @test TestClient.wait_exit(w3)
            @test occursin("julia-fcgi[", read(w3.logfile, String))
        end

        @testset "STOP and exit()" begin
            # STOP while a keep-alive connection sits idle: it is closed.
            fd = connect_unix(w2.sock)
            send_bytes(fd, FastCGI.put_request!(ByteBuf(), 1, cgi_params(example("hello.jl"))))
            @test endswith(read_response(fd).stdout, "Hello, world!\n")
            TestClient.send_control(w2, "STOP")
            @test closed_by_peer(fd; timeout=10)
            Posix.closefd(fd)
            @test wait_line(w2, ==("EXITING\tstop"); timeout=10) !== nothing
            @test TestClient.wait_exit(w2) && w2.proc.exitcode == 0

            r = request(w, example("exit.jl"))
            @test occursin("goodbye from worker", r.stdout)
            @test wait_line(w, ==("EXITING\tpage called exit()"); timeout=10) !== nothing
            @test TestClient.wait_exit(w) && w.proc.exitcode == 0
            @test TestClient.read_slot(w.board, 1).state == 4             # stopping
        end
    finally
        for x in (w, w2, w3)
            TestClient.stop_worker(x)
        end
        rm(www; recursive=true, force=true)
    end
end
end
